"""The live prediction log as REST routes (facade operations, `engine.service.outcomes`):

    GET  /api/v1/ml-models/{id}/predictions  ?market&unit&limit&resolved: a model's live
                                             predictions, newest first, outcomes once resolved
    POST /api/v1/predictions/resolve         {models?, markets?}: resolve every pending live
                                             prediction whose label horizon has passed

A model's live metrics are part of `GET /api/v1/ml-models/{id}/metrics` (`live`).
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes(
    [
        Route(
            "GET", "/api/v1/ml-models/{id}/predictions", op="prediction_log", fields={"id": "model"}
        ),
        Route("POST", "/api/v1/predictions/resolve", op="outcomes_resolve"),
    ]
)
