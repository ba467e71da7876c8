"""What a run reports: its logger, artifacts on the run, the events automations match, its name."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from runtime.orchestration import local_log, log, orchestrated


def _in_prefect() -> bool:
    """Whether this process may be in a Prefect run: Prefect loaded. A command that runs no flow
    does not load it (runtime.orchestration.when_prefect_loads), so it is not imported to find no run."""
    return "prefect" in sys.modules and orchestrated()


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a Prefect run, the `rem` logger otherwise."""
    if _in_prefect():
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    return local_log()


def _artifact(create: str, **kwargs: Any):
    """prefect.artifacts.<create>(**kwargs) inside a Prefect run; None in-process or outside a run."""
    if not _in_prefect():
        return None
    import prefect.artifacts
    from prefect.exceptions import MissingContextError

    try:
        return getattr(prefect.artifacts, create)(**kwargs)
    except MissingContextError:
        return None


# The database the current flow works on (set by flows.backup.resolve_settings): its artifacts carry it.
current_db: ContextVar[str | None] = ContextVar("current_db", default=None)


def db_label(cfg) -> str:
    """The database's name, or where it is when it has none yet (no database at the path)."""
    import socket

    from rem.identity import derived_name

    return cfg.db_name or derived_name(cfg.db_path) or f"{socket.gethostname()}-{Path(cfg.db_path).name}"


_labeled: set = set()  # flow runs label_run has named in this process


def label_run(db: str) -> None:
    """Give the current flow run a name an operator can tell apart (`full-backup/orders-a
    2026-12-02T02:00Z`, not `huge-yak`) and the database's `db:` tag, which subflows and command-line
    runs otherwise lack; quietly nothing outside a flow run."""
    if not _in_prefect():
        return
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.id in _labeled:
        return  # a task resolving its settings again inside the same run names nothing twice
    run = context.flow_run
    _labeled.add(run.id)
    name = f"{context.flow.name}/{db} {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}"
    tags = sorted(set(run.tags or []) | {f"db:{db}"})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, name=name, tags=tags)
    except Exception as exc:  # a label is worth a warning, never a failed backup
        log.warning("could not name flow run %s (%s)", run.id, exc)


def artifact_key(key: str) -> str:
    """Artifact keys carry the database, so each database's latest backup, verify, ... stays its own."""
    import re

    db = current_db.get()
    return re.sub(r"[^a-z0-9-]+", "-", f"{key}-{db}".lower()) if db else key


def publish_report(key: str, markdown: str, description: str | None = None) -> None:
    """A markdown artifact on the run in the Prefect UI."""
    _artifact("create_markdown_artifact", key=artifact_key(key), markdown=markdown, description=description)


def publish_table(key: str, rows: list[dict] | Callable[[], list[dict]], description: str | None = None) -> None:
    """A table artifact on the run in the Prefect UI; rows may be a function, called only when there is
    a run to publish on (a listing costs S3 requests an in-process run would waste)."""
    if not _in_prefect():
        return
    _artifact("create_table_artifact", key=artifact_key(key), table=rows() if callable(rows) else rows,
              description=description)


def db_resource(cfg) -> dict[str, str]:
    """The Prefect resource events about one database carry: rem.db.<name>, with its host and path."""
    import socket

    name = db_label(cfg)
    return {"prefect.resource.id": f"rem.db.{name}", "prefect.resource.name": name,
            "rem.host": socket.gethostname(), "rem.db.path": str(cfg.db_path)}


def send_event(event: str, cfg, payload: dict[str, Any]) -> None:
    """A Prefect event about the database when a Prefect API is configured (automations match these)."""
    if not orchestrated():
        return
    from prefect.events import emit_event

    emit_event(event=event, resource=db_resource(cfg), payload=payload)
