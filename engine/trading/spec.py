"""Strategy specs: a hybrid strategy declared in a JSON or TOML file, hashed, decided per candle
or vectorised over a series.

A spec's `form` says how the model (the AI threshold) and the rules combine:
- `ai`: the model decides (its most likely class, when not hold and at least `threshold`
  sure); when it gives no answer the rules do. `DEFAULT_SPEC` is this with sma-cross(10, 30):
  the live engine before specs, to the reason text.
- `rule`: the rules only.
- `voting`: the model and each rule vote; an action wins with more than half of the weight
  of the votes cast (`majority`: one vote each; `weights`: `ai_weight` and each rule's
  `weight`). A model without an answer abstains.
- `regime`: a regime measure (`volatility`, the std of log returns; `trend`, |fast SMA - slow
  SMA| / close) picks the model or the rules. The regime turns high when the measure rises
  above `enter` and low only when it falls below `exit`, so a measure between them never
  flaps it; `high` names the part that decides while it is high.
- `filter`: the rules' signal passes only when the model gives its action at least
  `min_confidence`.
The rules' signal, where one is needed, is theirs when they agree: a buy with no sell among
them buys, a sell with no buy sells, anything else holds. `cooldown` turns every buy or sell
into hold for that many candles after an action that flipped the long/flat position.
`max_position` (KRW per market) is the paper broker's, not the decision's.

The rules and regime measures live in engine.trading.rules. `decide` (per candle, the live
engine's) and `spec_actions` (vectorised, the backtest's) agree to the bit: the tests hold
them equal on every candle of real series, with and without model answers.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.trading.rules import (
    RULES,
    BollingerRule,
    Regime,
    RsiRule,
    Rule,
    SmaCrossRule,
    SpecError,
    check_float,
    check_int,
    check_probability,
    check_weight,
    is_int,
    rsi_values,
)
from engine.trading.strategies import actions_from_probs, threshold_action
from models import CLASSES

__all__ = [
    "DEFAULT_SPEC",
    "BollingerRule",
    "Decision",
    "Regime",
    "RsiRule",
    "SmaCrossRule",
    "SpecError",
    "StrategySpec",
    "StrategyState",
    "decide",
    "rsi_values",
    "spec_actions",
]

FORMS = ("ai", "rule", "voting", "regime", "filter")


# --- reading a spec -----------------------------------------------------------------------------
def _fields(obj: Any) -> dict[str, Any]:
    """A part's settings as the spec file writes them (unused ones left out)."""
    return {name: value for name, value in obj.__dict__.items() if value is not None}


def _unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise SpecError(f"{where}{extra[0]}: unknown key; known: {', '.join(sorted(known))}")


def _rule(i: int, entry: Any) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(entry, Mapping) or "rule" not in entry:
        raise SpecError(
            f"{where}: a table with 'rule' (one of {', '.join(RULES)}) and its settings"
        )
    kind = entry["rule"]
    if not isinstance(kind, str) or kind not in RULES:
        raise SpecError(f"{where}.rule: one of {', '.join(RULES)}, got {kind!r}")
    return _section(where, RULES[kind], {k: v for k, v in entry.items() if k != "rule"})


