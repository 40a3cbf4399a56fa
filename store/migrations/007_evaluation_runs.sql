-- A walk-forward evaluation runs as a job (engine.service.evaluation): its row records what it
-- evaluates, how far it got (folds done of folds), how it ended and its result (the
-- WalkForwardResult's JSON), so a status URL answers after the request, after a restart, and
-- from another process. The owner's pid, host, process start and heartbeat are kept as a
-- training run's are (store.processes): a run whose owner was killed reads `interrupted`.
CREATE SEQUENCE evaluation_runs_id_seq START 1;
CREATE TABLE evaluation_runs (
    id BIGINT PRIMARY KEY DEFAULT nextval('evaluation_runs_id_seq'),
    model_id BIGINT NOT NULL,
    model VARCHAR NOT NULL,
    folds INTEGER NOT NULL,
    threshold DOUBLE NOT NULL,
    status VARCHAR NOT NULL,
    folds_done INTEGER NOT NULL DEFAULT 0,
    folds_total INTEGER,
    started TIMESTAMPTZ NOT NULL,
    finished TIMESTAMPTZ,
    error VARCHAR,
    result JSON,
    pid INTEGER,
    host VARCHAR,
    process_start VARCHAR,
    heartbeat TIMESTAMPTZ
);
