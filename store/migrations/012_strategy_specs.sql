-- Strategy specs (issue 12): how the live engine and the backtest turn a model's and the rules'
-- answers into actions (AI threshold, rule, voting, regime switch, AI filter; cooldown,
-- maximum position). A spec is stored once under the sha256 of its canonical JSON and every
-- signal names the spec that decided it (`signals.strategy`; null for older signals).
CREATE TABLE strategy_specs (
    hash VARCHAR PRIMARY KEY,         -- sha256 hex of the canonical JSON
    name VARCHAR NOT NULL,
    spec JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE signals ADD COLUMN strategy VARCHAR;
