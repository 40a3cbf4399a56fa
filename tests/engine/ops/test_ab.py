"""A/B from the shadow record and the promotion gate (engine.ops.ab): the evidence pairs only
the candles both models resolved and answered, trade returns by hand; on real XGBoost models
trained on real candles, with live rows in a real store, the gate promotes a clearly better
challenger by itself (history: by 'gate', the decision's reason), never without the minimum
evidence, only recommends without auto-promotion, never promotes a shadow; an equal-skill
challenger is promoted at most at the configured rate (pure, many seeds); the operations
`model_ab` and `gate_run` over HTTP and the `upquant models ab / gate` commands."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer
from scipy.stats import binom

from engine.ops.ab import (
    ab_report,
    buy_trade_returns,
    gate_check,
    judge,
    n_candidates,
    pair_rows,
    shadow_evidence,
)
from engine.ops.gate import GateConfig
from engine.ops.settings import OpsSettings, set_settings
from engine.ops.stats import log_loss_rows
from engine.server.app import create_app
from engine.service import Workstation
from engine.service.ab import plain
from engine.training.train import train_model
from models import CLASSES
from store.candles import upsert_candles
from store.db import connect
from store.predictions import insert_live_predictions
from store.registry import alias_history, champion, get_model, move_alias
from store.tokens import create_token
from tests.conftest import shared_candles
from tests.engine.ops.simulate import ShadowStream, shadow_stream
from tests.tui.test_cli import upquant_many

FEE = 0.0005
MARKET, UNIT = "KRW-BTC", "1"
T0 = pd.Timestamp("2030-01-01", tz="UTC")  # live candles long after every training split


# --- pure: pairing and trades -------------------------------------------------------------------
def rows(ts: list[int], probs: list, actions: list, labels: list, returns: list) -> pd.DataFrame:
    """Live rows as pair_rows reads them (None: no answer)."""
    proba = np.array([[np.nan] * 3 if p is None else p for p in probs])
    return pd.DataFrame(
        {
            "ts": [T0 + pd.Timedelta(minutes=m) for m in ts],
            "p_sell": proba[:, 0],
            "p_hold": proba[:, 1],
            "p_buy": proba[:, 2],
            "action": actions,
            "label_resolved": labels,
            "outcome_return": returns,
            "role": "challenger",
        }
    )


def test_evidence_pairs_only_the_candles_both_resolved_and_answered() -> None:
    p = [0.2, 0.3, 0.5]
    q = [0.6, 0.3, 0.1]
    champion_rows = rows(
        [0, 1, 2, 3, 4, 5],
        [p, p, None, p, p, q],
        ["buy", "sell", "hold", "buy", "buy", "sell"],
        ["buy", "sell", "hold", "hold", None, "sell"],  # candle 4 not resolved yet
        [0.01, -0.02, 0.0, 0.001, None, -0.004],
    )
    challenger_rows = rows(
        [1, 2, 3, 4, 5, 6],  # candle 0 the challenger never saw, 6 the champion did not
        [q, p, None, p, p, q],
        ["sell", "buy", "buy", "buy", "buy", "buy"],
        ["sell", "hold", "hold", "buy", "sell", "buy"],
        [-0.02, 0.0, 0.001, 0.003, -0.004, 0.02],
    )
    evidence = pair_rows(
        champion_rows,
        challenger_rows,
        market=MARKET,
        unit=UNIT,
        champion_id=1,
        challenger_id=2,
        fee=FEE,
    )
    # shared resolved candles: 1, 2, 3, 5; 2 the champion and 3 the challenger gave no answer
    assert evidence.resolved_both == 4
    assert (evidence.champion_unanswered, evidence.challenger_unanswered) == (1, 1)
    assert evidence.candles == 2 and evidence.in_sample == 0 and evidence.other_roles == 0
    assert list(pd.to_datetime(evidence.ts, utc=True)) == [
        T0 + pd.Timedelta(minutes=m) for m in (1, 5)
    ]
    # candle 1 (sell) and 5 (sell): champion p, q; challenger q, p
    np.testing.assert_allclose(evidence.champion_loss, [-np.log(0.2), -np.log(0.6)])
    np.testing.assert_allclose(evidence.challenger_loss, [-np.log(0.6), -np.log(0.2)])
    np.testing.assert_array_equal(evidence.champion_zero_one, [1.0, 0.0])
    np.testing.assert_array_equal(evidence.challenger_zero_one, [0.0, 1.0])
    # trades: buys only (a sell is flat on spot): the champion sold on both, the challenger
    # bought on candle 5, whose price fell 0.4 %
    assert len(evidence.champion_trades) == 0
    np.testing.assert_allclose(evidence.challenger_trades, [0.996 * 0.9995**2 - 1])
    summary = evidence.summary()
    assert summary["candles"] == 2 and summary["challenger_trades"] == 1
    assert summary["champion_return"] == 0.0

    # candles a model trained on are left out and counted; so are rows made in another role
    seen = pair_rows(
        champion_rows,
        challenger_rows.assign(role=["shadow", *["challenger"] * 5]),
        market=MARKET,
        unit=UNIT,
        champion_id=1,
        challenger_id=2,
        fee=FEE,
        role="challenger",
        seen_until=T0 + pd.Timedelta(minutes=1),
    )
    assert seen.other_roles == 1 and seen.resolved_both == 3 and seen.candles == 1
    assert seen.in_sample == 0  # candle 1 went as another role's, not as in-sample
    shifted = pair_rows(
        champion_rows,
        challenger_rows,
        market=MARKET,
        unit=UNIT,
        champion_id=1,
        challenger_id=2,
        seen_until=T0 + pd.Timedelta(minutes=1),
    )
    assert shifted.in_sample == 1 and shifted.candles == 1 and "training split" in shifted.note


def test_buy_trade_returns_by_hand() -> None:
    returns = buy_trade_returns(
        np.array(["buy", "hold", "sell", "buy", "buy"], dtype=object),
        np.array([0.02, 0.5, -0.3, -0.01, 0.0]),
        fee=0.001,
    )
    np.testing.assert_allclose(returns, [1.02 * 0.999**2 - 1, 0.99 * 0.999**2 - 1, 0.999**2 - 1])
    with pytest.raises(ValueError, match="fee"):
        buy_trade_returns(np.array(["buy"]), np.array([0.0]), fee=1.0)
    with pytest.raises(ValueError, match="outcome_return"):
        buy_trade_returns(np.array(["buy"], dtype=object), np.array([np.nan]))


# --- the simulated market as live rows ------------------------------------------------------------
def actions_of(proba: np.ndarray, act_at: float = 0.55) -> np.ndarray:
    """A model's own thresholded action: buy or sell when its probability reaches act_at."""
    side = np.where(proba[:, 2] >= proba[:, 0], "buy", "sell")
    return np.where(np.maximum(proba[:, 0], proba[:, 2]) >= act_at, side, "hold").astype(object)


