"""Candles into and out of the store: validated file import, resumable REST backfill, the live
feed over one WebSocket, resampling, export and per-series status."""
