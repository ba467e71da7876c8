"""Prefect when a Prefect API is configured; the same functions and retry policy in-process otherwise.

Prefect's ephemeral server takes 11-17 s to start here, and importing Prefect about 1 s, while
on-call types `rem backup create` by hand. So the decision is made once, at import: with a
Prefect API configured (PREFECT_API_URL in the environment or in the active Prefect profile, or
inside a flow run a worker started) `task` and `flow` are Prefect's own decorators and every run
appears in the UI; without one they are thin wrappers that run the function in-process and retry
it with exactly the policy the Prefect task would use.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("rem")


def prefect_api_url() -> str | None:
    """The Prefect API this process reports to, or None, found without importing Prefect."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    return (profiles.get("profiles", {}).get(active, {}) or {}).get("PREFECT_API_URL") or None


ORCHESTRATED = bool(prefect_api_url() or os.environ.get("PREFECT__FLOW_RUN_ID"))


class LocalTask:
    """A function plus its retry policy, run in-process (the stand-in for a Prefect task).

    `submit` runs it on a thread and returns a future, as Prefect's task runner does."""

    _pool = None

    def __init__(self, fn: Callable, name: str, retries: int, retry_delay_seconds: float):
        self.fn = fn
        self.name = name
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self.fn(*args, **kwargs)
            except Exception as exc:
                if attempt == self.retries or not is_retryable(exc):
                    raise
                log.warning("%s failed (%s); retry %d of %d in %ss", self.name, exc, attempt + 1, self.retries,
                            self.retry_delay_seconds)
                time.sleep(self.retry_delay_seconds)

    def submit(self, *args: Any, **kwargs: Any):
        if LocalTask._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            LocalTask._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rem-task")
        return LocalTask._pool.submit(self, *args, **kwargs)


