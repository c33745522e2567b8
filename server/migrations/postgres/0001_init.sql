-- Every value is sealed (AES-256-GCM) by the server before it gets here.
-- Keys compare bytewise so that prefix range scans work in any locale.
CREATE TABLE entries (
    key   TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE audit_events (
    id   BIGSERIAL PRIMARY KEY,
    line TEXT NOT NULL
);
