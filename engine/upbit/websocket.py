"""Upbit's public WebSocket: one subscription's frames (`stream`) and a candle frame as a
canonical candle row. Reconnecting and backfilling are the live feed's (engine/data/feed.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, cast

import httpx
import pandas as pd
import websockets

from engine.upbit.client import make_client
from engine.upbit.client import ws_url as _configured_ws_url
from engine.upbit.errors import UpbitError, UpbitRefused, UpbitUnreachable
from engine.upbit.markets import CANDLE_FIELDS

PING_INTERVAL_S = 20.0  # Upbit closes idle sockets after ~60 s (observed)


async def stream(
    markets: Sequence[str],
    types: Sequence[str] = ("candle.1m", "trade"),
    *,
    extra: Mapping[str, Sequence[str]] | None = None,
    ws_url: str | None = None,
    ping_interval: float = PING_INTERVAL_S,
    on_open: Callable[[], object] | None = None,
    on_malformed: Callable[[UpbitError], object] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Frames from one public WebSocket subscription, as dicts, until the socket closes.

    Subscribes `types` for `markets`, plus each type in `extra` for its own codes (a
    watchlist's trade and ticker), in one message on one connection. `on_open()` runs once the
    subscription is sent. Raises UpbitRefused for an `{"error": ...}` frame and
    UpbitUnreachable when the socket cannot open or is closed; it never reconnects (the live
    feed does). A frame that is not a JSON object raises UpbitError, or goes to
    `on_malformed(error)` and is skipped when that is given. Pings keep the socket alive every
    `ping_interval` seconds. Wrap it in `contextlib.aclosing` so the socket closes as soon as
    the caller stops reading.
    """
    wanted = {kind: list(markets) for kind in types} if markets else {}
    for kind, codes in (extra or {}).items():
        if codes:
            wanted[kind] = sorted({*wanted.get(kind, []), *codes})
    if not wanted:
        raise UpbitError("stream needs at least one market and one type")
    subscription = [
        {"ticket": f"upquant-{uuid.uuid4()}"},
        *({"type": kind, "codes": codes} for kind, codes in wanted.items()),
        {"format": "DEFAULT"},
    ]
    target = ws_url or _configured_ws_url()
    options = cast(Any, {"ping_interval": ping_interval, "ping_timeout": ping_interval})
    async with make_client(ws=target) as client:
        manager = client.ws_public.connect_public(websocket_connection_options=options)
        try:
            conn = await manager.enter()
        except (
            OSError,
            TimeoutError,
            httpx.InvalidURL,  # a malformed UPQUANT_UPBIT_WS_URL
            websockets.InvalidHandshake,
            websockets.InvalidURI,
        ) as exc:
            raise UpbitUnreachable(
                f"cannot open the Upbit WebSocket at {target} ({type(exc).__name__}: {exc});"
                " check the network or UPQUANT_UPBIT_WS_URL"
            ) from exc
        try:
            while True:
                try:
                    if subscription:
                        await conn.send_raw(json.dumps(subscription))
                        subscription = []
                        if on_open is not None:
                            on_open()
                    data = await conn.recv_bytes()
                except websockets.ConnectionClosed as exc:
                    raise UpbitUnreachable(
                        f"the Upbit WebSocket at {target} closed ({exc}); reconnect and backfill"
                    ) from exc
                try:
                    frame = _decode_frame(data)
                except UpbitError as exc:
                    if on_malformed is None:
                        raise
                    on_malformed(exc)
                    continue
                if "error" in frame:
                    error = frame["error"] if isinstance(frame["error"], dict) else {}
                    raise UpbitRefused(
                        f"Upbit WebSocket refused the subscription to {list(wanted)} for"
                        f" {sorted({c for codes in wanted.values() for c in codes})}:"
                        f" {error.get('name')}: {error.get('message')}",
                        name=str(error.get("name")),
                    )
                yield frame
        finally:
            await conn.close()


def _decode_frame(data: bytes | str) -> dict[str, Any]:
    try:
        frame = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpbitError(f"Upbit WebSocket sent a frame that is not UTF-8 JSON ({exc})") from exc
    if not isinstance(frame, dict):
        raise UpbitError(f"Upbit WebSocket sent {type(frame).__name__}, not an object")
    return frame


def candle_frame_to_row(frame: Mapping[str, Any]) -> dict[str, Any]:
    """A `candle.Nm` frame as a canonical candle dict (market, unit, ts, open, ..., value)."""
    kind = str(frame.get("type", ""))
    unit = kind.removeprefix("candle.").removesuffix("m")
    if not kind.startswith("candle.") or not kind.endswith("m") or not unit.isdigit():
        raise UpbitError(f"not a minute candle frame: type {kind!r}")
    try:
        row: dict[str, Any] = {
            "market": str(frame["code"]),
            "unit": unit,
            "ts": pd.Timestamp(frame["candle_date_time_utc"], tz="UTC").as_unit("ns"),
        }
        for column, name in CANDLE_FIELDS.items():
            row[column] = float(frame[name])
    except KeyError as exc:
        raise UpbitError(f"candle frame for {frame.get('code')} lacks field {exc}") from exc
    return row
