-- Every value is sealed (AES-256-GCM) by the server before it gets here.
CREATE TABLE entries (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE audit_events (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL
);
