"""Strategy specs: per-candle `decide` equals vectorised `spec_actions` for every form and rule on
real candles, the default spec is the engine before specs, hysteresis, cooldown, the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.trading.backtest import action_codes
from engine.trading.spec import (
    DEFAULT_SPEC,
    Regime,
    SpecError,
    StrategySpec,
    StrategyState,
    decide,
    rsi_values,
    spec_actions,
)
from engine.trading.strategies import SmaCross, threshold_action
from tests.conftest import shared_candles

N = 3000
COLUMNS = ("open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def series() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """3,000 real BTC 1-minute candles and model answers that follow them, one in ten missing."""
    candles = shared_candles("KRW-BTC_1m.csv", N)
    window = {col: candles[col].to_numpy() for col in COLUMNS}
    closes = window["close"]
    rng = np.random.default_rng(12)
    move = np.diff(np.log(closes), prepend=np.log(closes[0])) * 2000
    logits = np.column_stack([-move, np.full(N, 0.3), move]) + rng.normal(0, 0.8, (N, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[rng.random(N) < 0.1] = np.nan
    return window, probs


def _per_candle(
    spec: StrategySpec, window: dict[str, np.ndarray], probs: np.ndarray, first: int = 0
) -> list:
    """decide on every candle from `first` in turn, as the live engine calls it: a window of
    the last history_needed() candles (or a few more: its length must not matter)."""
    state, out = StrategyState(), []
    needed = spec.history_needed()
    for t in range(first, len(window["close"])):
        start = max(0, t + 1 - needed - t % 5)
        tail = {col: values[start : t + 1] for col, values in window.items()}
        row = probs[t] if np.isfinite(probs[t]).all() else None
        out.append(decide(spec, state, tail, row, "xgb@1", "no model"))
    return out


def _regime_band(closes: np.ndarray, measure: dict) -> dict:
    """enter/exit at the 65th/35th percentile of the measure, so the regime changes often."""
    values = Regime(**measure).values(closes)
    lo, hi = np.nanpercentile(values, [35, 65])
    return {**measure, "enter": float(hi), "exit": float(lo)}


SMA = {"rule": "sma-cross", "fast": 5, "slow": 20}
RSI = {"rule": "rsi", "period": 7, "lower": 35, "upper": 65}
BOLL = {"rule": "bollinger", "period": 20, "k": 1.5}
SPECS: dict[str, dict[str, Any]] = {
    "ai default": {},
    "ai, rules fall back": {"rules": [RSI, BOLL], "threshold": 0.45},
    "rule sma-cross": {"form": "rule", "rules": [SMA]},
    "rule rsi": {"form": "rule", "rules": [RSI]},
    "rule bollinger": {"form": "rule", "rules": [BOLL]},
    "rule three": {"form": "rule", "rules": [SMA, RSI, BOLL], "cooldown": 4},
    "voting majority": {"form": "voting", "rules": [SMA, RSI, BOLL]},
    "voting weights": {
        "form": "voting",
        "rules": [{**SMA, "weight": 2.0}, RSI, {**BOLL, "weight": 0.5}],
        "voting": {"method": "weights", "ai_weight": 1.5},
        "cooldown": 3,
    },
    "regime volatility": {"form": "regime", "rules": [BOLL], "regime": {"measure": "volatility"}},
    "regime trend": {
        "form": "regime",
        "rules": [SMA, RSI],
        "regime": {"measure": "trend", "fast": 5, "slow": 40, "high": "ai"},
        "cooldown": 2,
    },
    "filter": {"form": "filter", "rules": [SMA, BOLL], "filter": {"min_confidence": 0.4}},
}


@pytest.mark.parametrize("name", list(SPECS))
def test_decide_equals_spec_actions_on_every_real_candle(series, name: str) -> None:
    window, probs = series
    data: dict[str, Any] = {"name": name, **SPECS[name]}
    if "regime" in data:
        data["regime"] = _regime_band(window["close"], data["regime"])
    spec = StrategySpec.from_dict(data)
    vectorised = spec_actions(spec, window, probs)
    decisions = _per_candle(spec, window, probs)
    np.testing.assert_array_equal(action_codes([d.action for d in decisions]), vectorised)
    assert (vectorised == 1).sum() >= 5 and (vectorised == -1).sum() >= 5, "too few to compare"
    if spec.form == "regime":  # both parts decided somewhere, and the reason says which
        assert {"ai", "rule"} <= {d.reason.split(" -> ")[1].split(":")[0] for d in decisions}


@pytest.mark.parametrize("name", ["regime volatility", "regime trend", "voting weights"])
def test_decisions_after_a_warmup_start_from_a_fresh_state(series, name: str) -> None:
    """spec_actions(warmup=w) is a live engine primed with w candles: from candle w, decide
    with a fresh state (flat, no cooldown, low regime) and windows reaching back."""
    window, probs = series
    window = {col: values[:1500] for col, values in window.items()}
    data: dict[str, Any] = {"name": name, **SPECS[name]}
    if "regime" in data:
        data["regime"] = _regime_band(window["close"], data["regime"])
    spec = StrategySpec.from_dict(data)
    warm = 700
    codes = spec_actions(spec, window, probs[:1500], warmup=warm)
    decisions = _per_candle(spec, window, probs[:1500], first=warm)
    assert not codes[:warm].any() and codes[warm:].any()
    np.testing.assert_array_equal(codes[warm:], action_codes([d.action for d in decisions]))


def test_reasons_say_which_parts_voted_how(series) -> None:
    window, probs = series
    spec = StrategySpec.from_dict({"name": "v", "form": "voting", "rules": [SMA, RSI, BOLL]})
    decisions = _per_candle(spec, window, probs)
    buy = next(d for d in decisions if d.action == "buy" and d.votes[0] == ("ai", "buy"))
    assert buy.reason.startswith("voting: ai buy 0.")
    assert "sma-cross(5,20) " in buy.reason and "rsi(7) " in buy.reason
    assert buy.reason.endswith(f"-> buy {sum(a == 'buy' for _, a in buy.votes)}/4")
    assert buy.source == "v" and len(buy.votes) == 4
    missing = next(d for d in decisions if d.votes[0] == ("ai", "none"))
    assert "ai none (fallback: no model)" in missing.reason and missing.reason.endswith("/3")


def test_default_spec_is_the_engine_before_specs(series) -> None:
    """AI threshold 0.5 with the model's answer; sma-cross(10,30) with its reason and the
    fallback's when there is none: the live engine's signal, field by field."""
    window, probs = series
    closes = window["close"]
    decisions = _per_candle(DEFAULT_SPEC, window, probs)
    rule = SmaCross()
    fallbacks = 0
    for t, decision in enumerate(decisions):
        if np.isfinite(probs[t]).all():
            action, confidence, reason = threshold_action(probs[t], 0.5)
            assert (decision.action, decision.confidence, decision.source, decision.reason) == (
                action,
                confidence,
                "xgb@1",
                reason,
            )
        else:
            fallbacks += 1
            action, reason = rule.decide(closes[: t + 1])
            expected = (action, 1.0 if action != "hold" else 0.0, rule.name)
            assert (decision.action, decision.confidence, decision.source) == expected
            assert decision.reason == f"{reason} (fallback: no model)"
    assert fallbacks > 200
    assert DEFAULT_SPEC.uses_ai and DEFAULT_SPEC.threshold == 0.5 and DEFAULT_SPEC.cooldown == 0
    assert DEFAULT_SPEC.history_needed() == 31 and DEFAULT_SPEC.max_position is None
    # the stored signals' hashes depend on this text: a change must be deliberate
    assert DEFAULT_SPEC.canonical_json() == (
        '{"cooldown":0,"form":"ai","max_position":null,"name":"default",'
        '"rules":[{"fast":10,"rule":"sma-cross","slow":30,"weight":1.0}],"threshold":0.5}'
    )


def test_rsi_is_wilders_as_talib_computes_it(series) -> None:
    talib = pytest.importorskip("talib")
    closes = series[0]["close"]
    period, span = 7, 70
    ours = rsi_values(closes, period)
    assert np.isnan(ours[:span]).all() and np.isfinite(ours[span:]).mean() > 0.99
    for t in range(span, N, 37):
        theirs = talib.RSI(closes[t - span : t + 1], timeperiod=period)[-1]
        assert ours[t] == pytest.approx(theirs, rel=1e-9, abs=1e-9)


def test_hysteresis_does_not_flap_between_enter_and_exit() -> None:
    regime = Regime(measure="volatility", enter=0.02, exit=0.01)
    inside = [0.011, 0.019] * 20  # between exit and enter: crosses the middle 40 times
    values = np.array([0.005, *inside, 0.021, *inside, 0.009, *inside, np.nan])
    states = regime.states(values)
    expected = [False] * 41 + [True] * 41 + [False] * 42
    np.testing.assert_array_equal(states, expected)
    high, stepped = False, []
    for value in values:
        high = regime.step(high, value)
        stepped.append(high)
    assert stepped == expected


def test_cooldown_holds_exactly_n_candles() -> None:
    """A model that says buy, sell, buy, ... every candle: after each flip of the position, the
    next 3 candles hold; a buy while long (or a sell while flat) passes and flips nothing."""
    n = 16
    probs = np.tile([[0.0, 0.1, 0.9], [0.9, 0.1, 0.0]], (n // 2, 1))
    window = {col: np.full(n, 100.0) for col in COLUMNS}
    spec = StrategySpec.from_dict({"name": "cool", "cooldown": 3})
    expected = [1, 0, 0, 0, 1, -1, 0, 0, 0, -1, 1, 0, 0, 0, 1, -1]
    np.testing.assert_array_equal(spec_actions(spec, window, probs), expected)
    decisions = _per_candle(spec, window, probs)
    assert action_codes([d.action for d in decisions]).tolist() == expected
    assert decisions[3].reason.endswith("cooldown: sell held, 1 candle(s) left")
    free = StrategySpec.from_dict({"name": "free"})
    assert spec_actions(free, window, probs).tolist() == [1, -1] * (n // 2)


def test_hash_is_stable_under_key_order_and_toml_equals_json(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "name": "vote",
        "form": "voting",
        "threshold": 0.6,
        "cooldown": 2,
        "max_position": 200000,
        "rules": [SMA, RSI],
        "voting": {"method": "weights", "ai_weight": 2},
    }
    shuffled = dict(reversed(list(data.items())))
    shuffled["rules"] = [dict(reversed(list(rule.items()))) for rule in data["rules"]]
    spec = StrategySpec.from_dict(data)
    assert StrategySpec.from_dict(shuffled).hash == spec.hash
    assert len(spec.hash) == 64 and int(spec.hash, 16) >= 0
    assert StrategySpec.from_dict(spec.to_dict()) == spec
    assert StrategySpec.from_dict({**data, "threshold": 0.61}).hash != spec.hash
    (tmp_path / "s.json").write_text(json.dumps(shuffled, indent=2))
    (tmp_path / "s.toml").write_text(
        'name = "vote"\nform = "voting"\nthreshold = 0.6\ncooldown = 2\nmax_position = 200_000\n'
        '[voting]\nmethod = "weights"\nai_weight = 2\n'
        '[[rules]]\nrule = "sma-cross"\nfast = 5\nslow = 20\n'
        '[[rules]]\nrule = "rsi"\nperiod = 7\nlower = 35\nupper = 65\n'
    )
    from_json, from_toml = (
        StrategySpec.load(tmp_path / "s.json"),
        StrategySpec.load(tmp_path / "s.toml"),
    )
    assert from_json == from_toml == spec and from_toml.hash == spec.hash
    assert from_toml.max_position == 200_000.0 and from_toml.uses_ai
    assert from_toml.history_needed() == 72  # rsi(7) reads 70 changes and the one before


BAD = [
    ("a.json", '{"name": "x", "form": "vote"}', "form: one of ai, rule, voting, regime, filter"),
    ("a.json", '{"name": "x", "treshold": 0.5}', "treshold: unknown key; known:"),
    ("a.json", '{"threshold": 1.5}', "threshold: a confidence in [0, 1], got 1.5"),
    ("a.json", '{"cooldown": -1}', "cooldown: an integer >= 0, got -1"),
    ("a.json", '{"cooldown": 2.5}', "cooldown: an integer >= 0, got 2.5"),
    ("a.json", '{"max_position": 0}', "max_position: KRW above 0"),
    ("a.toml", 'rules = [{rule = "macd"}]', "rules[0].rule: one of sma-cross, rsi, bollinger"),
    ("a.toml", 'rules = [{rule = "rsi", lower = 70, upper = 30}]', "rules[0].lower, upper: need 0"),
    ("a.toml", 'rules = [{rule = "sma-cross", fast = 30, slow = 10}]', "rules[0].slow: above fast"),
    ("a.toml", 'rules = [{rule = "bollinger", k = "2"}]', "rules[0].k: a finite number, got '2'"),
    ("a.toml", 'rules = [{rule = "rsi", weight = 2}]', "rules[0].weight: counts only in a voting"),
    ("a.toml", 'form = "rule"\nrules = []', "rules: a rule spec needs at least one rule"),
    ("a.toml", 'form = "filter"\n[voting]\nmethod = "majority"', "voting: settings of the voting"),
    (
        "a.toml",
        'form = "regime"\n[regime]\nenter = 0.1\nexit = 0.2',
        "regime.exit: needs 0 <= exit",
    ),
    ("a.toml", 'form = "regime"\n[regime]\nmeasure = "trend"\nperiod = 5', "regime.period: not a"),
    ("a.toml", "name = ", "not valid TOML"),
    ("a.json", "{", "not valid JSON"),
    ("a.yaml", "name: x", "give a .json or .toml file"),
]


@pytest.mark.parametrize(("filename", "text", "message"), BAD)
def test_bad_files_say_the_file_the_key_and_the_fix(
    tmp_path: Path, filename: str, text: str, message: str
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        StrategySpec.load(path)
    assert str(caught.value).startswith(f"strategy spec {path}: ")
    assert message in str(caught.value)


def test_missing_file_and_bad_probs_are_named(tmp_path: Path, series) -> None:
    with pytest.raises(SpecError, match="cannot read it"):
        StrategySpec.load(tmp_path / "nope.toml")
    window, probs = series
    with pytest.raises(ValueError, match=r"one \(sell, hold, buy\) row per candle \(3000\)"):
        spec_actions(DEFAULT_SPEC, window, probs[:-1])
    with pytest.raises(ValueError, match="one \\(sell, hold, buy\\) row, got shape"):
        decide(DEFAULT_SPEC, StrategyState(), window, probs[:2])


def test_spec_actions_takes_a_dataframe_and_rules_need_no_model() -> None:
    candles = pd.DataFrame({col: np.linspace(100, 120, 50) for col in COLUMNS})
    spec = StrategySpec.from_dict({"name": "r", "form": "rule", "rules": [SMA]})
    assert not spec.uses_ai
    assert spec_actions(spec, candles).tolist() == [0] * 50  # a straight line never crosses


# --- `upquant backtest --strategy-spec` ------------------------------------------------------------
def _command_app():
    import typer

    from tui.cli.backtest import backtest as backtest_command

    app = typer.Typer()
    app.command()(backtest_command)
    app.command("other")(lambda: None)  # two commands, so the name is part of the usage
    return app


FILTER_TOML = """name = "agreed"
form = "filter"
cooldown = 2

