-- Initial schema: candles, model registry, metrics, training runs, predictions, signals.
CREATE TABLE candles (
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    open DOUBLE NOT NULL,
    high DOUBLE NOT NULL,
    low DOUBLE NOT NULL,
    close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,
    value DOUBLE,
    PRIMARY KEY (market, unit, ts)
);

CREATE SEQUENCE models_id_seq START 1;
CREATE TABLE models (
    id BIGINT PRIMARY KEY DEFAULT nextval('models_id_seq'),
    name VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    feature_spec JSON NOT NULL,
    feature_spec_hash VARCHAR NOT NULL,
    label_spec JSON NOT NULL,
    params JSON NOT NULL,
    artifact VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    size BIGINT NOT NULL,
    status VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    parent_id BIGINT,
    tags JSON,
    UNIQUE (name, version)
);

CREATE TABLE metrics (
    model_id BIGINT NOT NULL,
    split VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    value DOUBLE,
    step INTEGER
);

CREATE SEQUENCE training_runs_id_seq START 1;
CREATE TABLE training_runs (
    id BIGINT PRIMARY KEY DEFAULT nextval('training_runs_id_seq'),
    model_id BIGINT,
    status VARCHAR NOT NULL,
    progress DOUBLE,
    started TIMESTAMPTZ,
    finished TIMESTAMPTZ,
    error VARCHAR,
    log VARCHAR
);

CREATE TABLE predictions (
    ts TIMESTAMPTZ NOT NULL,
    market VARCHAR NOT NULL,
    model_id BIGINT NOT NULL,
    probs DOUBLE[] NOT NULL,
    label_resolved VARCHAR
);

CREATE TABLE signals (
    ts TIMESTAMPTZ NOT NULL,
    market VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    confidence DOUBLE,
    model_id BIGINT,
    reason VARCHAR,
    mode VARCHAR NOT NULL -- live, replay or demo
);

CREATE TABLE drift (
    ts TIMESTAMPTZ NOT NULL,
    model_id BIGINT NOT NULL,
    feature VARCHAR NOT NULL,
    psi DOUBLE,
    ks DOUBLE
);
