"""Retraining and online updates as REST routes, each one facade operation
(`engine.service.retraining`):

    POST /api/v1/markets/{market}/retrain        202 {run, status, status_url, ...}: the
                                                 champion of market/unit (?unit or body)
                                                 retrained as a job; its model a challenger
    GET  /api/v1/markets/{market}/retrains       the retrains of market/unit, newest first
    POST /api/v1/ml-models/{id}/online-update    the model updated on newly resolved candles,
                                                 registered as a challenger (201)

A retrain refused answers 409 (no champion; one of it runs already, named) or 400.
Follow and cancel a retrain as any training run: /api/v1/training-runs/{run}.
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes(
    [
        Route("POST", "/api/v1/markets/{market}/retrain", op="model_retrain", status=202),
        Route("GET", "/api/v1/markets/{market}/retrains", op="model_retrains"),
        Route(
            "POST",
            "/api/v1/ml-models/{id}/online-update",
            op="model_online_update",
            fields={"id": "model"},
            status=201,
        ),
    ]
)
