"""What correlated logs and always-on trace ids cost per task (issue 17), in microseconds.

    python scripts/bench/telemetry_overhead.py

- a span from the ids-only tracer (tracing export off: real ids, nothing recorded) against
  OpenTelemetry's no-op tracer, which the fabric used before spans always had ids; a task makes two;
- a log record through the correlation filter and the JSON formatter, with and without bound
  fields (DEBUG task lines are off at the default INFO level: then only the level check is paid).
A benchmark, not a test; on a loaded machine numbers move by tens of percent.
"""

from __future__ import annotations

import logging
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from opentelemetry import trace  # noqa: E402

from agent_fabric.settings import TelemetrySettings  # noqa: E402
from agent_fabric.telemetry.log_context import CorrelationFilter, bound  # noqa: E402
from agent_fabric.telemetry.logging import JsonFormatter  # noqa: E402
from agent_fabric.telemetry.tracing import Tracing  # noqa: E402

N = 50_000


def per_call(fn: object) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6  # type: ignore[arg-type]


def span(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("run builtin", attributes={"agent_fabric.job_id": "j", "n": 1}):
        pass


def main() -> None:
    ids_only = Tracing(TelemetrySettings(otlp_endpoint=None)).tracer
    noop = trace.NoOpTracer()
    print(f"span, no-op tracer:        {per_call(lambda: span(noop)):6.1f} us")
    print(f"span, ids-only tracer:     {per_call(lambda: span(ids_only)):6.1f} us")

    record = logging.LogRecord("agent_fabric.x", logging.DEBUG, __file__, 1, "task started", None, None)
    filt, fmt = CorrelationFilter(), JsonFormatter()

    def emit() -> None:
        r = logging.makeLogRecord(record.__dict__)
        filt.filter(r)
        fmt.format(r)

    print(f"log line, nothing bound:   {per_call(emit):6.1f} us")
    with (
        bound(job_id="deploy-42", tenant_id="pod-7", agent="builtin", request_id="r" * 32),
        ids_only.start_as_current_span("x"),
    ):
        print(f"log line, all ids bound:   {per_call(emit):6.1f} us")


if __name__ == "__main__":
    main()
