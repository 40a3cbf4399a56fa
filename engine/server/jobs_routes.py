"""The training-job routes: start a run of a model's configuration (or of a new one in the
body) as a job, follow it, read its history, cancel it. Each is one facade operation of
`engine.service.training`; the job runs in a worker process, so the answers come at once.

    POST   /api/v1/ml-models/{id}/train             202 {run, status, status_url}
    GET    /api/v1/ml-models/{id}/training-status   its latest run (or ?run=N)
    GET    /api/v1/ml-models/{id}/training-history  per-epoch metrics of its name's runs
    POST   /api/v1/ml-models/{id}/train/cancel      its latest run (or ?run=N) interrupted
    GET    /api/v1/training-runs                    every run, newest first (?limit, ?active)
    GET    /api/v1/training-runs/{run}              a run by id (a new configuration's URL)
    DELETE /api/v1/training-runs/{run}              cancel a run by id

Cancelling is a POST on the model (an action, like train) and a DELETE on the run (the job
goes); both leave the run `interrupted`, resumable with `{"resume": RUN}` in a train body.
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

MODEL = {"id": "model"}

add_routes(
    [
        Route("POST", "/api/v1/ml-models/{id}/train", op="train_start", fields=MODEL, status=202),
        Route("GET", "/api/v1/ml-models/{id}/training-status", op="train_status", fields=MODEL),
        Route("GET", "/api/v1/ml-models/{id}/training-history", op="train_history", fields=MODEL),
        Route("POST", "/api/v1/ml-models/{id}/train/cancel", op="train_cancel", fields=MODEL),
        Route("GET", "/api/v1/training-runs", op="train_runs"),
        Route("GET", "/api/v1/training-runs/{run}", op="train_status"),
        Route("DELETE", "/api/v1/training-runs/{run}", op="train_cancel"),
    ]
)
