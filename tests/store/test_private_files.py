"""Everything under `$UPQUANT_HOME` is private, whatever the umask it is run with: directories
0700, files 0600 (the store, its WAL, artifacts, the cache, checkpoints, the home itself)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.live.inference import load_champion
from engine.training.train import train_model
from store.db import connect
from store.registry import list_runs
from tests.tui.test_cli import upquant

TINY_TORCH = {"epochs": 3, "window": 8, "hidden": 8, "layers": 1, "device": "cpu"}


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _loose(root: Path) -> list[str]:
    """Every path under `root` (and `root` itself) that group or others may use."""
    paths = [root, *root.rglob("*")]
    return sorted(
        f"{p.relative_to(root.parent)} {stat.filemode(p.lstat().st_mode)}"
        for p in paths
        if p.lstat().st_mode & 0o077
    )


@pytest.mark.slow
def test_a_realistic_cycle_under_umask_022_leaves_nothing_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # a home made by hand (or an older upquant) is made private too
    csv = Path(__file__).resolve().parents[3] / "shared" / "data" / "upbit" / "KRW-BTC_1m.csv"
    if not csv.exists():
        pytest.skip(f"shared data {csv} is not present")
    small = tmp_path / "btc.csv"
    small.write_text("".join(csv.open().readlines()[:3001]))

    for args in (
        ("data", "import", str(small), "--market", "KRW-BTC", "--unit", "1"),
        ("train", "xgboost", "KRW-BTC", "--n-estimators", "10"),
        ("models", "show", "xgboost-KRW-BTC-1"),  # loads it: the cache is filled
    ):
        result = upquant(home, *args)
        assert result.returncode == 0, (args, result.stderr)
    assert (home / "cache").is_dir() and any((home / "cache").iterdir())

    # a torch run interrupted after its first epoch keeps its checkpoint under runs/; the
    # open store keeps a WAL of what it wrote since
    monkeypatch.setenv("UPQUANT_HOME", str(home))
    os.umask(0o022)
    con = connect()

    def stop(progress) -> None:
        if progress.phase == "epoch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(con, "lstm", "KRW-BTC", "1", params=TINY_TORCH, progress=stop)
    run = list_runs(con, 1)[0]
    assert run.status == "interrupted" and run.checkpoint and Path(run.checkpoint).exists()
    assert load_champion(con, "KRW-BTC", "1")[0] is not None
    assert (home / "upquant.duckdb.wal").exists()
    try:
        assert _loose(home) == []
    finally:
        con.close()
    assert _loose(home) == []
