"""The ML-model registry routes: list, show, register, update (alias moves), delete, metrics,
evaluate and backtest, each one facade operation (`engine.service.registry`,
`engine.service.evaluation`). `{id}` is any model reference (id, name, name@version,
name@champion; URL-encoded) and fills the operation's `model` field.

Evaluate answers 200 with the result for every range and walk-forward, however long it
takes: a long walk-forward is not yet a job (202 + run) like training.
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

MODEL = {"id": "model"}

add_routes(
    [
        Route("GET", "/api/v1/ml-models", op="model_list"),
        Route("POST", "/api/v1/ml-models", op="model_register", status=201),
        Route("GET", "/api/v1/ml-models/{id}", op="model_show", fields=MODEL),
        Route("PUT", "/api/v1/ml-models/{id}", op="model_update", fields=MODEL),
        Route("DELETE", "/api/v1/ml-models/{id}", op="model_delete", fields=MODEL),
        Route("GET", "/api/v1/ml-models/{id}/metrics", op="model_metrics", fields=MODEL),
        Route("POST", "/api/v1/ml-models/{id}/evaluate", op="evaluate", fields=MODEL),
        Route("GET", "/api/v1/ml-models/{id}/backtest", op="backtest", fields=MODEL),
    ]
)
