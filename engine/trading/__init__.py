"""Decisions on candles: rule and AI strategies, and the vectorised backtest."""
