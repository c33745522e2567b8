-- The database's copy of the audit log, a row per batch of lines instead of
-- a row per line: the lines the copier gathers in one window, each with its
-- place in the batch and its time, compressed together (zstd;
-- `storage/audit_batch.rs`). The lines of `audit_events`, from before, stay
-- readable there until retention deletes them; new ids go on from its
-- counter in `sqlite_sequence`.
CREATE TABLE audit_batches (
    -- The id of the batch's last line.
    last_id  INTEGER PRIMARY KEY,
    -- A line's id is this plus its place in the batch (retention may take
    -- the oldest lines out later; the others keep their ids).
    base_id  INTEGER NOT NULL,
    lines    INTEGER NOT NULL,
    -- The earliest and latest `at` of its lines (Unix seconds).
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    body     BLOB NOT NULL
);
-- The counter of `audit_events`' ids, which the batches go on from; SQLite
-- makes its row with the table's first row, so a database that never held
-- one gets it here.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'audit_events', 0
 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'audit_events');
