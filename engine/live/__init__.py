"""The live engine: per closed candle features, cached inference and the strategy; sessions
(live, replay, demo) and their candle sources."""
