"""The paper broker's book as a REST route (the facade operation `paper`,
engine/service/paper.py):

    GET    /api/v1/paper   ?account&fills&orders: cash, equity, realised and unrealised PnL,
                           positions with their last price, pending orders, recent fills and
                           orders of the account (live by default, or replay)
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes([Route("GET", "/api/v1/paper", op="paper")])
