"""The prediction service on a real XGBoost model trained on ~3000 real candles: the model's
own answer on the batch features, caches that reuse and never go stale, past ts without a
later candle, batched calls equal to one-market ones, the rule on fallback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.live.predictor import Predictor
from engine.research.features import compute_features
from engine.trading.strategies import SmaCross
from engine.training.train import train_model
from store.candles import load_candles, upsert_candles
from store.db import connect
from store.registry import ModelRecord
from tests.conftest import shared_candles

ROWS = 3000


class CountingPredictor(Predictor):
    """A Predictor that counts its model calls (rows per call) and model loads."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.loads = 0

    def call(self, loaded, windows):  # type: ignore[no-untyped-def]
        self.calls.append(len(windows))
        return super().call(loaded, windows)

    def warm(self, loaded) -> None:  # type: ignore[no-untyped-def]
        self.loads += 1
        super().warm(loaded)
        self.calls.clear()  # the warm-up's calls are not answers


def relabel(frame: pd.DataFrame, market: str) -> pd.DataFrame:
    return frame.assign(market=market)


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[object, ModelRecord, pd.DataFrame]]:
    home: Path = tmp_path_factory.mktemp("predictor")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPQUANT_HOME", str(home))
        con = connect()
        btc = shared_candles("KRW-BTC_1m.csv", ROWS)
        upsert_candles(con, btc)
        upsert_candles(con, shared_candles("KRW-ETH_1m.csv", ROWS, market="KRW-ETH"))
        record = train_model(
            con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 30, "device": "cpu"}
        ).model
        yield con, record, btc
        con.close()


def model_probs(con, record: ModelRecord, market: str, ts: pd.Timestamp) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The model's own probabilities for the candle at ts, on features of the whole history."""
    predictor = Predictor()
    loaded, _ = predictor.model(con, record.ref)
    features = compute_features(load_candles(con, market, "1"), loaded.feature_spec, unit="1")
    row = features.loc[[ts]].to_numpy(dtype=np.float32)
    return loaded.model.predict_proba(row)[0]


def test_predict_gives_the_models_probabilities_on_the_batch_features(store) -> None:  # type: ignore[no-untyped-def]
    con, record, btc = store
    predictor = Predictor()
    newest = predictor.predict(con, record.ref)
    assert newest.market == "KRW-BTC" and newest.unit == "1" and newest.model == record.ref
    assert newest.ts == btc["ts"].iloc[-1] and newest.fallback is None and newest.probabilities
    assert newest.latency_ms > 0
    for ts in [btc["ts"].iloc[-1], btc["ts"].iloc[1500], btc["ts"].iloc[600]]:
        got = predictor.predict(con, record.ref, "KRW-BTC", "1", ts.to_pydatetime())
        assert got.ts == ts
        np.testing.assert_allclose(
            got.probabilities, model_probs(con, record, "KRW-BTC", ts), atol=1e-6
        )
        assert sum(got.probabilities) == pytest.approx(1.0)
        best = int(np.argmax(got.probabilities))
        assert got.confidence == pytest.approx(got.probabilities[best])


def test_a_cache_hit_answers_identically_without_calling_the_model(store) -> None:  # type: ignore[no-untyped-def]
    con, record, _ = store
    predictor = CountingPredictor()
    first = predictor.predict(con, record.ref)
    assert predictor.calls == [1] and predictor.loads == 1 and not first.cached
    again = predictor.predict(con, str(record.id))  # another name of the same artifact
    assert again.cached and again.probabilities == first.probabilities and again.ts == first.ts
    assert predictor.calls == [1] and predictor.loads == 1  # neither reloaded nor recomputed
    # the same cached answer at another threshold: same probabilities, the action re-decided
    strict = predictor.predict(con, record.ref, threshold=1.0)
    assert strict.cached and strict.probabilities == first.probabilities and strict.action == "hold"


def test_a_written_candle_invalidates_the_cached_answer(store) -> None:  # type: ignore[no-untyped-def]
    con, record, btc = store
    upsert_candles(con, relabel(btc.iloc[:-1], "KRW-XRP"))
    predictor = CountingPredictor()
    before = predictor.predict(con, record.ref, "KRW-XRP")
    assert before.ts == btc["ts"].iloc[-2] and predictor.calls == [1]

    upsert_candles(con, relabel(btc.iloc[-1:], "KRW-XRP"))  # the next candle closes
    after = predictor.predict(con, record.ref, "KRW-XRP")
    assert after.ts == btc["ts"].iloc[-1] and not after.cached and predictor.calls == [1, 1]
    np.testing.assert_allclose(
        after.probabilities, model_probs(con, record, "KRW-XRP", after.ts), atol=1e-6
    )

    # the newest candle rewritten in place (same ts, other prices): recomputed, not the old answer
    changed = relabel(btc.iloc[-1:], "KRW-XRP").assign(
        close=btc["close"].iloc[-1] * 1.05, high=btc["high"].iloc[-1] * 1.05
    )
    upsert_candles(con, changed)
    rewritten = predictor.predict(con, record.ref, "KRW-XRP")
    assert rewritten.ts == after.ts and not rewritten.cached and predictor.calls == [1, 1, 1]
    assert rewritten.probabilities == Predictor().predict(con, record.ref, "KRW-XRP").probabilities
    assert rewritten.probabilities != after.probabilities


