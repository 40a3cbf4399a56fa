"""The data, features and store-upkeep operations called on an in-process Workstation, with
a real store and real KRW-BTC/KRW-ETH candles: what each answers, that every answer is
strict JSON, and that a bad request is refused with a message naming what is wrong."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from pydantic import BaseModel, ValidationError

from engine.data.series import DataError
from engine.service import ServiceError, Workstation, status_of
from engine.service.data import (
    DataExportRequest,
    DataFetchRequest,
    DataImportRequest,
    DataResampleRequest,
    DataStatusRequest,
    FetchProgress,
    fetch_progress,
)
from engine.service.features import FeaturesBuildRequest, FeaturesListRequest
from engine.service.upkeep import StoreCheckRequest
from tests.conftest import DATA
from tests.fake_upbit import FakeUpbit, load_csv_candles


def shared_file(tmp_path: Path, name: str, rows: int) -> Path:
    """The first `rows` candles of a shared CSV, as a file of their own."""
    source = DATA / name
    if not source.exists():
        pytest.skip(f"shared data {source} is not present")
    path = tmp_path / f"{name.removesuffix('.csv')}_{rows}.csv"
    pd.read_csv(source, nrows=rows).to_csv(path, index=False)
    return path


def strict(answer: BaseModel) -> object:
    """The answer's JSON form, parsed back under strict JSON (no NaN, no infinities)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(answer.model_dump_json(), parse_constant=refuse)


@pytest.fixture
def ws(home: Path) -> Iterator[Workstation]:
    with Workstation() as workstation:
        yield workstation


@pytest.fixture
def btc_2000(ws: Workstation, tmp_path: Path) -> Path:
    """2000 real KRW-BTC 1m candles imported through the operation; the file's path."""
    path = shared_file(tmp_path, "KRW-BTC_1m.csv", 2000)
    answer = ws.data_import(DataImportRequest(path=str(path), market="KRW-BTC", unit="1"))
    assert answer.error is None and answer.written
    return path


# --------------------------------------------------------------------------- import, status


def test_import_answers_its_counts_and_status_sees_the_candles(
    ws: Workstation, btc_2000: Path
) -> None:
    again = ws.data_import(DataImportRequest(path=str(btc_2000), market="KRW-BTC", unit="1"))
    assert (again.rows_read, again.rows_new, again.rows_unchanged) == (2000, 0, 2000)
    assert again.series == ["KRW-BTC 1"] and again.format == "shared" and again.written
    assert again.path == str(btc_2000) and again.error is None and again.hint is None
    [series] = ws.data_status(DataStatusRequest()).root
    assert (series.market, series.unit, series.rows) == ("KRW-BTC", "1", 2000)
    assert series.first == datetime(2025, 9, 1, tzinfo=UTC)


def test_an_import_that_would_change_stored_candles_answers_its_report_and_writes_nothing(
    ws: Workstation, btc_2000: Path, tmp_path: Path
) -> None:
    eth = shared_file(tmp_path, "KRW-ETH_1m.csv", 2000)
    before = ws.data_status(DataStatusRequest()).root
    refused = ws.data_import(DataImportRequest(path=str(eth), market="KRW-BTC", unit="1"))
    assert refused.written is False and refused.rows_updated == 2000 and refused.rows_new == 0
    assert refused.error is not None and "2,000 stored KRW-BTC 1 candles would change" in (
        refused.error
    )
    assert "nothing was written" in refused.error
    assert refused.hint is not None and "--overwrite" in refused.hint
    [change] = refused.changes
    assert (change.series, change.candles) == ("KRW-BTC 1", 2000)
    assert change.first == datetime(2025, 9, 1, tzinfo=UTC) and change.examples
    assert change.examples[0].stored["open"] != change.examples[0].incoming["open"]
    strict(refused)
    assert ws.data_status(DataStatusRequest()).root == before  # not one candle changed

    replaced = ws.data_import(
        DataImportRequest(path=str(eth), market="KRW-BTC", unit="1", overwrite=True)
    )
    assert replaced.error is None and replaced.written and replaced.rows_updated == 2000


def test_a_strict_import_of_a_file_with_bad_rows_lists_them(
    ws: Workstation, tmp_path: Path
) -> None:
    frame = pd.read_csv(DATA / "KRW-BTC_1m.csv", nrows=20)
    frame.loc[1, "high"] = frame.loc[1, "low"] - 1.0  # CSV line 3
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    refused = ws.data_import(
        DataImportRequest(path=str(path), market="KRW-BTC", unit="1", strict=True)
    )
    assert refused.written is False and refused.rows_rejected == 1
    assert refused.error is not None and "1 of 20 rows fail validation" in refused.error
    [row] = refused.rejected
    assert row.row == 3 and "high < low" in row.problems
    assert "row 3 (high < low)" in refused.examples
    assert ws.data_status(DataStatusRequest()).root == []


