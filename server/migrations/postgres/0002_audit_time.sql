-- When each audit line was written (Unix seconds), so that the database's
-- copy of the audit log can be kept for a set time ([retention] audit_copy).
-- Lines from before this column take the time they carry (read with a
-- pattern rather than as JSON, so that no line can fail the migration).
ALTER TABLE audit_events ADD COLUMN at BIGINT NOT NULL DEFAULT 0;
UPDATE audit_events
   SET at = CAST(EXTRACT(EPOCH FROM CAST(substring(line FROM
       '"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z)"')
       AS timestamptz)) AS BIGINT)
 WHERE line ~ '"time":"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z"';
