"""Champion vs challengers and the promotion gate as REST routes (facade operations,
`engine.service.ab`):

    GET  /api/v1/markets/{market}/ab     ?unit: champion, challengers and shadows side by side
                                         (live metrics, shadow evidence, the gate's verdicts)
    POST /api/v1/markets/{market}/gate   {unit}: run the gate now (write scope); with
                                         auto-promotion on it may move the champion alias
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes(
    [
        Route("GET", "/api/v1/markets/{market}/ab", op="model_ab"),
        Route("POST", "/api/v1/markets/{market}/gate", op="gate_run"),
    ]
)
