"""Prefect when a Prefect API is configured; the same functions and retry policy in-process otherwise.

Prefect's ephemeral server takes 11-17 s to start here, and importing Prefect about 1 s, while
on-call types `rem backup create` by hand. So the decision is made once, when the first flow or task
is defined (orchestrated()): with a Prefect API configured that answers (PREFECT_API_URL in the
environment or in the active Prefect profile), or inside a flow run a worker started, `task` and
`flow` are Prefect's own decorators and every run appears in the UI; otherwise they are thin
wrappers that run the function in-process and retry it with exactly the policy the Prefect task
would use. A command that defines no flow never imports Prefect. The writer slot and the ad-hoc
tags are the other two things that exist only under Prefect.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("rem")


def local_log() -> logging.Logger:
    """The `rem` logger, warnings and worse on stderr: what a run reports outside Prefect."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
    return log


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


API_TIMEOUT_SECONDS = 10


@functools.cache
def orchestrated() -> bool:
    """Whether this process runs its flows under Prefect: inside a worker's flow run, or with a
    Prefect API configured that answers. Decided once, on first need (a command that runs no flow
    never asks). An API that does not answer (its server down, the host gone) is one warning, and
    the command runs in-process: on the night the Prefect server is lost too, a restore must still run."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        return True
    url = prefect_api_url()
    why = _unanswered(url) if url else None
    if why:
        local_log().warning("the Prefect API at %s did not answer (%s): running in-process, so this "
                            "command's runs will not appear in the Prefect UI", url, why)
    return bool(url) and not why


def prefect_server(command: str) -> str:
    """The Prefect API's address, for a command that works on the server itself (`rem deploy`,
    `rem fleet status`): one line, exit 2, when none is configured or nothing answers there."""
    from rem.errors import UsageError

    url = prefect_api_url()
    if not url:
        raise UsageError(f"{command} needs a Prefect server: set PREFECT_API_URL (or a Prefect profile with one)")
    if why := _unanswered(url):
        raise UsageError(f"{command} needs the Prefect server at {url}, and it did not answer ({why}): start it, "
                         "or point PREFECT_API_URL at the one that runs")
    return url


@functools.cache
def _unanswered(url: str) -> str | None:
    """Why nothing answers at the Prefect API's address (refused, no such host, no connection within
    API_TIMEOUT_SECONDS), or None. Whatever connects counts as an answer, an HTTP or TLS error or a
    slow reply included: a busy server is Prefect's client's to wait for, as it did before."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=API_TIMEOUT_SECONDS).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:  # urllib's wrapping of what failed before a request was sent
        return None if isinstance(exc.reason, ssl.SSLError) else str(exc.reason)
    except ValueError as exc:  # not a URL
        return str(exc)
    except OSError:  # connected, then no reply in time or the connection cut
        return None
    return None


# Set up once this process defines its first Prefect flow or task (see when_prefect_loads).
_prefect_loaded = False
_waiting: list[Callable[[], None]] = []


def _load_prefect() -> None:
    """Run what waits for Prefect, before the first Prefect flow or task is defined."""
    global _prefect_loaded
    if not _prefect_loaded:
        _prefect_loaded = True
        for callback in list(_waiting):
            callback()


@contextmanager
def when_prefect_loads(callback: Callable[[], None]):
    """Within the block, callback() once this process defines a Prefect flow or task (at once if it
    has). A command that runs no flow (`backup list`, `check`) then never imports Prefect, which
    costs about 1.1 s of CPU on every command of a host with a Prefect API configured."""
    if _prefect_loaded:
        callback()
        yield
        return
    _waiting.append(callback)
    try:
        yield
    finally:
        _waiting.remove(callback)


def send_pending_prefect_work() -> None:
    """Send the events and run logs Prefect still holds now, not at exit: a busy server made its exit
    drain print "Still processing items" after the command's own last line. That progress note is
    kept off the console: the command's line is the one thing the operator needs."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    workers = (APILogWorker, EventsWorker)
    for worker in workers:  # first: one worker's drain_all may stop the other's instances too
        logging.getLogger(worker.__name__).setLevel(logging.ERROR)
    for worker in workers:
        worker.drain_all()


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

    def with_options(self, name: str) -> "LocalTask":
        """The same task under another run name, as Prefect's Task.with_options(name=...)."""
        return LocalTask(self.fn, name, self.retries, self.retry_delay_seconds)

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
        if orchestrated():
            _load_prefect()
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
        if orchestrated():
            _load_prefect()
            from prefect import flow as prefect_flow

            return prefect_flow(name=name, description=description, log_prints=True)(fn)
        fn.fn = fn  # the same attribute Prefect flows have
        return fn

    return decorate


ADHOC_TAG = "adhoc"
PAGE_TAG = "rem-page"  # an ad-hoc run whose failure pages as a deployment run's does


@contextmanager
def adhoc_tags(page: bool):
    """Runs started by hand from the command line carry the tag `adhoc`; the failure pages match
    deployment runs only, unless the operator asked with --page."""
    if os.environ.get("PREFECT__FLOW_RUN_ID"):  # a worker's run: tagged by its deployment
        yield
        return
    with ExitStack() as stack:  # entered only if a flow is defined under Prefect (see when_prefect_loads)
        def tag() -> None:
            from prefect import tags

            stack.enter_context(tags(ADHOC_TAG, *([PAGE_TAG] if page else [])))

        with when_prefect_loads(tag):
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
    if not orchestrated():
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(writer_limit_name(db_path), occupy=1, strict=False):
        yield


def wait_for_approval(description: str, timeout_seconds: int) -> tuple[bool, bool]:
    """Pause the current Prefect flow run until someone answers in the UI (Resume, with the form:
    approve, force): (approved, force). Past the timeout the run fails (FlowPauseTimeout) and the
    caller writes nothing. Only under Prefect: an approval needs someone who can see the run."""
    from rem.errors import UsageError

    if not orchestrated():
        raise UsageError("an approval waits in the Prefect UI: set PREFECT_API_URL to a server that answers "
                         "(or run the pitr-undo deployment), or leave out --wait-for-approval")
    from prefect.flow_runs import pause_flow_run
    from prefect.input import RunInput
    from pydantic import Field

    class UndoApproval(RunInput):
        approve: bool = Field(False, description="Write the previewed undo (left off: reject it, nothing is written)")
        force: bool = Field(False, description="Also put back the conflicting keys (their later writes are lost)")

    answer = pause_flow_run(wait_for_input=UndoApproval.with_initial_data(description=description),
                            timeout=timeout_seconds)
    return bool(answer.approve), bool(answer.force)
