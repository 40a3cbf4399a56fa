"""Benchmark the server's prediction API and print one table (measured, target, ok).

On a temporary store with the real candles of ../shared/data (KRW-BTC and KRW-ETH 1 minute)
and an XGBoost champion trained on them:

- `predict` of the cached champion over HTTP, 32 concurrent clients on one keep-alive
  aiohttp session: requests/s, p50/p99; idle, and while a training job runs;
- `batch-predict` of 200 markets at one ts (the last 2,000 real candles of BTC and ETH
  re-labelled as 200 market codes: there are only two real markets), p50/p99 of uncached
  calls (a new ts each call) and of repeated ones (the cache);
- `upquant models list --json` routed through the server vs in process (UPQUANT_SERVER=off),
  beside the CLI's own start (`upquant --help`), which both pay.

The server is `upquant serve --port 0` when that command exists; until then this script
hosts the prediction routes (engine/server/predict_routes.py) over an in-process Workstation
in a separate process (`--host-routes`), and the table says so. The training load is a job
started through the `train_start` operation when the server offers it, else `upquant train`
in a second store (the same CPU contention, not the same process), said in the table.

    .venv/bin/python scripts/bench_server.py [--requests 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchtable import Row, print_table

ROOT = Path(__file__).resolve().parents[1]
UPQUANT = str(Path(sys.executable).with_name("upquant"))
DATA = ROOT.parent / "shared" / "data" / "upbit"
MARKETS = 200
CLIENTS = 32
QUIET: list[str] = []  # ["--quiet"] with --quiet: no log line per request


def candles(name: str, market: str, rows: int | None = None):  # type: ignore[no-untyped-def]
    import pandas as pd

    raw = pd.read_csv(DATA / name)
    raw = raw.tail(rows) if rows else raw
    frame = pd.DataFrame(
        {"market": market, "unit": "1", "ts": pd.to_datetime(raw["timestamp"], utc=True)}
    )
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = raw[col].to_numpy("float64")
    frame["value"] = float("nan")
    return frame


def prepare(home: Path, *, many: bool, trees: int) -> None:
    """A store under `home`: real BTC/ETH candles, with `many` the 200 re-labelled markets,
    and an XGBoost champion of KRW-BTC 1 minute."""
    os.environ["UPQUANT_HOME"] = str(home)
    from engine.training.train import train_model
    from store.candles import upsert_candles
    from store.db import connect

    con = connect()
    btc, eth = candles("KRW-BTC_1m.csv", "KRW-BTC"), candles("KRW-ETH_1m.csv", "KRW-ETH")
    upsert_candles(con, btc)
    upsert_candles(con, eth)
    if many:
        for i in range(MARKETS):
            source = btc if i % 2 == 0 else eth
            upsert_candles(con, source.tail(2000).assign(market=f"KRW-M{i:03d}"))
    train_model(con, "xgboost", "KRW-BTC", "1", params={"n_estimators": trees, "device": "cpu"})
    con.close()


def host_routes(home: Path) -> None:
    """The prediction routes over an in-process Workstation, until killed (fallback server)."""
    os.environ["UPQUANT_HOME"] = str(home)
    from aiohttp import web

    from engine.server.predict_routes import add_predict_routes
    from engine.service import Workstation

    async def serve() -> None:
        app = web.Application()
        add_predict_routes(app, Workstation())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        (home / "bench-url").write_text(f"http://127.0.0.1:{port}")
        await asyncio.Event().wait()

    asyncio.run(serve())


def has_serve() -> bool:
    return (
        subprocess.run([UPQUANT, "serve", "--help"], check=False, capture_output=True).returncode
        == 0
    )


def start_server(home: Path, serve: bool) -> tuple[subprocess.Popen[bytes], str, str | None]:
    env = {**os.environ, "UPQUANT_HOME": str(home)}
    if serve:
        proc = subprocess.Popen(
            [UPQUANT, "serve", "--port", "0", *QUIET],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marker = home / "server.json"
    else:
        proc = subprocess.Popen([sys.executable, __file__, "--host-routes", str(home)], env=env)
        marker = home / "bench-url"
    for _ in range(600):
        if marker.exists() and marker.stat().st_size:
            break
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.1)
    else:
        raise SystemExit("the server did not start within 60 s")
    if serve:
        info = json.loads(marker.read_text())
        token_file = home / "api-token"
        return (
            proc,
            str(info["url"]).rstrip("/"),
            token_file.read_text().strip() if token_file.exists() else None,
        )
    return proc, marker.read_text().strip(), None


async def load(
    url: str, token: str | None, body: dict, clients: int, per_client: int
) -> tuple[list[float], float]:
    """`clients` concurrent clients, each sending `per_client` requests one after another on
    one shared keep-alive session: latencies (ms) and requests/s. One warm request and one
    untimed round (the connections opened) come first."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.post(url, json=body) as warm:  # load and warm the model
            if warm.status != 200:
                raise SystemExit(f"{url}: {warm.status} {await warm.text()}")

        async def one() -> None:
            async with session.post(url, json=body) as response:
                await response.read()

        # one untimed round: every client's keep-alive connection opened first
        await asyncio.gather(*(one() for _ in range(clients)))
        # this process trained the model (prepare): a full collection walking that heap would
        # stall all clients at once and be measured as the server's latency
        gc.collect()
        gc.freeze()

        async def client() -> None:
            for _ in range(per_client):
                started = time.perf_counter()
                async with session.post(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{url}: {response.status}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, len(latencies) / elapsed


async def sequential(url: str, token: str | None, bodies: list[dict]) -> list[float]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for body in bodies:
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"{url}: {response.status} {await response.text()}")
            out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="Requests per client.")
    parser.add_argument("--quick", action="store_true", help="Fewer requests and trees.")
    parser.add_argument(
        "--quiet", action="store_true", help="Serve with --quiet (no access log line per request)."
    )
    parser.add_argument("--host-routes", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quiet:
        QUIET.append("--quiet")
    if args.host_routes:
        host_routes(args.host_routes)
        return
    per_client = 30 if args.quick else args.requests
    trees = 50 if args.quick else 200
    serve = has_serve()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        home, other = Path(tmp) / "home", Path(tmp) / "train-home"
        home.mkdir()
        other.mkdir()
        prepare(home, many=True, trees=trees)
        proc, base, token = start_server(home, serve)
        try:
            model = "xgboost-KRW-BTC-1@champion"
            url = f"{base}/api/v1/ml-models/{model}"
            idle, rps = asyncio.run(
                load(f"{url}/predict", token, {"market": "KRW-BTC"}, CLIENTS, per_client)
            )
            p99_idle = pct(idle, 99)
            rows.append(("predict, 32 clients, idle: requests/s", f"{rps:,.0f}", "-", None))
            rows.append(("predict, idle: p50", f"{pct(idle, 50):.2f} ms", "-", None))
            rows.append(("predict, idle: p99", f"{p99_idle:.2f} ms", "<= 10 ms", p99_idle <= 10))

            # a training job during the same load
            trainer = None
            job = None
            if serve and _offers(base, token, "train_start"):
                how = "train_start: xgboost, 40 tuning trials"
                job = _op(
                    base,
                    token,
                    "train_start",
                    {
                        "kind": "xgboost",
                        "market": "KRW-BTC",
                        "unit": "1",
                        "n_estimators": 3000,
                        "device": "cpu",
                        "trials": 40,  # one fit stops early within seconds; a tuning runs on
                    },
                )["run"]
                time.sleep(3)  # the worker spawned and into the boosting
            else:
                how = "upquant train in a second store"
                os.environ["UPQUANT_HOME"] = str(other)
                shutil.copytree(DATA, other / "csv")
                env = {**os.environ, "UPQUANT_HOME": str(other)}
                subprocess.run(
                    [
                        UPQUANT,
                        "data",
                        "import",
                        str(other / "csv" / "KRW-BTC_1m.csv"),
                        "--market",
                        "KRW-BTC",
                        "--unit",
                        "1",
                    ],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                trainer = subprocess.Popen(
                    [UPQUANT, "train", "xgboost", "KRW-BTC", "--n-estimators", "3000"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(3)  # past its data loading, into the boosting
            busy, busy_rps = asyncio.run(
                load(f"{url}/predict", token, {"market": "KRW-BTC"}, CLIENTS, per_client)
            )
            if job is not None:  # stopped, so the rows below are measured idle again
                still = _op(base, token, "train_status", {"run": job})["status"] == "running"
                _op(base, token, "train_cancel", {"run": job})
            else:
                still = trainer is not None and trainer.poll() is None
            if trainer is not None:
                trainer.terminate()
                trainer.wait()
            p99_busy = pct(busy, 99)
            rows.append(
                (f"predict, during training ({how}): requests/s", f"{busy_rps:,.0f}", "-", None)
            )
            rows.append(
                (
                    "predict, during training: p99" + ("" if still else " (job ended early)"),
                    f"{p99_busy:.2f} ms",
                    f"<= {2 * p99_idle:.2f} ms (2x idle)",
                    p99_busy <= 2 * p99_idle,
                )
            )

            # 200 markets at one ts: uncached (a new ts each call) and repeated (cached)
            import pandas as pd

            markets = [f"KRW-M{i:03d}" for i in range(MARKETS)]
            last = pd.Timestamp(candles("KRW-BTC_1m.csv", "x", 1)["ts"].iloc[-1])
            calls = 10 if args.quick else 30
            fresh = [
                {"markets": markets, "ts": (last - pd.Timedelta(minutes=i)).isoformat()}
                for i in range(calls)
            ]
            cold = asyncio.run(sequential(f"{url}/batch-predict", token, fresh))
            warm = asyncio.run(sequential(f"{url}/batch-predict", token, [fresh[0]] * calls))
            rows.append(
                (
                    "batch-predict 200 markets (re-labelled BTC/ETH), uncached: p50",
                    f"{pct(cold, 50):.1f} ms",
                    "-",
                    None,
                )
            )
            rows.append(
                (
                    "batch-predict 200 markets, uncached: p99",
                    f"{pct(cold, 99):.1f} ms",
                    "<= 200 ms",
                    pct(cold, 99) <= 200,
                )
            )
            rows.append(
                (
                    "batch-predict 200 markets, cached: p50 / p99",
                    f"{pct(warm, 50):.1f} / {pct(warm, 99):.1f} ms",
                    "-",
                    None,
                )
            )
        finally:
            proc.terminate()
            proc.wait()

        rows.extend(cli_latency(home, serve))
    server = (
        "upquant serve --port 0"
        if serve
        else "prediction routes in a separate process (upquant serve not present yet)"
    )
    print_table(
        rows,
        f"server: {server}{' --quiet' if QUIET else ''}; {CLIENTS} clients x {per_client}"
        f" requests; {os.cpu_count()} CPUs",
    )


def _op(base: str, token: str | None, name: str, body: dict) -> dict:
    """POST one operation and return its JSON answer (SystemExit on an error answer)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/v1/ops/{name}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{name}: {exc.code} {exc.read().decode()}") from None


def _offers(base: str, token: str | None, name: str) -> bool:
    import urllib.request

    request = urllib.request.Request(
        f"{base}/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return f"/ops/{name}" in response.read().decode()
    except OSError:
        return False


def cli_latency(home: Path, serve: bool, runs: int = 10) -> list[Row]:
    """`upquant models list --json` through the server minus in process (UPQUANT_SERVER=off,
    the store opened by the command itself), medians of `runs`; and the CLI's own start
    (`upquant --help`: interpreter, imports, typer), which both pay and which dominates."""
    name = "CLI via server - in process (models list --json)"
    if not (serve and (ROOT / "tui" / "client.py").exists()):
        return [(name, "not measured: no server client yet", "<= 50 ms", None)]

    def median(args: list[str], env: dict[str, str]) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([UPQUANT, *args], env=env, capture_output=True, check=True)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    env = {**os.environ, "UPQUANT_HOME": str(home)}
    env.pop("UPQUANT_SERVER", None)
    listing = ["models", "list", "--json"]
    proc, _, _ = start_server(home, True)
    try:
        # while the server owns the store, a command that opened it itself would fail (DuckDB's
        # lock): this one succeeding proves it went through the server
        through = median(listing, env)
    finally:
        proc.terminate()
        proc.wait()
    local = median(listing, {**env, "UPQUANT_SERVER": "off"})
    start = median(["--help"], env)
    added = through - local
    return [
        (
            name,
            f"{added:+.1f} ms ({through:.0f} vs {local:.0f} ms, median of {runs})",
            "<= 50 ms",
            added <= 50,
        ),
        ("CLI start alone (upquant --help), median", f"{start:.0f} ms", "-", None),
    ]


if __name__ == "__main__":
    main()