def test_a_past_ts_never_reads_a_later_candle(store) -> None:  # type: ignore[no-untyped-def]
    con, record, btc = store
    predictor = Predictor()
    for cut in (700, 2100):
        ts = btc["ts"].iloc[cut]
        upsert_candles(con, relabel(btc.iloc[: cut + 1], f"KRW-CUT{cut}"))  # history ends at ts
        truncated = Predictor().predict(con, record.ref, f"KRW-CUT{cut}")
        past = predictor.predict(con, record.ref, "KRW-BTC", ts=ts.to_pydatetime())
        assert past.ts == truncated.ts == ts
        assert past.probabilities == truncated.probabilities
        # a time between candles decides on the newest candle at or before it
        between = predictor.predict(
            con, record.ref, "KRW-BTC", ts=(ts + pd.Timedelta(seconds=30)).to_pydatetime()
        )
        assert between.ts == ts and between.probabilities == past.probabilities


def test_batch_predict_equals_per_market_predict_in_one_model_call(store) -> None:  # type: ignore[no-untyped-def]
    con, record, btc = store
    ts = btc["ts"].iloc[2500].to_pydatetime()
    markets = ["KRW-BTC", "KRW-ETH"]
    batched = CountingPredictor()
    together = batched.predict_markets(con, record.ref, markets, ts=ts)
    assert batched.calls == [2]  # one call over both markets' rows
    for market, got in zip(markets, together, strict=True):
        alone = Predictor().predict(con, record.ref, market, ts=ts)
        assert got.market == market and got.ts == alone.ts
        np.testing.assert_allclose(got.probabilities, alone.probabilities, atol=1e-6)
        assert got.action == alone.action

    start, end = btc["ts"].iloc[2000], btc["ts"].iloc[2050]
    ranged = CountingPredictor()
    series = ranged.predict_range(con, record.ref, "KRW-BTC", start=start, end=end)
    assert ranged.calls == [50] and [p.ts for p in series] == list(btc["ts"].iloc[2000:2050])
    for got in series[::7]:
        alone = Predictor().predict(con, record.ref, "KRW-BTC", ts=got.ts.to_pydatetime())
        np.testing.assert_allclose(got.probabilities, alone.probabilities, atol=1e-6)


def test_without_defined_features_the_rule_decides_and_says_why(store) -> None:  # type: ignore[no-untyped-def]
    con, record, btc = store
    early = Predictor().predict(con, record.ref, ts=btc["ts"].iloc[5].to_pydatetime())
    assert early.probabilities is None and early.source == SmaCross().name
    assert early.fallback and "features need" in early.fallback and "fallback" in early.reason


def test_aliases_units_and_unknown_models(store) -> None:  # type: ignore[no-untyped-def]
    con, record, _ = store
    predictor = Predictor()
    assert predictor.predict(con, f"{record.name}@champion").model == record.ref
    with pytest.raises(ValueError, match="trained on unit 1"):
        predictor.predict(con, record.ref, unit="60")
    with pytest.raises(KeyError):
        predictor.predict(con, "no-such-model")
    with pytest.raises(ValueError, match="no KRW-DOGE unit 1 candles"):
        predictor.predict(con, record.ref, "KRW-DOGE")


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Candles as a shared-format CSV (what `upquant data import` reads)."""
    out = frame[["ts", "open", "high", "low", "close", "volume"]].rename(columns={"ts": "timestamp"})
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    out.to_csv(path, index=False)
    return path


def test_a_candle_imported_through_the_facade_reaches_the_next_predict(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The server keeps series versions and model references in memory (no query on a
    repeated question); a candle write through the facade makes the next predict read it."""
    from engine.service import Workstation
    from engine.service.data import DataImportRequest
    from engine.service.prediction import BatchPredictRequest, PredictRequest

    con, record, btc = store
    ws = Workstation(con)
    upsert_candles(con, relabel(btc.iloc[:-2], "KRW-ADA"))
    ask = PredictRequest(model=record.ref, market="KRW-ADA")
    first = ws.predict(ask)
    assert first.ts == btc["ts"].iloc[-3] and not first.cached
    assert ws.predict(ask).cached  # answered from memory
    # what the server answers on its event loop: the same, without the store
    fast, slow = ws.from_memory("predict", ask), ws.predict(ask)
    assert fast is not None and fast == slow.model_copy(update={"latency_ms": fast.latency_ms})

    for newest in (-2, -1):  # each imported candle is the next predict's candle
        path = write_csv(tmp_path / f"ada{newest}.csv", btc.iloc[newest:][:1])
        imported = ws.data_import(DataImportRequest(path=str(path), market="KRW-ADA", unit="1"))
        assert imported.rows_new == 1
        assert ws.from_memory("predict", ask) is None  # the write made memory stale
        after = ws.predict(ask)
        assert after.ts == btc["ts"].iloc[newest] and not after.cached
        alone = Predictor().predict(con, record.ref, "KRW-ADA")
        got = after.probabilities
        assert got is not None and alone.probabilities is not None
        np.testing.assert_allclose([got.sell, got.hold, got.buy], alone.probabilities, atol=1e-9)
        batch = ws.batch_predict(BatchPredictRequest(model=record.ref, markets=["KRW-ADA"]))
        assert batch.predictions[0].ts == after.ts  # the batch path sees it too


