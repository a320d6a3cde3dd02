"""Control groups for agent processes: memory, CPU and process-count limits the kernel enforces.

Detected at run time, in this order:
- cgroup v2 (production nodes): the unified hierarchy at /sys/fs/cgroup with the memory, cpu and
  pids controllers available; limits are memory.max (swap off: memory.swap.max 0), cpu.max, pids.max.
- cgroup v1: writable memory, cpu and pids hierarchies under /sys/fs/cgroup/<controller>;
  limits are memory.limit_in_bytes (+ memsw when the kernel accounts swap), cpu.cfs_quota_us
  over cpu.cfs_period_us, pids.max.
- neither: None, and the caller falls back to rlimits (isolation.py says what those cover).

Groups are made under the fabric's own group of each controller (what a container or a systemd
delegation hands the fabric), one per agent process: `<own>/agent-fabric/<agent>/<n>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_cores: float
    max_pids: int


@dataclass(frozen=True)
class Group:
    """One process's control group: the directories its pid is written into (one per controller on v1)."""

    version: int
    dirs: tuple[Path, ...]

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def memory_events(self) -> dict[str, int]:
        """OOM and limit-hit counters: {"oom_kill": n, "max": n} (v2) or {"oom_kill": n, "failcnt": n} (v1)."""
        counts: dict[str, int] = {}
        for d in self.dirs:
            path = d / ("memory.events" if self.version == 2 else "memory.oom_control")
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if value.strip().isdigit():
                        counts[key] = int(value)
            if self.version == 1:
                with contextlib.suppress(OSError, ValueError):
                    counts["failcnt"] = int((d / "memory.failcnt").read_text())
        return counts

    def hit_memory_limit(self) -> bool:
        events = self.memory_events()
        return events.get("oom_kill", 0) > 0

    def cpu_throttled(self) -> int:
        """How many scheduler periods the group was throttled in (the CPU limit at work)."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                for line in (d / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key in ("nr_throttled",):
                        return int(value)
        return 0

    def remove(self) -> None:
        """Remove the directories (the kernel refuses while a process is inside: retry briefly)."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    _kill_members(d)
                    time.sleep(0.02)


def _kill_members(d: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (d / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), 9)


class CgroupManager:
    """Creates and removes per-process groups on whichever hierarchy this host offers."""

    def __init__(self, version: int, bases: tuple[Path, ...]) -> None:
        self.version = version
        self._bases = bases

    @property
    def description(self) -> str:
        return f"cgroup v{self.version} ({', '.join(str(b) for b in self._bases)})"

    def remove_agent(self, agent_id: str) -> None:
        """Remove the agent's own directories (its process groups are gone by now)."""
        for base in self._bases:
            with contextlib.suppress(OSError):
                (base / _SAFE.sub("_", agent_id)).rmdir()

    def create(self, agent_id: str, name: str, limits: Limits) -> Group:
        dirs = []
        for base in self._bases:
            d = base / _SAFE.sub("_", agent_id) / _SAFE.sub("_", name)
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
        group = Group(self.version, tuple(dirs))
        try:
            (self._limit_v2 if self.version == 2 else self._limit_v1)(group, limits)
        except OSError:
            group.remove()
            raise
        return group

    def _limit_v2(self, group: Group, limits: Limits) -> None:
        d = group.dirs[0]
        (d / "memory.max").write_text(str(limits.memory_bytes))
        with contextlib.suppress(OSError):  # no swap accounting on this kernel: nothing to turn off
            (d / "memory.swap.max").write_text("0")
        (d / "cpu.max").write_text(f"{int(limits.cpu_cores * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        (d / "pids.max").write_text(str(limits.max_pids))

    def _limit_v1(self, group: Group, limits: Limits) -> None:
        memory, cpu, pids = group.dirs
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        with contextlib.suppress(OSError):  # memsw exists only with swap accounting on
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(int(limits.cpu_cores * CPU_PERIOD_US)))
        (pids / "pids.max").write_text(str(limits.max_pids))


def detect(prefix: str = "agent-fabric") -> CgroupManager | None:
    """The cgroup manager this host allows, or None (then rlimits are all there is)."""
    own = _own_groups()
    if (ROOT / "cgroup.controllers").exists():
        available = set((ROOT / "cgroup.controllers").read_text().split())
        if {"memory", "cpu", "pids"} <= available:
            base = ROOT / own.get("", "/").lstrip("/") / prefix
            if _usable_v2(base):
                return CgroupManager(2, (base,))
    bases = tuple(ROOT / c / own.get(c, "/").lstrip("/") / prefix for c in V1_CONTROLLERS)
    if all(_writable(ROOT / c) for c in V1_CONTROLLERS) and all(_makeable(b) for b in bases):
        return CgroupManager(1, bases)
    return None


def _own_groups() -> dict[str, str]:
    """Controller -> this process's group path, from /proc/self/cgroup ("" is the v2 group)."""
    groups: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                groups[controller] = path
    return groups


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _makeable(base: Path) -> bool:
    try:
        base.mkdir(parents=True, exist_ok=True)
        return True
    except OSError:
        return False


def _usable_v2(base: Path) -> bool:
    """v2 needs the controllers enabled for children of `base`'s parent, and `base` itself."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        for parent in (base.parent, base):
            control = parent / "cgroup.subtree_control"
            enabled = set(control.read_text().split())
            missing = {"memory", "cpu", "pids"} - enabled
            if missing:
                control.write_text(" ".join(f"+{c}" for c in sorted(missing)))
        return True
    except OSError as exc:
        log.info("cgroup v2 present but not delegated to the fabric", extra={"error": str(exc)})
        return False
