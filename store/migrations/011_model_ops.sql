-- Model operations per market/unit (issue 11): the settings of the promotion gate, champion
-- expiry, the dissimilarity gate, retraining schedules and drift-triggered retrains
-- (`engine.ops.settings.OpsSettings`, stored as JSON: one row per market/unit, absent = the
-- defaults), and the performance drift events the live engine's detectors raise.
CREATE TABLE ops_settings (
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    settings JSON NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (market, unit)
);

CREATE SEQUENCE drift_events_id_seq START 1;
CREATE TABLE drift_events (
    id BIGINT PRIMARY KEY DEFAULT nextval('drift_events_id_seq'),
    ts TIMESTAMPTZ NOT NULL,          -- the candle whose resolved outcome raised it
    detected_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    model_id BIGINT NOT NULL,
    stream VARCHAR NOT NULL,          -- correctness (0/1 per resolved prediction) or pnl (per trade)
    detector VARCHAR NOT NULL,        -- adwin or page-hinkley
    before_mean DOUBLE,               -- the stream's mean before the change ...
    after_mean DOUBLE,                -- ... and after it
    observations BIGINT,              -- values seen by the detector when it fired
    action VARCHAR,                   -- what followed: none, retrain started (run id), ...
    detail VARCHAR
);
