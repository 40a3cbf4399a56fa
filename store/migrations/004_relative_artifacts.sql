-- The registry names artifacts relative to the store (`artifacts/<sha256>.tar` under
-- $UPQUANT_HOME), so a moved, copied or restored store loads its own files and deleting a model
-- in a copy never touches another store's. Rows written before named the file by an absolute
-- path in whichever home wrote them; artifacts are content-addressed, so the sha256 names it.
UPDATE models SET artifact = 'artifacts/' || sha256 || '.tar'
WHERE artifact LIKE '/%' OR regexp_matches(artifact, '^[A-Za-z]:[\\/]');