def stream_rows(stream: ShadowStream, proba: np.ndarray, start: pd.Timestamp = T0) -> pd.DataFrame:
    n = len(stream.labels)
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="min"),
            "p_sell": proba[:, 0],
            "p_hold": proba[:, 1],
            "p_buy": proba[:, 2],
            "probs": list(proba),  # as the engine logs them (what insert_live_predictions takes)
            "action": actions_of(proba),
            "label_resolved": np.array(CLASSES)[stream.labels],
            "outcome_return": stream.move,
            "role": "challenger",
        }
    )


def test_an_equal_skill_challenger_is_promoted_at_most_at_the_configured_rate() -> None:
    """200 seeds of equal noise through the evidence (pairing, losses, buys after fees) and
    the gate: promotions not significantly above the DM level (binomial, 1 %); a clearly
    better challenger is promoted on the same path."""
    config = GateConfig(min_resolved=500, min_trades=30)
    promoted = 0
    for seed in range(200):
        stream = shadow_stream(seed, n_candles=600)
        evidence = pair_rows(
            stream_rows(stream, stream.champion_proba),
            stream_rows(stream, stream.challenger_proba),
            market=MARKET,
            unit=UNIT,
            champion_id=1,
            challenger_id=2,
            fee=FEE,
        )
        assert evidence.candles == 600
        np.testing.assert_allclose(
            evidence.champion_loss, log_loss_rows(stream.champion_proba, stream.labels)
        )
        promoted += judge(evidence, 3, config)[0].verdict == "promote"
    assert binom.sf(promoted - 1, 200, config.dm_level) > 0.01, promoted
    better = shadow_stream(7, n_candles=600, challenger_noise=0.3)
    evidence = pair_rows(
        stream_rows(better, better.champion_proba),
        stream_rows(better, better.challenger_proba),
        market=MARKET,
        unit=UNIT,
        champion_id=1,
        challenger_id=2,
        fee=FEE,
    )
    decision, look = judge(evidence, 3, config)
    assert decision.verdict == "promote" and (look.index, look.candles, look.dm_level) == (
        0,
        500,
        0.025,
    )
    assert decision.dm.n == 500 and "(level 0.025)" in decision.reason