def _section(where: str, cls: Any, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: a table of settings, got {data!r}")
    known = {name for name in cls.__dataclass_fields__ if name != "kind"}
    _unknown(data, known, f"{where}.")
    values = {
        k: float(v) if isinstance(cls.__dataclass_fields__[k].default, float) and is_int(v) else v
        for k, v in data.items()
    }
    try:
        return cls(**values)
    except SpecError as exc:
        raise SpecError(f"{where}.{exc}") from exc


# --- the parts of a spec ------------------------------------------------------------------------
@dataclass(frozen=True)
class Voting:
    method: str = "majority"  # or "weights"
    ai_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in ("majority", "weights"):
            raise SpecError(f"method: 'majority' or 'weights', got {self.method!r}")
        check_weight(self.ai_weight, "ai_weight")


@dataclass(frozen=True)
class Filter:
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        check_probability("min_confidence", self.min_confidence)


SECTIONS = {"voting": Voting, "regime": Regime, "filter": Filter}


@dataclass(frozen=True)
class StrategySpec:
    """A strategy declared as data; `hash` identifies it in every signal it decides."""

    name: str = "default"
    form: str = "ai"
    rules: tuple[Rule, ...] = (SmaCrossRule(),)
    threshold: float = 0.5
    cooldown: int = 0
    max_position: float | None = None  # KRW per market (the paper broker's)
    voting: Voting | None = None
    regime: Regime | None = None
    filter: Filter | None = None
    hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SpecError("name: a non-empty string naming the strategy")
        if self.form not in FORMS:
            raise SpecError(f"form: one of {', '.join(FORMS)}, got {self.form!r}")
        check_probability("threshold", self.threshold)
        check_int("cooldown", self.cooldown, 0)
        if self.max_position is not None:
            check_float("max_position", self.max_position)
            if not self.max_position > 0:
                raise SpecError(
                    f"max_position: KRW above 0 (or leave it out), got {self.max_position}"
                )
        if self.form != "ai" and not self.rules:
            raise SpecError(f"rules: a {self.form} spec needs at least one rule")
        for name in SECTIONS:
            if name != self.form and getattr(self, name) is not None:
                raise SpecError(
                    f"{name}: settings of the {name} form in a {self.form} spec; remove them"
                )
        if self.form in SECTIONS and getattr(self, self.form) is None:
            object.__setattr__(self, self.form, SECTIONS[self.form]())
        weighted = (
            self.form == "voting" and self.voting is not None and self.voting.method == "weights"
        )
        for i, rule in enumerate(self.rules):
            if rule.weight != 1.0 and not weighted:
                raise SpecError(
                    f"rules[{i}].weight: counts only in a voting spec with method 'weights'"
                )
        if self.voting is not None and self.voting.ai_weight != 1.0 and not weighted:
            raise SpecError("voting.ai_weight: counts only with method 'weights'")
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()
        object.__setattr__(self, "hash", digest)

    @property
    def uses_ai(self) -> bool:
        return self.form != "rule"

    def history_needed(self) -> int:
        """Candles a decision reads (the newest included)."""
        needs = [rule.history() for rule in self.rules]
        if self.regime is not None:
            needs.append(self.regime.history())
        return max([1, *needs])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "form": self.form,
            "threshold": float(self.threshold),
            "cooldown": self.cooldown,
            "max_position": None if self.max_position is None else float(self.max_position),
            "rules": [{"rule": rule.kind, **_fields(rule)} for rule in self.rules],
        }
        section = getattr(self, self.form, None) if self.form in SECTIONS else None
        if section is not None:
            out[self.form] = _fields(section)
        return out

    def canonical_json(self) -> str:
        """Sorted keys, no spaces, every default spelled out: one text per strategy."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StrategySpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec is a table of settings, got {type(data).__name__}")
        known = {"name", "form", "rules", "threshold", "cooldown", "max_position", *SECTIONS}
        _unknown(data, known, "")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in ("rules", *SECTIONS)}
        for key in ("threshold", "max_position"):
            if isinstance(kwargs.get(key), int) and not isinstance(kwargs[key], bool):
                kwargs[key] = float(kwargs[key])
        if "rules" in data:
            rules = data["rules"]
            if not isinstance(rules, list):
                raise SpecError("rules: a list of rule tables, e.g. [{rule = 'rsi', period = 14}]")
            kwargs["rules"] = tuple(_rule(i, entry) for i, entry in enumerate(rules))
        for name, cls_ in SECTIONS.items():
            if name in data:
                kwargs[name] = _section(name, cls_, data[name])
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> StrategySpec:
        """A spec from a .json or .toml file; errors name the file, the key and the fix."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise SpecError(f"strategy spec {path}: give a .json or .toml file")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(
                f"strategy spec {path}: cannot read it ({exc.strerror or exc})"
            ) from exc
        try:
            data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SpecError(f"strategy spec {path}: not valid {suffix[1:].upper()}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            raise SpecError(f"strategy spec {path}: {exc}") from exc


DEFAULT_SPEC = StrategySpec()


# --- deciding -----------------------------------------------------------------------------------
@dataclass
class StrategyState:
    """What a market's decisions carry from one candle to the next."""

    position: int = 0  # 1 long, 0 flat: the actions followed as the backtest fills them
    cooldown_left: int = 0  # candles whose buy or sell still turn into hold
    regime_high: bool = False


@dataclass(frozen=True)
class Decision:
    """One candle's action; `votes` pairs each part (ai, a rule, regime) with what it said."""

    action: str
    confidence: float
    source: str
    reason: str
    votes: tuple[tuple[str, str], ...] = ()


def decide(
    spec: StrategySpec,
    state: StrategyState,
    window: Mapping[str, np.ndarray],
    probs: np.ndarray | None,
    model_ref: str | None = None,
    fallback: str | None = None,
) -> Decision:
    """The action at the newest candle of `window` (ascending open/high/low/close/volume, at
    least `spec.history_needed()` candles for a full decision). `probs` is the model's
    (sell, hold, buy) answer, None when it gave none (`fallback` says why). Updates `state`."""
    closes = np.asarray(window["close"], dtype="float64")
    if probs is not None:
        probs = np.asarray(probs, dtype="float64")
        if probs.shape != (3,):
            raise ValueError(f"probs: one (sell, hold, buy) row, got shape {probs.shape}")
    model = model_ref or "model"
    why = f"fallback: {fallback or 'no answer'}"
    if spec.form == "ai":
        decision = _ai_or_rules(spec, closes, probs, model, why)
    elif spec.form == "rule":
        decision = _rules(spec, closes)
    elif spec.form == "voting":
        decision = _vote(spec, closes, probs, why)
    elif spec.form == "regime":
        decision = _regime(spec, state, closes, probs, model, why)
    else:
        decision = _filter(spec, closes, probs, why)
    return _cooled(spec, state, decision)


def _rules(spec: StrategySpec, closes: np.ndarray) -> Decision:
    """The rules' signal: theirs when they agree (a buy and a sell cancel into hold)."""
    said = [(rule.name, *rule.decide(closes)) for rule in spec.rules]
    votes = tuple((name, action) for name, action, _ in said)
    if not said:
        return Decision("hold", 0.0, spec.name, "no rule", ())
    if len(said) == 1:
        name, action, reason = said[0]
        return Decision(action, 0.0 if action == "hold" else 1.0, name, reason, votes)
    actions = {action for _, action, _ in said}
    action = _agreed("buy" in actions, "sell" in actions)
    parts = ", ".join(f"{name} {action}" for name, action in votes)
    confidence = 0.0 if action == "hold" else 1.0
    return Decision(action, confidence, spec.name, f"rules: {parts} -> {action}", votes)


def _agreed(buy: Any, sell: Any) -> Any:
    if isinstance(buy, np.ndarray):
        return (buy & ~sell).astype(np.int8) - (sell & ~buy).astype(np.int8)
    return "buy" if buy and not sell else "sell" if sell and not buy else "hold"


def _ai_or_rules(
    spec: StrategySpec, closes: np.ndarray, probs: np.ndarray | None, model: str, why: str
) -> Decision:
    if probs is not None:
        action, confidence, reason = threshold_action(probs, spec.threshold)
        return Decision(action, confidence, model, reason, (("ai", action),))
    rules = _rules(spec, closes)
    return Decision(
        rules.action,
        rules.confidence,
        rules.source,
        f"{rules.reason} ({why})",
        (("ai", "none"), *rules.votes),
    )


def _vote(spec: StrategySpec, closes: np.ndarray, probs: np.ndarray | None, why: str) -> Decision:
    assert spec.voting is not None
    weighted = spec.voting.method == "weights"
    voters: list[tuple[str, str, float]] = []
    parts = []
    if probs is not None:
        action, confidence, _ = threshold_action(probs, spec.threshold)
        voters.append(("ai", action, spec.voting.ai_weight if weighted else 1.0))
        parts.append(f"ai {action} {confidence:.2f}")
    else:
        parts.append(f"ai none ({why})")
    for rule in spec.rules:
        action, _ = rule.decide(closes)
        voters.append((rule.name, action, rule.weight if weighted else 1.0))
        parts.append(f"{rule.name} {action}" + (f" x{rule.weight:g}" if weighted else ""))
    total = 0.0
    weight = {"sell": 0.0, "hold": 0.0, "buy": 0.0}
    for _, action, w in voters:  # the order spec_actions adds them in
        total += w
        weight[action] += w
    won = "buy" if weight["buy"] > total / 2 else "sell" if weight["sell"] > total / 2 else "hold"
    reason = f"voting: {', '.join(parts)} -> {won} {weight[won]:g}/{total:g}"
    votes = tuple((name, action) for name, action, _ in voters)
    if probs is None:
        votes = (("ai", "none"), *votes)
    return Decision(won, weight[won] / total, spec.name, reason, votes)


def _regime(
    spec: StrategySpec,
    state: StrategyState,
    closes: np.ndarray,
    probs: np.ndarray | None,
    model: str,
    why: str,
) -> Decision:
    regime = spec.regime
    assert regime is not None
    value = float(regime.values(closes[-regime.history() :])[-1])
    state.regime_high = regime.step(state.regime_high, value)
    level = "high" if state.regime_high else "low"
    part = regime.high if state.regime_high else ("rule" if regime.high == "ai" else "ai")
    inner = _ai_or_rules(spec, closes, probs, model, why) if part == "ai" else _rules(spec, closes)
    band = f"enter {regime.enter:g}, exit {regime.exit:g}"
    return Decision(
        inner.action,
        inner.confidence,
        inner.source,
        f"regime: {regime.label} {value:.4g} {level} ({band}) -> {part}: {inner.reason}",
        (("regime", level), *inner.votes),
    )


def _filter(spec: StrategySpec, closes: np.ndarray, probs: np.ndarray | None, why: str) -> Decision:
    assert spec.filter is not None
    rules = _rules(spec, closes)
    least = spec.filter.min_confidence
    if rules.action == "hold":
        return Decision("hold", 0.0, rules.source, f"filter: {rules.reason}", rules.votes)
    if probs is None:
        reason = f"filter: {rules.reason}; ai none ({why}) -> hold"
        return Decision("hold", 0.0, spec.name, reason, (*rules.votes, ("ai", "none")))
    p = float(probs[CLASSES.index(rules.action)])
    passed = p >= least
    action = rules.action if passed else "hold"
    sign = ">=" if passed else "<"
    reason = f"filter: {rules.reason}; ai {rules.action} p={p:.2f} {sign} {least:.2f} -> {action}"
    votes = (*rules.votes, ("ai", rules.action if passed else "disagrees"))
    return Decision(action, p, spec.name, reason, votes)


def _cooled(spec: StrategySpec, state: StrategyState, decision: Decision) -> Decision:
    """Hold a buy or sell within `cooldown` candles of a flip; follow the position."""
    if state.cooldown_left > 0:
        left = state.cooldown_left
        state.cooldown_left -= 1
        if decision.action != "hold":
            said = f"{decision.reason}; cooldown: {decision.action} held, {left} candle(s) left"
            decision = Decision("hold", decision.confidence, decision.source, said, decision.votes)
    flat = state.position == 0
    if (decision.action == "buy" and flat) or (decision.action == "sell" and not flat):
        state.position = 1 if flat else 0
        state.cooldown_left = spec.cooldown
    return decision


def spec_actions(
    spec: StrategySpec,
    candles: Mapping[str, Any],
    probs: np.ndarray | None = None,
    *,
    warmup: int = 0,
) -> np.ndarray:
    """`decide` on every candle at once, from a fresh state: action codes (-1 sell, 0 hold,
    1 buy). `probs` (n, 3) holds the model's answers, a NaN row where it gave none (None: no
    answer anywhere). The first `warmup` candles are history only (they hold): decisions
    start after them from a fresh state, as a live engine primed with them starts."""
    closes = np.asarray(candles["close"], dtype="float64")
    n = len(closes)
    if not 0 <= warmup <= n:
        raise ValueError(f"warmup: 0 to the {n} candles, got {warmup}")
    if probs is None:
        probs = np.full((n, 3), np.nan)
    probs = np.asarray(probs, dtype="float64")
    if probs.shape != (n, 3):
        raise ValueError(f"probs: one (sell, hold, buy) row per candle ({n}), got {probs.shape}")
    answered = np.isfinite(probs).all(axis=1)
    ai = np.zeros(n, dtype=np.int8)
    ai[answered] = actions_from_probs(probs[answered], spec.threshold)
    codes = [rule.codes(closes) for rule in spec.rules]
    if codes:
        stacked = np.stack(codes)
        rules = _agreed((stacked == 1).any(axis=0), (stacked == -1).any(axis=0))
    else:
        rules = np.zeros(n, dtype=np.int8)
    if spec.form == "ai":
        out = np.where(answered, ai, rules)
    elif spec.form == "rule":
        out = rules
    elif spec.form == "voting":
        assert spec.voting is not None
        weighted = spec.voting.method == "weights"
        voters = [(ai, answered, spec.voting.ai_weight if weighted else 1.0)]
        voters += [
            (c, np.ones(n, dtype=bool), r.weight if weighted else 1.0)
            for c, r in zip(codes, spec.rules)
        ]
        total, buy, sell = np.zeros(n), np.zeros(n), np.zeros(n)
        for code, cast, w in voters:  # in decide's order: the same sums to the bit
            total += np.where(cast, w, 0.0)
            buy += np.where(cast & (code == 1), w, 0.0)
            sell += np.where(cast & (code == -1), w, 0.0)
        out = np.where(buy > total / 2, 1, np.where(sell > total / 2, -1, 0))
    elif spec.form == "regime":
        assert spec.regime is not None
        high = np.zeros(n, dtype=bool)
        high[warmup:] = spec.regime.states(spec.regime.values(closes)[warmup:])
        use_ai = high == (spec.regime.high == "ai")
        out = np.where(use_ai, np.where(answered, ai, rules), rules)
    else:
        assert spec.filter is not None
        p = probs[np.arange(n), rules.astype(np.intp) + 1]
        out = np.where((rules != 0) & (p >= spec.filter.min_confidence), rules, 0)
    out = np.asarray(out, dtype=np.int8)
    out[:warmup] = 0
    return _cool(out, spec.cooldown)


def _cool(codes: np.ndarray, cooldown: int) -> np.ndarray:
    """`_cooled` over a series: only buys and sells can flip, so only they are visited."""
    if cooldown == 0:
        return codes
    out = codes.copy()
    long, until = False, -1
    for i in np.flatnonzero(codes).tolist():
        if i <= until:
            out[i] = 0
            continue
        buy = codes[i] == 1
        if buy != long:  # a buy while flat or a sell while long
            long, until = buy, i + cooldown
    return out