def is_retryable(exc: BaseException) -> bool:
    """Errors a retry cannot fix fail at once: bad input, a held lock, a corrupt backup, and S3's
    permanent 4xx answers (AccessDenied, NoSuchBucket); throttling and timeouts are retried."""
    import errno

    from rem.errors import RemError

    if isinstance(exc, RemError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return False
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") \
        if isinstance(getattr(exc, "response", None), dict) else None
    return not (status and 400 <= status < 500 and status not in (408, 429))


def task(name: str, retries: int = 0, retry_delay_seconds: float = 0) -> Callable[[Callable], Any]:
    def decorate(fn: Callable) -> Any:
        if ORCHESTRATED:
            from prefect import task as prefect_task
            from prefect.cache_policies import NO_CACHE

            # NO_CACHE: inputs include open stores and snapshots, which must never be cached or hashed.
            return prefect_task(name=name, retries=retries, retry_delay_seconds=retry_delay_seconds,
                                retry_condition_fn=_prefect_retry_condition, cache_policy=NO_CACHE)(fn)
        return LocalTask(fn, name, retries, retry_delay_seconds)

    return decorate


def _prefect_retry_condition(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:
        return is_retryable(exc)
    return True


def flow(name: str, description: str | None = None) -> Callable[[Callable], Any]:
    def decorate(fn: Callable) -> Any:
        if ORCHESTRATED:
            from prefect import flow as prefect_flow

            return prefect_flow(name=name, description=description, log_prints=True)(fn)
        fn.fn = fn  # the same attribute Prefect flows have
        return fn

    return decorate


def get_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a Prefect run, the `rem` logger otherwise."""
    if ORCHESTRATED:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
    return log


def _artifact(create: str, **kwargs: Any):
    """prefect.artifacts.<create>(**kwargs) inside a Prefect run; None in-process or outside a run."""
    if not ORCHESTRATED:
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
    if not ORCHESTRATED:
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
    if not ORCHESTRATED:
        return
    _artifact("create_table_artifact", key=artifact_key(key), table=rows() if callable(rows) else rows,
              description=description)


def db_resource(cfg) -> dict[str, str]:
    """The Prefect resource events about one database carry: rem.db.<name>, with its host and path."""
    import socket

    name = db_label(cfg)
    return {"prefect.resource.id": f"rem.db.{name}", "prefect.resource.name": name,
            "rem.host": socket.gethostname(), "rem.db.path": str(cfg.db_path)}


def emit(event: str, cfg, payload: dict[str, Any]) -> None:
    """A Prefect event about the database when a Prefect API is configured (automations match these)."""
    if not ORCHESTRATED:
        return
    from prefect.events import emit_event

    emit_event(event=event, resource=db_resource(cfg), payload=payload)


ADHOC_TAG = "adhoc"
PAGE_TAG = "rem-page"  # an ad-hoc run whose failure pages as a deployment run's does


@contextmanager
def adhoc_tags(page: bool):
    """Runs started by hand from the command line carry the tag `adhoc`; the failure pages match
    deployment runs only, unless the operator asked with --page."""
    if not ORCHESTRATED or os.environ.get("PREFECT__FLOW_RUN_ID"):
        yield
        return
    from prefect import tags

    with tags(ADHOC_TAG, *([PAGE_TAG] if page else [])):
        yield


def writer_limit_name(db_path, host: str | None = None) -> str:
    """The database's own writer slot: host and path, so the many hosts keeping theirs at
    /var/lib/rem/db never wait on one another."""
    import re
    import socket

    where = re.sub(r"[^A-Za-z0-9.-]+", "-", str(Path(db_path).resolve()).strip("/"))
    return f"rem-writer-{host or socket.gethostname()}-{where}"


@contextmanager
def writer_slot(db_path):
    """Under Prefect, hold the database's global concurrency slot (limit 1, made by `rem deploy`) so
    two scheduled writers never touch one database; in-process, RocksDB's own lock is the guard."""
    if not ORCHESTRATED:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(writer_limit_name(db_path), occupy=1, strict=False):
        yield


class TerminalBars(Protocol):
    """What draws progress bars on a terminal (the command line installs one, see cli.output.bars)."""

    def start(self, description: str, total: int | None, unit: str) -> Any: ...

    def advance(self, bar: Any, amount: int) -> None: ...

    def finish(self, bar: Any) -> None: ...


# Set by the command line when stderr is a terminal and the output is not --json; None otherwise.
terminal_bars: TerminalBars | None = None


class RunProgress:
    """Progress of one long step, shown two ways by one mechanism: a bar on the terminal (when the
    command line installed terminal_bars) and a progress artifact kept current on the Prefect run
    (updated at most once per percent; nothing outside a run). Call it with the amount just done,
    from any thread; finish() when the work is done. unit: bytes, or what is counted (entities, rows).

    Parallel parts report from several threads: the count, the check and the update happen under
    one lock, so an older percentage can never land after a newer one."""

    def __init__(self, description: str, total: int | None, unit: str = "bytes", artifact: bool = True):
        import threading

        self.total = max(total, 1) if total is not None else None  # None: a count with no known end
        self.done = 0
        self.shown = -1
        self.lock = threading.Lock()
        self.artifact_id = _artifact("create_progress_artifact", progress=0.0, description=description) \
            if artifact else None
        self.bar = terminal_bars.start(description, total, unit) if terminal_bars is not None else None

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            if self.bar is not None:
                terminal_bars.advance(self.bar, amount)
            if self.total is not None:
                self._show(min(99, int(self.done * 100 / self.total)))  # 100 only once finished

    def finish(self) -> None:
        with self.lock:
            if self.bar is not None:
                terminal_bars.finish(self.bar)
                self.bar = None
            self._show(100)

    def _show(self, percent: int) -> None:
        if self.artifact_id is not None and percent > self.shown:
            from prefect.artifacts import update_progress_artifact

            self.shown = percent
            update_progress_artifact(self.artifact_id, progress=float(percent))
