"""The stored data and the live session as REST routes, each one facade operation:

    GET    /api/v1/markets            stored series: market, unit, first, last, candles
    GET    /api/v1/candles            ?market&unit&from&to&last: a page of one series' candles
    GET    /api/v1/data/status        per series: rows, first/last, gaps, last update
    GET    /api/v1/signals            ?market&unit&action&last: stored signals, newest first
    GET    /api/v1/live               the live session's status (running false: none)
    POST   /api/v1/live               start one {market, unit, threshold, ...}; 409: one runs
    DELETE /api/v1/live               stop it (its buffered signals written)
    PUT    /api/v1/live/threshold     {threshold}: move its confidence threshold
    GET    /api/v1/live/history       ?last: the newest candles of the engine's window

The session's events stream is `GET /api/v1/events` (engine/server/events_routes.py).
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes(
    [
        Route("GET", "/api/v1/markets", op="markets"),
        Route("GET", "/api/v1/candles", op="candles"),
        Route("GET", "/api/v1/data/status", op="data_status"),
        Route("GET", "/api/v1/signals", op="signals"),
        Route("GET", "/api/v1/live", op="live_status"),
        Route("POST", "/api/v1/live", op="live_start"),
        Route("DELETE", "/api/v1/live", op="live_stop"),
        Route("PUT", "/api/v1/live/threshold", op="live_threshold"),
        Route("GET", "/api/v1/live/history", op="live_history"),
    ]
)