def test_an_alias_moved_through_the_facade_reaches_the_next_predict(store) -> None:  # type: ignore[no-untyped-def]
    """`name@champion` is resolved by store.model_refs.resolve (the one resolver) and kept in
    memory; a promote or rollback through the facade moves the next predict's model."""
    from engine.service import Workstation
    from engine.service.prediction import PredictRequest
    from engine.service.registry import ModelRefRequest, RollbackRequest
    from store.model_refs import resolve

    con, record, _ = store
    ws = Workstation(con)
    alias = f"{record.name}@champion"
    ask = PredictRequest(model=alias, market="KRW-BTC")
    assert ws.predict(ask).model == record.ref
    assert ws.predict(ask).cached
    other = train_model(
        con, "xgboost", "KRW-BTC", "1", params={"n_estimators": 5, "device": "cpu"}, promote=False
    ).model
    assert ws.predict(ask).model == record.ref  # registered, not promoted: still the champion
    try:
        ws.model_promote(ModelRefRequest(model=other.ref))
        assert ws.from_memory("predict", ask) is None
        promoted = ws.predict(ask)
        assert promoted.model == other.ref == resolve(con, alias).ref and not promoted.cached
        assert promoted.probabilities is not None
        np.testing.assert_allclose(
            [promoted.probabilities.sell, promoted.probabilities.hold, promoted.probabilities.buy],
            Predictor().predict(con, other.ref).probabilities,  # type: ignore[arg-type]
            atol=1e-9,
        )
        ws.model_rollback(RollbackRequest(market="KRW-BTC", unit="1"))
        assert ws.predict(ask).model == record.ref == resolve(con, alias).ref
    finally:  # the module's model stays the champion for the other tests
        ws.model_promote(ModelRefRequest(model=record.ref))


def test_the_newest_candles_of_many_markets_equal_each_series_tail(store) -> None:  # type: ignore[no-untyped-def]
    """`last_candles` reads a bounded span first and re-reads exactly the series it leaves
    short: a gappy series, a short one, one that ended long before, one that does not exist
    all come back as the tail of their own full history, and a batch over them answers as
    the model does on full-history features."""
    from store.candles import last_candles

    con, record, btc = store
    upsert_candles(con, relabel(btc.iloc[::3], "KRW-GAPS"))  # two of three buckets missing
    upsert_candles(con, relabel(btc.iloc[:90], "KRW-SHORT"))
    upsert_candles(con, relabel(btc.iloc[:1200], "KRW-OLD"))  # ends 1800 candles early
    markets = ["KRW-GAPS", "KRW-BTC", "KRW-SHORT", "KRW-NONE", "KRW-OLD", "KRW-ETH"]
    for until in (None, btc["ts"].iloc[-7], btc["ts"].iloc[2000], btc["ts"].iloc[60]):
        for last in (1, 50, 482):
            got = last_candles(con, markets, "1", last, until)
            assert list(dict.fromkeys(got["market"])) == [
                m for m in markets if m in set(got["market"])
            ]  # grouped in the order asked
            for market in markets:
                end = None if until is None else until + pd.Timedelta(microseconds=1)
                want = load_candles(con, market, "1", end=end).tail(last).reset_index(drop=True)
                mine = got[got["market"] == market].reset_index(drop=True)
                assert list(mine["ts"]) == list(want["ts"]), (market, until, last)
                for col in ("open", "high", "low", "close", "volume", "value"):
                    np.testing.assert_array_equal(mine[col].to_numpy(), want[col].to_numpy())

    ts = btc["ts"].iloc[2400]
    batch = Predictor().predict_markets(
        con, record.ref, ["KRW-GAPS", "KRW-BTC", "KRW-OLD"], ts=ts.to_pydatetime()
    )
    assert [p.ts for p in batch[1:]] == [ts, btc["ts"].iloc[1199]]
    for got in batch:
        if got.probabilities is None:  # the gaps break the windows: the rule decides
            assert got.market == "KRW-GAPS" and got.fallback
            continue
        np.testing.assert_allclose(
            got.probabilities, model_probs(con, record, got.market, got.ts), atol=1e-6
        )
