"""A property-based run of the server's own OpenAPI document (schemathesis) against a real
`upquant serve` on 127.0.0.1 with a real store (candles, a trained model) and a replay
session running: every operation, with valid and invalid requests, answers no 5xx and an
answer its document describes (status and body); once with a read token, once with a write
token. Bounded: a few derandomized
examples per operation and mode, so it runs in seconds and the same way every time.

Each run fuzzes the operations of its own scope in depth: a read token is refused a write
operation before its request is read (403 whatever the body: one example per mode checks
that answer), and a write token calls a read operation as a read token does (one example per
mode), but for a read operation whose body can ask for a write (`evaluate`'s walk-forward).

The write run leaves out what destroys or reaches beyond the store: revoking tokens, deleting
models, store_fix, importing, fetching or streaming candles (a file, Upbit), and what writes
files at a path the request names (data_export, features_build)."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.openapi.checks import JsonSchemaError

from tests.e2e.servers import Server, Servers, store_with_candles
from tests.tui.test_cli import upquant

pytestmark = pytest.mark.slow

# per operation, generation mode and token (UPQUANT_FUZZ_EXAMPLES=200 for a deeper run by hand)
EXAMPLES = int(os.environ.get("UPQUANT_FUZZ_EXAMPLES", "8"))
NOT_IN_THE_WRITE_RUN = {
    "token_revoke", "model_delete", "delete_ml_models_id", "store_fix", "data_import",
    "data_fetch", "data_export", "features_build", "feed_start", "post_feeds",
}
# read operations whose request can make them write (a 403 for a read token): in depth in
# both runs
BODY_DECIDES_SCOPE = {"evaluate"}
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server over a store with real candles and one trained model; its read and write
    tokens."""
    root = tmp_path_factory.mktemp("fuzz")
    home = store_with_candles(root, rows=2000)
    trained = upquant(home, "train", "xgboost", "KRW-BTC", "--n-estimators", "10",
                      "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    started = Servers()
    try:
        server = started(home)
        read = server.ok("token_create", {"name": "fuzz-read", "scope": "read"})["secret"]
        # a replay session runs meanwhile: the live operations act on a real one
        server.ok("live_start", {"market": "KRW-BTC", "unit": "1", "offline": True})
        yield server, {"read": read, "write": server.token}
        # the server is still whole after the run: it answers, no request left a transaction
        # open (store check checkpoints the store, refused while one is), it stops cleanly
        assert server.ok("server_info", {})["pid"] == server.process.pid
        assert server.ok("store_check", {})["database"] is not None
        assert server.stop() == 0, server.output()
    finally:
        started.cleanup()


def _document(server: Server, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.url}/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return dict(json.load(answer))


def _fuzz(operation: Any, mode: schemathesis.GenerationMode, base_url: str,
          headers: dict[str, str], examples: int = EXAMPLES) -> str | None:
    """What the checks found for `operation` in `mode` (None: nothing)."""

    @settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body): nothing to ask
        return None
    except Exception as found:  # noqa: BLE001  a finding: named with the operation
        return f"{type(found).__name__}: {found}"[:3000]
    return None


@pytest.mark.parametrize("scope", ["read", "write"])
def test_every_operation_answers_within_its_document(
    served: tuple[Server, dict[str, str]], scope: str
) -> None:
    server, tokens = served
    token = tokens[scope]
    schema = schemathesis.openapi.from_dict(_document(server, token))
    headers = {"Authorization": f"Bearer {token}"}
    found: dict[str, str] = {}
    ran: list[str] = []
    deep_ran: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw
        name = raw.get("operationId", operation.label)
        if scope == "write" and name in NOT_IN_THE_WRITE_RUN:
            continue
        ran.append(name)
        own = raw.get("x-scope", "read") == scope
        deep = own or raw.get("x-operation", name) in BODY_DECIDES_SCOPE
        if deep:
            deep_ran.append(name)
        for mode in schemathesis.GenerationMode:
            finding = _fuzz(operation, mode, server.url, headers, EXAMPLES if deep else 1)
            if finding is not None:
                found[f"{name} ({mode.value})"] = finding
    assert len(ran) > 30 and "model_list" in ran and "train_start" in ran
    assert ("model_list" in deep_ran) == (scope == "read") and "evaluate" in deep_ran
    assert ("train_start" in deep_ran) == (scope == "write") and len(deep_ran) > 10
    assert not found, "\n\n".join(f"{name}: {text}" for name, text in found.items())


def test_the_checks_see_a_server_error_and_an_answer_off_its_schema(
    served: tuple[Server, dict[str, str]],
) -> None:
    """The run can fail: a 5xx, or a body its document does not describe, is a finding."""
    server, tokens = served
    schema = schemathesis.openapi.from_dict(_document(server, tokens["read"]))
    headers = {"Authorization": f"Bearer {tokens['read']}"}
    case = schema["/api/v1/ops/data_status"]["POST"].Case(body={})
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    case.validate_response(response, checks=CHECKS)  # the real answer passes

    response.status_code = 500
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(response, checks=CHECKS)
    assert any(isinstance(e, ServerError) for e in caught.value.exceptions)

    response.status_code = 200
    response.content = json.dumps([{"market": "KRW-BTC", "rows": "many"}]).encode()
    response.clear_cache()
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(response, checks=CHECKS)
    assert any(isinstance(e, JsonSchemaError) for e in caught.value.exceptions)
