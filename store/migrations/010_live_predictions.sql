-- The live prediction log (issue 11): `predictions` holds batch predictions (`upquant predict
-- --store`, source 'batch', their label known when stored) and, from now on, every prediction
-- the live engine makes (source 'live'): the champion's and every challenger's and shadow's,
-- on the same closed candles with the same features. A live row is appended without an
-- outcome; once its label horizon has passed, the resolver (engine.ops.outcomes) fills
-- `label_resolved` (sell/hold/buy by the model's own label spec), `outcome_return` (the close
-- to close return over the horizon) and `resolved_at`. Nothing else ever changes a live row.
ALTER TABLE predictions ADD COLUMN source VARCHAR DEFAULT 'batch';
UPDATE predictions SET source = 'batch';
ALTER TABLE predictions ADD COLUMN role VARCHAR;          -- champion, challenger or shadow
ALTER TABLE predictions ADD COLUMN mode VARCHAR;          -- live or replay (demo is not stored)
ALTER TABLE predictions ALTER COLUMN probs DROP NOT NULL; -- null: the model gave no answer
ALTER TABLE predictions ADD COLUMN action VARCHAR;        -- the model's own thresholded action
ALTER TABLE predictions ADD COLUMN confidence DOUBLE;
ALTER TABLE predictions ADD COLUMN threshold DOUBLE;      -- the confidence threshold applied
ALTER TABLE predictions ADD COLUMN acted BOOLEAN;         -- this prediction was the signal
ALTER TABLE predictions ADD COLUMN latency_ms DOUBLE;     -- features + inference, this model
ALTER TABLE predictions ADD COLUMN fallback VARCHAR;      -- why the model gave no answer
ALTER TABLE predictions ADD COLUMN outcome_return DOUBLE;
ALTER TABLE predictions ADD COLUMN resolved_at TIMESTAMPTZ;
