"""The Celery side of the peer benchmark: Redis as broker and result backend, an echo task.
Imported by the worker process (`celery -A scripts.bench.peers_celery_app worker`) and by the
load generator; it needs the bench extra (pip install -e '.[bench]')."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

ECHO = "bench.echo"
# The result backend publishes every stored result on a channel named like its key
# (celery-task-meta-<task id>); the load generator subscribes to the pattern.
RESULT_CHANNELS = "celery-task-meta-*"


def make_app(redis_url: str, *, results: bool) -> Celery:
    """`results`: the worker's app stores results in Redis. The load generator's app does not
    subscribe to each task's result channel on submit (Celery's `AsyncResult` way); it listens on
    the pattern once instead."""
    app = Celery("bench", broker=redis_url, backend=redis_url if results else None)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Acked after the task ran, as the fabric and taskiq ack after the result is stored.
        task_acks_late=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=ECHO)  # type: ignore[untyped-decorator]  # celery has no type hints
    def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return app


# The worker's; the load generator makes its own.
app = make_app(os.environ.get("BENCH_CELERY_REDIS_URL", "redis://127.0.0.1:6379/9"), results=True)
