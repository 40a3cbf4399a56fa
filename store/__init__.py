"""DuckDB store: schema migrations, candles, model registry rows, signals, artifact files."""
