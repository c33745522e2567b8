-- When each audit line was written (Unix seconds), so that the database's
-- copy of the audit log can be kept for a set time ([retention] audit_copy).
-- Lines from before this column take the time they carry.
ALTER TABLE audit_events ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
UPDATE audit_events
   SET at = COALESCE(CAST(strftime('%s', json_extract(line, '$.time')) AS INTEGER), 0)
 WHERE json_valid(line);
