-- The database's copy of the audit log, a row per batch of lines instead of
-- a row per line: the lines the copier gathers in one window, each with its
-- place in the batch and its time, compressed together (zstd;
-- `storage/audit_batch.rs`). The lines of `audit_events`, from before, stay
-- readable there until retention deletes them; new ids go on from its
-- sequence.
CREATE TABLE audit_batches (
    -- The id of the batch's last line.
    last_id  BIGINT PRIMARY KEY,
    -- A line's id is this plus its place in the batch (retention may take
    -- the oldest lines out later; the others keep their ids).
    base_id  BIGINT NOT NULL,
    lines    INTEGER NOT NULL,
    -- The earliest and latest `at` of its lines (Unix seconds).
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    body     BYTEA NOT NULL
);
-- The body is compressed already: stored as it is, not compressed again.
ALTER TABLE audit_batches ALTER COLUMN body SET STORAGE EXTERNAL;
