-- A signal records the candle unit it was decided on (the live engine runs per market and
-- unit), so a market's 1-minute and 60-minute signals can be told apart. Signals stored
-- before this keep a null unit: which unit decided them was not recorded.
ALTER TABLE signals ADD COLUMN unit VARCHAR;
