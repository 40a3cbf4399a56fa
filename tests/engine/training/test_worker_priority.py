"""A job's worker yields the CPU to its owner (`UPQUANT_JOB_PRIORITY`): each case runs in a
fresh interpreter, since a lowered priority cannot be raised back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="scheduling policies are Linux's")

_APPLY = """
import json, os
from engine.training.worker import lower_priority
applied = lower_priority()
print(json.dumps([applied, os.sched_getscheduler(0), os.nice(0)]))
"""


def applied(priority: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "UPQUANT_JOB_PRIORITY"}
    if priority is not None:
        env["UPQUANT_JOB_PRIORITY"] = priority
    return subprocess.run(
        [sys.executable, "-c", _APPLY], env=env, capture_output=True, text=True, check=False
    )


def test_by_default_a_job_runs_only_on_spare_cpu() -> None:
    done = applied(None)
    assert json.loads(done.stdout) == ["idle", os.SCHED_IDLE, os.nice(0)], done.stderr


@pytest.mark.parametrize(("priority", "nice"), [("low", 10), ("normal", 0), (" Normal ", 0)])
def test_low_is_nice_10_and_normal_is_the_owners(priority: str, nice: int) -> None:
    done = applied(priority)
    assert json.loads(done.stdout) == [
        priority.strip().lower(),
        os.SCHED_OTHER,
        max(nice, os.nice(0)),
    ], done.stderr


def test_an_unknown_priority_is_refused_with_the_choices() -> None:
    done = applied("fast")
    assert done.returncode == 1
    assert "UPQUANT_JOB_PRIORITY='fast' is not one of idle, low, normal" in done.stderr
