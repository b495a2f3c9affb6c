"""Serving's interpreter tuning, in a child process: it is process-wide."""

from __future__ import annotations

import subprocess
import sys

from trio_ws.runtime.tuning import GC_THRESHOLDS, SWITCH_INTERVAL


def test_tuning_sets_the_gc_thresholds_and_the_switch_interval() -> None:
    script = (
        "import gc, sys\n"
        "from trio_ws.runtime.tuning import tune_gc_for_serving\n"
        "tune_gc_for_serving()\n"
        "print(gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count() > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.split("\n")[0] == f"{GC_THRESHOLDS} {SWITCH_INTERVAL} True"
