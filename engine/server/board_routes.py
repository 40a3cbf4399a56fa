"""The market board as a REST route (the facade operation `market_board`,
engine/service/board.py):

    GET    /api/v1/markets/board   ?unit&spark: one row per watched (or stored) market: last
                                   price, 24 h change, volume and KRW value, the newest closes,
                                   the decision, the paper position, the newest drift event
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes([Route("GET", "/api/v1/markets/board", op="market_board")])