[filter]
min_confidence = 0.22

[[rules]]
rule = "sma-cross"
fast = 5
slow = 20

[[rules]]
rule = "rsi"
period = 7
lower = 35
upper = 65
"""


@pytest.mark.slow
def test_backtest_command_runs_a_strategy_spec_with_the_champions_answers(
    con, btc_1m: pd.DataFrame, tmp_path: Path
) -> None:
    """The spec's actions over the champion's test part, beside the baselines, named with the
    spec's hash: the same trades as deciding each candle in turn on the model's batch
    predictions, its rules reading the candles before the range."""
    from typer.testing import CliRunner

    from engine.trading.backtest import backtest
    from engine.training.batch import predict_range
    from engine.training.train import train_model
    from store.candles import load_candles, upsert_candles

    upsert_candles(con, btc_1m.iloc[:2500])
    trained = train_model(
        con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 10, "device": "cpu"}
    )
    ref = trained.model.ref
    path = tmp_path / "agreed.toml"
    path.write_text(FILTER_TOML)
    spec = StrategySpec.load(path)
    start = pd.Timestamp((trained.model.tags or {})["test_from"])
    frame = predict_range(con, ref, "KRW-BTC", start).frame.set_index("ts")
    candles = load_candles(con, "KRW-BTC", "1")
    closes, stamps = candles["close"].to_numpy(), pd.DatetimeIndex(candles["ts"])
    first = int(np.argmax(stamps >= start))
    state, decisions = StrategyState(), []
    for t in range(first, len(candles)):  # a live engine primed with the candles before
        row = (
            frame.loc[stamps[t], ["p_sell", "p_hold", "p_buy"]]
            if stamps[t] in frame.index
            else None
        )
        probs = None if row is None else row.to_numpy(dtype="float64")
        window = {"close": closes[max(0, t + 1 - spec.history_needed()) : t + 1]}
        decisions.append(decide(spec, state, window, probs, ref))
    inside = stamps >= start
    actions = [d.action for d in decisions]
    expected = backtest(candles[inside].reset_index(drop=True), action_codes(actions), unit="1")
    assert expected.metrics["trades"] >= 2, expected.metrics
    said = [d.reason.rsplit("-> ", 1)[-1] for d in decisions if "; ai " in d.reason]
    assert {"buy", "sell", "hold"} <= set(said), said  # the model let some pass, not all
    con.close()  # the command opens the store itself

    runner = CliRunner()
    raw = runner.invoke(
        _command_app(), ["backtest", "KRW-BTC", "--strategy-spec", str(path), "--json"]
    )
    assert raw.exit_code == 0, raw.output
    payload = json.loads(raw.output)
    label = f"agreed ({spec.hash[:12]})"
    assert payload["strategy_spec"] == "agreed" and payload["strategy_hash"] == spec.hash
    assert payload["model"] == ref and payload["strategy"] == label
    assert list(payload["results"]) == [label, "buy-and-hold", "no-trade"]
    assert payload["candles"] == int(inside.sum())
    ours = payload["results"][label]
    assert ours["trades"] == expected.metrics["trades"]
    assert ours["total_return"] == pytest.approx(expected.metrics["total_return"], abs=1e-12)

    table = runner.invoke(
        _command_app(), ["backtest", "KRW-BTC", "--strategy-spec", str(path), "--model", ref]
    )
    assert table.exit_code == 0, table.output
    assert f"strategy spec agreed · hash {spec.hash} · model {ref}" in table.output
    assert label[:20] in table.output and "buy-and-hold" in table.output


def test_backtest_command_says_what_is_wrong_with_a_strategy_spec(
    con, btc_1m: pd.DataFrame, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from engine.trading.backtest import backtest
    from store.candles import upsert_candles

    upsert_candles(con, btc_1m.iloc[:300])
    con.close()
    bad = tmp_path / "bad.json"
    bad.write_text('{"form": "rule", "rules": [{"rule": "rsi", "period": 1}]}')
    ai = tmp_path / "ai.toml"
    ai.write_text('name = "ai"\n')
    rule = tmp_path / "rule.toml"
    rule.write_text('name = "bands"\nform = "rule"\nrules = [{rule = "bollinger"}]\n')
    runner = CliRunner()
    cases = [
        (["KRW-BTC", "--strategy-spec", str(bad)], f"strategy spec {bad}: rules[0].period: an"),
        (["KRW-BTC", "--strategy-spec", str(ai)], "KRW-BTC unit 1 has no champion to read"),
    ]
    for args, message in cases:
        result = runner.invoke(_command_app(), ["backtest", *args])
        assert result.exception is not None and message in str(result.exception), result.output
    done = runner.invoke(
        _command_app(), ["backtest", "KRW-BTC", "--strategy-spec", str(rule), "--json"]
    )
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert payload["model"] is None and payload["candles"] == 300
    candles = btc_1m.iloc[:300].reset_index(drop=True)
    codes = spec_actions(StrategySpec.load(rule), candles)
    expected = backtest(candles, codes, unit="1").metrics["trades"]
    assert payload["results"][payload["strategy"]]["trades"] == expected > 0
