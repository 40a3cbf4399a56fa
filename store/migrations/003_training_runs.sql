-- Training runs record what they train and where they checkpoint, so another process can show
-- them and `upquant train --resume RUN` can continue one; per-epoch metrics belong to a run
-- before its model exists; predictions record their candle unit.
ALTER TABLE metrics ADD COLUMN run_id BIGINT;
ALTER TABLE metrics ALTER COLUMN model_id DROP NOT NULL;
ALTER TABLE training_runs ADD COLUMN kind VARCHAR;
ALTER TABLE training_runs ADD COLUMN market VARCHAR;
ALTER TABLE training_runs ADD COLUMN unit VARCHAR;
ALTER TABLE training_runs ADD COLUMN config JSON;
ALTER TABLE training_runs ADD COLUMN checkpoint VARCHAR;
ALTER TABLE predictions ADD COLUMN unit VARCHAR;