def test_import_paths_must_be_absolute_and_exist(ws: Workstation, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="relative path") as relative:
        ws.data_import(DataImportRequest(path="btc.csv", market="KRW-BTC", unit="1"))
    assert relative.value.hint is not None and "absolute" in relative.value.hint
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(ServiceError, match=f"{missing}: no such file") as absent:
        ws.data_import(DataImportRequest(path=str(missing), market="KRW-BTC", unit="1"))
    assert status_of(absent.value) == 400
    with pytest.raises(ValidationError, match="fromat"):  # a typo is an error, not a default
        DataImportRequest.model_validate({"path": str(missing), "fromat": "shared"})
    with pytest.raises(ValidationError, match="min_gap"):
        DataStatusRequest(min_gap=0)


# --------------------------------------------------------------------------- export, resample


def test_export_writes_the_series_and_resample_builds_hours(
    ws: Workstation, btc_2000: Path, tmp_path: Path
) -> None:
    out = tmp_path / "btc.parquet"
    exported = ws.data_export(DataExportRequest(market="KRW-BTC", unit="1", out=str(out)))
    assert (exported.rows, exported.path, exported.unit) == (2000, str(out), "1")
    written = pd.read_parquet(out)
    source = pd.read_csv(btc_2000)
    assert len(written) == 2000 and written["close"].tolist() == source["close"].tolist()

    hours = ws.data_resample(DataResampleRequest(market="KRW-BTC", from_unit="1", to_unit="60"))
    assert (hours.source_rows, hours.written, hours.new) == (2000, 34, 34)
    assert strict(hours) == {
        "market": "KRW-BTC",
        "from_unit": "1",
        "to_unit": "60",
        "source_rows": 2000,
        "written": 34,
        "new": 34,
    }
    units = {(s.unit, s.rows) for s in ws.data_status(DataStatusRequest()).root}
    assert units == {("1", 2000), ("60", 34)}


def test_export_and_resample_refusals_say_what_to_change(
    ws: Workstation, btc_2000: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="export writes .csv or .parquet") as suffix:
        ws.data_export(DataExportRequest(market="KRW-BTC", out=str(tmp_path / "btc.xlsx")))
    assert status_of(suffix.value) == 400
    with pytest.raises(ServiceError, match="relative path"):
        ws.data_export(DataExportRequest(market="KRW-BTC", out="btc.csv"))
    with pytest.raises(DataError, match="no KRW-ETH unit 1 candles"):
        ws.data_export(DataExportRequest(market="KRW-ETH", out=str(tmp_path / "eth.csv")))
    assert not (tmp_path / "eth.csv").exists()
    with pytest.raises(DataError, match="cannot resample unit 15 into unit 10"):
        ws.data_resample(DataResampleRequest(market="KRW-BTC", from_unit="15", to_unit="10"))


# --------------------------------------------------------------------------- fetch


def test_fetch_answers_per_market_reports_progress_and_a_failed_market_with_a_hint(
    ws: Workstation, monkeypatch: pytest.MonkeyPatch
) -> None:
    candles = load_csv_candles(DATA / "KRW-BTC_1m.csv", "KRW-BTC")
    day = candles[candles["ts"] < pd.Timestamp("2025-09-02", tz="UTC")]
    seen: list[FetchProgress] = []
    with FakeUpbit(day, rate_limit=None).run_in_thread() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        request = DataFetchRequest(
            markets=["KRW-NOPE", "KRW-BTC"],
            since=datetime(2025, 9, 1),  # naive: UTC
            until=datetime(2025, 9, 2, tzinfo=UTC),
        )
        with fetch_progress(seen.append):
            answer = ws.data_fetch(request)
    nope, btc = answer.markets
    assert nope.market == "KRW-NOPE" and nope.error is not None and "KRW-NOPE" in nope.error
    assert btc.error is None and btc.candles == btc.new == len(day)
    assert btc.since == datetime(2025, 9, 1, tzinfo=UTC)
    assert answer.error is not None and answer.error.startswith("1 of 2 markets failed (KRW-NOPE)")
    assert answer.hint is not None and "other markets were fetched" in answer.hint
    assert answer.stopped is None and answer.new == len(day)
    assert seen and seen[-1].markets == 2 and seen[-1].candles == len(day)
    assert seen[-1].chunks_done == btc.requests_done
    [stored] = ws.data_status(DataStatusRequest()).root
    assert stored.rows == len(day)
    strict(answer)


