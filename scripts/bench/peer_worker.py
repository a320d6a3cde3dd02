"""A peer's worker as a process of its own (as `agent-fabric serve` is one), and its CPU time."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def worker_process(
    name: str, argv: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` from the repository root (so `scripts.bench.*` imports) until the block ends;
    its output goes to `log_path`, whose tail is in the error if the process dies early."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
        if proc.poll() is not None:
            raise RuntimeError(f"{name} worker exited with {proc.returncode}:\n{tail(log_path)}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def warmed_run(measure: Callable[[int], Awaitable[dict[str, float]]], n: int, pid: int) -> dict[str, float]:
    """A warm-up of up to 2,000 tasks (as the fabric's; it also waits for the worker to be up),
    then `n` measured, with the worker's CPU time per task as `cpu_ms`."""
    await measure(min(2000, n))
    cpu = tree_cpu_seconds(pid)
    result = await measure(n)
    result["cpu_ms"] = (tree_cpu_seconds(pid) - cpu) / n * 1000
    return result


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (a worker that forks its pool)."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total
