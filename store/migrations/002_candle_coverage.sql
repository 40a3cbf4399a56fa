-- Backfill bookkeeping and freshness of each candle series.
-- candle_coverage: time ranges [start_ts, end_ts) fetched completely from Upbit, so a resumed
-- or repeated fetch asks only for what is missing (a missing candle inside a covered range is
-- a bucket in which nothing traded, not a hole). Adjacent ranges are merged on write.
CREATE TABLE candle_coverage (
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    start_ts TIMESTAMPTZ NOT NULL,
    end_ts TIMESTAMPTZ NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL
);

-- candle_series: when any candle of a series was last written (fetch, import, live, resample).
CREATE TABLE candle_series (
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    updated_at TIMESTAMPTZ,
    PRIMARY KEY (market, unit)
);

INSERT INTO candle_series SELECT DISTINCT market, unit, NULL FROM candles;
