"""The serve process's collector settings (heap.py), applied in a process of its own."""

from __future__ import annotations

import subprocess
import sys

from agent_fabric.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD


def test_settle_after_startup_freezes_the_heap_and_raises_the_young_threshold() -> None:
    code = (
        "import gc; from agent_fabric.heap import settle_after_startup; settle_after_startup(); "
        "print(gc.get_threshold(), gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)} True"