# --- real models, real store --------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small XGBoost models of KRW-BTC 1m on 2000 real candles: ab@1 the champion."""
    home = tmp_path_factory.mktemp("ab")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        upsert_candles(con, shared_candles("KRW-BTC_1m.csv", 2000))
        for seed in (1, 2, 3):
            params = {"n_estimators": 5, "device": "cpu", "seed": seed}
            train_model(con, "xgboost", MARKET, UNIT, params=params, name="ab")
        con.close()
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(trained, copy)
    monkeypatch.setenv("UPQUANT_HOME", str(copy))
    monkeypatch.setenv("UPQUANT_SERVER", "off")
    return copy


@pytest.fixture
def store(home: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect()
    yield con
    con.close()


def log_live(
    con: duckdb.DuckDBPyConnection,
    model_id: int,
    role: str,
    stream: ShadowStream,
    proba: np.ndarray,
    start: pd.Timestamp = T0,
) -> None:
    """The live engine's rows of one model on the stream's candles, then their outcomes as the
    resolver writes them (label_resolved, outcome_return, resolved_at)."""
    frame = stream_rows(stream, proba, start).assign(
        market=MARKET,
        unit=UNIT,
        model_id=model_id,
        role=role,
        mode="live",
        acted=role == "champion",
    )
    frame.loc[::97, "probs"] = None  # now and then no answer (a fallback)
    frame.loc[::97, "action"] = None
    assert insert_live_predictions(con, frame) == len(frame)
    outcomes = frame[["ts", "label_resolved", "outcome_return"]].assign(model_id=model_id)
    con.register("outcomes", outcomes)
    con.execute(
        "UPDATE predictions p SET label_resolved = o.label_resolved,"
        " outcome_return = o.outcome_return, resolved_at = now() FROM outcomes o"
        " WHERE p.source = 'live' AND p.model_id = o.model_id AND p.ts = o.ts"
    )
    con.unregister("outcomes")


def seat(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """ab@1 champion, ab@2 challenger, ab@3 shadow."""
    ids = [get_model(con, f"ab@{v}").id for v in (1, 2, 3)]
    assert champion(con, MARKET, UNIT).id == ids[0]
    move_alias(con, ids[1], "challenger", reason="retrained")
    move_alias(con, ids[2], "shadow")
    return ids[0], ids[1], ids[2]


def auto(**gate: int) -> OpsSettings:
    return OpsSettings(auto_promote=True, gate=GateConfig(**gate))


def test_the_gate_promotes_a_clearly_better_challenger_with_its_reason(store) -> None:
    first, second, third = seat(store)
    stream = shadow_stream(3, n_candles=900, challenger_noise=0.3)
    log_live(store, first, "champion", stream, stream.champion_proba)
    log_live(store, second, "challenger", stream, stream.challenger_proba)
    log_live(store, third, "shadow", stream, stream.champion_proba)

    evidence = shadow_evidence(store, MARKET, UNIT, first, second)
    assert evidence.role == "challenger" and evidence.resolved_both == 900
    assert evidence.champion_unanswered == evidence.challenger_unanswered == 10
    assert evidence.candles == 890 and evidence.in_sample == 0 and evidence.horizon == 10
    assert n_candidates(store, MARKET, UNIT) == 1

    set_settings(store, MARKET, UNIT, auto())
    run = gate_check(store, MARKET, UNIT, auto())
    assert run.moved and run.chosen is not None and run.chosen.model_id == second, run.text
    assert champion(store, MARKET, UNIT).id == second
    newest = alias_history(store, MARKET, UNIT, limit=1)[0]
    assert (newest.alias, newest.model_id, newest.previous_model_id, newest.moved_by) == (
        "champion",
        second,
        first,
        "gate",
    )
    assert newest.reason == run.chosen.decision.reason
    assert newest.reason.startswith("challenger promoted: DM p=")
    assert run.text.startswith("promoted ab@2 over ab@1: challenger promoted")
    assert [e.moved_by for e in run.events] == ["gate", "gate"]  # challenger released, promoted
    # the new champion has no challenger: the next run moves nothing
    again = gate_check(store, MARKET, UNIT, auto(), last=None)  # no live metrics read
    assert not again.moved and again.report.challengers == []
    assert again.report.champion.live is None and again.text == "ab@2 stays champion: no challenger"


def test_no_promotion_without_the_minimum_evidence(store) -> None:
    first, second, _ = seat(store)
    stream = shadow_stream(4, n_candles=400, challenger_noise=0.3)
    log_live(store, first, "champion", stream, stream.champion_proba)
    log_live(store, second, "challenger", stream, stream.challenger_proba)
    before = alias_history(store, MARKET, UNIT)
    run = gate_check(store, MARKET, UNIT, auto(min_resolved=500))
    (judged,) = run.report.challengers
    assert judged.decision.verdict == "insufficient" and not run.moved and run.chosen is None
    assert judged.decision.reason == "not enough evidence: 395 resolved candles (minimum 500)"
    assert judged.decision.dm.p_value < 0.05  # the loss test alone would have passed
    # rows the challenger made as a shadow before it was a challenger do not count
    log_live(store, second, "shadow", stream, stream.challenger_proba, T0 + pd.Timedelta(days=1))
    log_live(store, first, "champion", stream, stream.champion_proba, T0 + pd.Timedelta(days=1))
    run = gate_check(store, MARKET, UNIT, auto(min_resolved=500))
    evidence = run.report.challengers[0].evidence
    assert evidence.other_roles == 400 and evidence.candles == 395 and not run.moved
    assert alias_history(store, MARKET, UNIT) == before


def test_without_auto_promotion_the_gate_only_recommends(store) -> None:
    first, second, _ = seat(store)
    stream = shadow_stream(9, n_candles=800, challenger_noise=0.3)
    log_live(store, first, "champion", stream, stream.champion_proba)
    log_live(store, second, "challenger", stream, stream.challenger_proba)
    before = alias_history(store, MARKET, UNIT)
    run = gate_check(store, MARKET, UNIT, OpsSettings(auto_promote=False))
    assert not run.moved and run.events == [] and run.chosen.model_id == second
    assert run.text.startswith("recommended: promote ab@2 over ab@1 (auto-promotion is off)")
    assert champion(store, MARKET, UNIT).id == first
    assert alias_history(store, MARKET, UNIT) == before


def test_a_shadow_is_never_promoted(store) -> None:
    first, second, third = seat(store)
    stream = shadow_stream(6, n_candles=800, challenger_noise=0.3)
    log_live(store, first, "champion", stream, stream.champion_proba)
    log_live(store, second, "challenger", stream, stream.champion_proba)  # no better
    log_live(store, third, "shadow", stream, stream.challenger_proba)  # clearly better
    report = ab_report(store, MARKET, UNIT, auto())
    (shadow,) = report.shadows
    assert shadow.decision.verdict == "promote" and not shadow.promotable
    assert report.best is None
    run = gate_check(store, MARKET, UNIT, auto())
    assert not run.moved and champion(store, MARKET, UNIT).id == first
    assert run.text.startswith("ab@1 stays champion: ab@2: ")


# --- the operations over HTTP, and the CLI --------------------------------------------------------
@pytest.fixture
async def api(home: Path) -> AsyncIterator[tuple[TestClient, dict[str, str]]]:
    con = connect()
    first, second, third = seat(con)
    stream = shadow_stream(8, n_candles=700, challenger_noise=0.3)
    log_live(con, first, "champion", stream, stream.champion_proba)
    log_live(con, second, "challenger", stream, stream.challenger_proba)
    # a know-nothing shadow (uniform on every candle): shown, kept out
    log_live(con, third, "shadow", stream, np.full_like(stream.champion_proba, 1 / 3))
    tokens = {scope: create_token(con, f"{scope}-test", scope)[1] for scope in ("read", "write")}
    client = TestClient(TestServer(create_app(Workstation(con)), host="127.0.0.1"))
    await client.start_server()
    yield client, tokens
    await client.close()
    con.close()


async def test_ab_and_gate_routes(api) -> None:
    client, tokens = api

    async def call(method: str, path: str, scope: str, **kwargs) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {tokens[scope]}"}
        async with client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    status, report = await call("GET", "/api/v1/markets/KRW-BTC/ab", "read", params={"unit": "1"})
    assert status == 200, report
    assert report["champion"]["model"] == "ab@1" and report["champion"]["gate"] is None
    assert report["auto_promote"] is False and report["recommended"] == "ab@2"
    (challenger,) = report["challengers"]
    assert challenger["gate"]["verdict"] == "promote" and challenger["promotable"]
    assert [c["name"] for c in challenger["gate"]["checks"]] == [
        "resolved",
        "trades",
        "loss",
        "deflated_sharpe",
        "drawdown",
    ]
    assert (
        challenger["evidence"]["candles"] == 692 and challenger["evidence"]["role"] == "challenger"
    )
    assert challenger["live"]["n_predictions"] == 500  # the newest LIVE_WINDOW rows
    (shadow,) = report["shadows"]
    assert shadow["promotable"] is False and shadow["gate"]["verdict"] != "promote"

    status, answer = await call("POST", "/api/v1/markets/KRW-BTC/gate", "read", json={"unit": "1"})
    assert status == 403
    status, run = await call("POST", "/api/v1/markets/KRW-BTC/gate", "write", json={"unit": "1"})
    assert status == 200 and run["moved"] is False and run["chosen"] == "ab@2"
    assert run["text"].startswith("recommended: promote ab@2")
    status, answer = await call("GET", "/api/v1/markets/krw-btc/ab", "read")
    assert status == 400 and "krw-btc" in answer["error"]


@pytest.mark.slow  # five `upquant` processes
def test_cli_ab_and_gate(home: Path) -> None:
    con = connect()
    first, second, _ = seat(con)
    stream = shadow_stream(10, n_candles=700, challenger_noise=0.3)
    log_live(con, first, "champion", stream, stream.champion_proba)
    log_live(con, second, "challenger", stream, stream.challenger_proba)
    set_settings(con, MARKET, UNIT, auto())
    con.close()
    shown, as_json, ran, history, bad = upquant_many(home, [
        ["models", "ab", MARKET, "--unit", UNIT],
        ["models", "ab", MARKET, "--json"],
        ["models", "gate", MARKET, "--unit", UNIT, "--json"],
        ["models", "history", MARKET, "--json"],
        ["models", "gate", MARKET, "--unit", "7"],
    ])  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for text in (
        "ab@1",
        "ab@2",
        "ab@3",
        "champion",
        "auto-promotion on",
        "challenger promoted: DM p=",
    ):
        assert text in shown.stdout, text
    report = json.loads(as_json.stdout)
    assert report["recommended"] == "ab@2" and report["auto_promote"] is True
    assert ran.returncode == 0, ran.stderr
    run = json.loads(ran.stdout)
    assert run["moved"] is True and run["previous"] == "ab@1" and run["chosen"] == "ab@2"
    assert [e["by"] for e in run["events"]] == ["gate", "gate"]
    moves = json.loads(history.stdout)
    assert moves["holders"][0]["model"] == "ab@2" and moves["events"][0]["by"] == "gate"
    assert bad.returncode != 0 and "unit '7' is not supported" in bad.stderr


def test_undefined_numbers_answer_null() -> None:
    """A DM statistic of a constant loss difference is infinite; JSON carries null."""
    assert plain({"a": [float("inf"), 1.5, float("nan")], "b": (-float("inf"),)}) == {
        "a": [None, 1.5, None],
        "b": [None],
    }
