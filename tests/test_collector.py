"""The collector tuning ``serve`` applies once started (run in a child: freezing is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from genplane.collector import tune_after_startup
from genplane.settings import Settings
before = gc.get_threshold()
tune_after_startup(Settings(gc_young_threshold=int(sys.argv[1])))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(threshold: int) -> dict[str, list[int] | int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, list[int] | int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_tuning_freezes_start_up_and_widens_the_young_generation() -> None:
    seen = probe(12_345)
    before, after = seen["before"], seen["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert before != after == [12_345, 10, 100]
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000  # the imported modules, at least


def test_zero_keeps_pythons_defaults() -> None:
    seen = probe(0)
    assert seen["after"] == seen["before"] and seen["frozen"] == 0
