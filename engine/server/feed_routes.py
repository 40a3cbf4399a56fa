"""The live candle feeds a server records as REST routes, each one facade operation
(engine/service/feeds.py):

    POST   /api/v1/feeds          start one {markets, unit, watch, all_krw}: 201, its id and status
    GET    /api/v1/feeds          every feed: markets, unit, counts, last problems (?after: messages)
    GET    /api/v1/feeds/{id}     one feed (404: none with that id)
    DELETE /api/v1/feeds/{id}     stop it (what it buffered written): its final counts

A feed's status texts and closed candles also go out on `GET /api/v1/events` (with `feed`).
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes
from engine.service.feeds import Feeds, FeedStatus


def _one(answer: Feeds) -> FeedStatus:
    return answer.feeds[0]


add_routes(
    [
        Route("POST", "/api/v1/feeds", op="feed_start", status=201),
        Route("GET", "/api/v1/feeds", op="feed_status"),
        Route(
            "GET",
            "/api/v1/feeds/{id}",
            op="feed_status",
            fields={"id": "feed"},
            transform=_one,  # type: ignore[arg-type]
            response=FeedStatus,
            summary="One feed the server records: markets, unit, counts, last problems",
        ),
        Route("DELETE", "/api/v1/feeds/{id}", op="feed_stop", fields={"id": "feed"}),
    ]
)
