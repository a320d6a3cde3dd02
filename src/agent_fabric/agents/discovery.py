"""Discovery: find agent packages in the agents directories and record the valid ones.

A package is a folder directly inside an agents directory holding a `.env.discovery` file
(agents/manifest.py). A scan runs at start-up, every AGENTS_RESCAN_SECONDS, and on
`POST /api/v1/agents/discover`. A broken package is reported with every problem (in the scan
report the API returns, and in the log), never stops the scan, and is never recorded. A valid
one becomes a catalogue row in `discovered`, ready to register; a catalogue row whose package
left the disk (or broke) is dropped. Registered agents are never touched by a scan.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from agent_fabric.agents.manifest import DISCOVERY_FILE, Manifest, Problem, read_manifest
from agent_fabric.agents.registry import AgentRecord, AgentRegistry
from agent_fabric.agents.states import AgentStatus

log = logging.getLogger(__name__)

SCANNER = "system:discovery"


@dataclass
class PackageReport:
    path: Path
    status: str  # "discovered" (new), "known" (already in the catalogue or registered), "broken"
    name: str | None = None
    version: str | None = None
    agent_id: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "status": self.status,
            "name": self.name,
            "version": self.version,
            "agent_id": self.agent_id,
            "problems": [p.view() for p in self.problems],
        }


@dataclass
class ScanReport:
    at: datetime
    dirs: list[Path]
    packages: list[PackageReport]
    forgotten: list[str] = field(default_factory=list)  # catalogue rows dropped (package gone)

    @property
    def broken(self) -> list[PackageReport]:
        return [p for p in self.packages if p.status == "broken"]

    def view(self) -> dict[str, Any]:
        return {
            "scanned_at": self.at,
            "dirs": [str(d) for d in self.dirs],
            "packages": [p.view() for p in self.packages],
            "broken": len(self.broken),
            "forgotten": self.forgotten,
        }


def find_packages(dirs: list[Path]) -> list[Path]:
    """Folders directly inside each agents directory that hold a .env.discovery file, sorted."""
    found: list[Path] = []
    for root in dirs:
        if not root.is_dir():
            continue
        found += sorted(p.resolve() for p in root.iterdir() if p.is_dir() and (p / DISCOVERY_FILE).is_file())
    return found


def read_packages(dirs: list[Path], fabric_version: str) -> tuple[list[Manifest], list[PackageReport]]:
    """Every package read and validated; two packages naming one name and version are both broken."""
    manifests: list[Manifest] = []
    reports: list[PackageReport] = []
    for path in find_packages(dirs):
        manifest, problems = read_manifest(path, fabric_version)
        if manifest is None:
            reports.append(PackageReport(path, "broken", problems=problems))
        else:
            manifests.append(manifest)
    by_key: dict[tuple[str, str], list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_key[(m.name, m.version)].append(m)
    valid: list[Manifest] = []
    for (name, version), group in by_key.items():
        if len(group) == 1:
            valid.append(group[0])
            continue
        for m in group:
            others = ", ".join(str(o.path) for o in group if o is not m)
            problem = Problem("AGENT_NAME", f"{name} {version} is also declared by the package at {others}")
            reports.append(PackageReport(m.path, "broken", name, version, problems=[problem]))
    return valid, reports


class Discovery:
    def __init__(self, registry: AgentRegistry, dirs: list[Path], fabric_version: str) -> None:
        self._registry = registry
        self._dirs = dirs
        self._fabric_version = fabric_version
        self._lock = asyncio.Lock()  # the start-up scan, the periodic one and the API's never overlap
        self.last_report: ScanReport | None = None

    @property
    def dirs(self) -> list[Path]:
        return list(self._dirs)

    async def scan(self) -> ScanReport:
        async with self._lock:
            report = await self._scan()
        self.last_report = report
        for broken in report.broken:
            log.warning(
                "agent package refused",
                extra={"path": str(broken.path), "problems": [f"{p.field}: {p.message}" for p in broken.problems]},
            )
        return report

    async def _scan(self) -> ScanReport:
        # Reading the disk is blocking work; keep it off the event loop.
        valid, reports = await asyncio.to_thread(read_packages, self._dirs, self._fabric_version)
        catalogue, _ = await self._registry.list_agents(
            tenant_id=None, status=AgentStatus.DISCOVERED.value, limit=100_000
        )
        kept: set[str] = set()
        for manifest in valid:
            report = await self._record(manifest, catalogue)
            reports.append(report)
            if report.agent_id and report.status != "broken":
                kept.add(report.agent_id)
        forgotten = []
        scanned = [d.resolve() for d in self._dirs]
        for row in catalogue:
            under_scan = row.package_path is not None and any(row.package_path.is_relative_to(d) for d in scanned)
            if row.id not in kept and under_scan:
                reason = f"package at {row.package_path} is gone or broken"
                if await self._registry.forget_discovered(row.id, reason, SCANNER):
                    forgotten.append(row.id)
        reports.sort(key=lambda r: str(r.path))
        return ScanReport(datetime.now(UTC), list(self._dirs), reports, forgotten)

    async def _record(self, manifest: Manifest, catalogue: list[AgentRecord]) -> PackageReport:
        report = PackageReport(manifest.path, "known", manifest.name, manifest.version)
        same = await self._registry.with_package(manifest.name, manifest.version)
        elsewhere = [a for a in same if a.package_path is not None and a.package_path != manifest.path]
        if elsewhere:
            first = elsewhere[0]
            report.status = "broken"
            report.problems.append(
                Problem(
                    "AGENT_VERSION",
                    f"{manifest.name} {manifest.version} is already known from the package at {first.package_path} "
                    f"(agent {first.id}); give this package another version",
                )
            )
            return report
        listed = next((a for a in catalogue if a.name == manifest.name and a.version == manifest.version), None)
        if listed is not None:
            report.agent_id = listed.id
            if _differs(listed, manifest):
                await self._registry.refresh_discovered(listed.id, manifest)
            return report
        try:
            record = await self._registry.record_discovered(manifest, SCANNER)
        except IntegrityError:  # another replica recorded it a moment ago
            return report
        report.status, report.agent_id = "discovered", record.id
        log.info("agent package discovered", extra={"agent_id": record.id, "path": str(manifest.path)})
        return report


def _differs(record: AgentRecord, manifest: Manifest) -> bool:
    return record.manifest != manifest.values
