"""The ML-model registry routes: list, show, register, update (alias moves), delete, metrics,
evaluate and backtest, each one facade operation (`engine.service.registry`,
`engine.service.evaluation`). `{id}` is any model reference (id, name, name@version,
name@champion; URL-encoded) and fills the operation's `model` field.

Evaluate answers a held-out range with 200 and its result. A walk-forward (`walk_forward`
true; a write-scope token) is a job fitted in a worker process: the request waits up to
`wait` seconds (default 5; 0 answers at once), then answers 200 with the result when it has
ended, else 202 with `{run, status, status_url}`:

    POST   /api/v1/ml-models/{id}/evaluate   200 result, or 202 {run, status, status_url}
    GET    /api/v1/evaluation-runs/{run}     status, folds done / folds, result once finished
    DELETE /api/v1/evaluation-runs/{run}     cancel: the run reads `interrupted`

A run and its result are stored (`evaluation_runs`): they read the same after a restart.
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
        Route(
            "POST",
            "/api/v1/ml-models/{id}/evaluate",
            op="evaluate",
            fields=MODEL,
            accepted=lambda result: result.pending,
        ),
        Route("GET", "/api/v1/evaluation-runs/{run}", op="evaluation_status"),
        Route("DELETE", "/api/v1/evaluation-runs/{run}", op="evaluation_cancel"),
        Route("GET", "/api/v1/ml-models/{id}/backtest", op="backtest", fields=MODEL),
    ]
)
