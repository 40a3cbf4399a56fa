"""The aliases of a market/unit as a REST route (a facade operation, `engine.service.registry`):

    GET    /api/v1/markets/{market}/aliases   ?unit&limit: who holds champion, challenger and
                                              shadow now, and every move, newest first

Aliases move by `PUT /api/v1/ml-models/{id}` (`alias`, `unalias`, `rollback`, `reason`;
engine/server/ml_models.py), or the operations `model_alias` and `model_unalias`.
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes([Route("GET", "/api/v1/markets/{market}/aliases", op="alias_history")])