def test_fetch_refuses_a_future_since_swapped_times_and_no_market(ws: Workstation) -> None:
    with pytest.raises(ServiceError, match="is in the future") as future:
        ws.data_fetch(DataFetchRequest(markets=["KRW-BTC"], since=datetime(2099, 1, 1)))
    assert future.value.hint is not None and "past UTC time" in future.value.hint
    with pytest.raises(ServiceError, match="is not after since") as swapped:
        ws.data_fetch(
            DataFetchRequest(
                markets=["KRW-BTC"], since=datetime(2025, 9, 2), until=datetime(2025, 9, 1)
            )
        )
    assert swapped.value.hint == "swap them"
    with pytest.raises(ServiceError, match="no market to fetch"):
        ws.data_fetch(DataFetchRequest(since=datetime(2025, 9, 1)))
    with pytest.raises(ValueError, match="not an Upbit market code"):
        ws.data_fetch(DataFetchRequest(markets=["BTC"], since=datetime(2025, 9, 1)))
    with pytest.raises(ValidationError, match="concurrency"):
        DataFetchRequest(markets=["KRW-BTC"], since=datetime(2025, 9, 1), concurrency=17)


# --------------------------------------------------------------------------- features


def test_features_build_writes_a_feature_file_of_the_stored_candles(
    ws: Workstation, btc_2000: Path, tmp_path: Path
) -> None:
    from engine.research.features import DEFAULT_SPEC

    out = tmp_path / "features" / "btc.parquet"
    built = ws.features_build(FeaturesBuildRequest(market="KRW-BTC", out=str(out)))
    table = pd.read_parquet(out)
    assert built.path == str(out) and built.rows == len(table) > 0
    assert built.rows + built.dropped == 2000 and built.columns == len(table.columns) - 1
    assert built.spec_hash == DEFAULT_SPEC.hash()
    assert built.first == table["ts"].iloc[0].to_pydatetime()
    strict(built)

    with pytest.raises(ValueError, match="must end in .parquet"):
        ws.features_build(FeaturesBuildRequest(market="KRW-BTC", out=str(tmp_path / "f.csv")))
    with pytest.raises(ValueError, match="no KRW-ETH unit 1 candles in the store"):
        ws.features_build(FeaturesBuildRequest(market="KRW-ETH", out=str(out)))


def test_features_list_takes_a_spec_inline_or_from_a_file_and_measures_on_stored_candles(
    ws: Workstation, tmp_path: Path
) -> None:
    spec = {"features": [{"kind": "log_return", "lags": [1, 5]}, {"kind": "rsi"}], "max_gap": None}
    inline = ws.features_list(FeaturesListRequest(spec=spec))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    from_file = ws.features_list(FeaturesListRequest(spec_file=str(path)))
    assert inline == from_file
    assert [c.kind for c in inline.columns] == ["log_return", "log_return", "rsi"]
    assert inline.spec.max_gap is None and all(c.measured is None for c in inline.columns)
    assert {k.kind for k in inline.kinds} >= {"log_return", "rsi", "macd"}

    # 2000 stored candles are enough to measure the default spec's warm-up by cutting history
    csv = shared_file(tmp_path, "KRW-BTC_1m.csv", 2000)
    ws.data_import(DataImportRequest(path=str(csv), market="KRW-BTC", unit="1"))
    measured = ws.features_list(FeaturesListRequest(market="KRW-BTC"))
    assert all(c.measured is not None and c.measured <= c.memory for c in measured.columns)
    strict(measured)

    with pytest.raises(ServiceError, match="not both"):
        ws.features_list(FeaturesListRequest(spec=spec, spec_file=str(path)))
    with pytest.raises(ValueError, match="does not exist"):
        ws.features_list(FeaturesListRequest(spec_file=str(tmp_path / "none.json")))
    with pytest.raises(ServiceError, match="relative path"):
        ws.features_list(FeaturesListRequest(spec_file="spec.json"))


# --------------------------------------------------------------------------- store upkeep


def test_store_check_finds_leftovers_and_store_fix_removes_them_with_the_store_open(
    ws: Workstation, home: Path, btc_2000: Path
) -> None:
    clean = ws.store_check(StoreCheckRequest())
    assert clean.problems == 0 and clean.home == str(home) and clean.database is not None
    part = home / "artifacts" / "leftover.tar.part"
    part.parent.mkdir(exist_ok=True)
    part.write_bytes(b"x" * 100)
    os.chmod(part, 0o600)
    found = ws.store_check(StoreCheckRequest())
    assert found.problems == 1 and part.exists()
    [finding] = found.findings
    assert finding.path == "artifacts/leftover.tar.part" and finding.size == 100
    assert finding.fixable and not finding.fixed
    # the store is open in this Workstation (the import): no compaction is due, so it fixes
    fixed = ws.store_fix(StoreCheckRequest())
    assert fixed.problems == 0 and fixed.findings[0].fixed and not part.exists()
    assert ws.data_status(DataStatusRequest()).root[0].rows == 2000  # still usable
    strict(fixed)
