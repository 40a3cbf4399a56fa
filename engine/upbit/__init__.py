"""The only code that speaks Upbit: market codes and candle units, REST backfill with one
rate limiter, the public WebSocket."""
