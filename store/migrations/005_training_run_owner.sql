-- A training run records the process that runs it (pid, host, the process's start, so a
-- reused pid is not taken for it) and a heartbeat it stamps as it progresses: a run whose
-- process was killed (SIGKILL, out of memory, a dropped SSH session) reads as `interrupted`
-- and resumes, instead of staying `running` forever.
ALTER TABLE training_runs ADD COLUMN pid INTEGER;
ALTER TABLE training_runs ADD COLUMN host VARCHAR;
ALTER TABLE training_runs ADD COLUMN process_start VARCHAR;
ALTER TABLE training_runs ADD COLUMN heartbeat TIMESTAMPTZ;
