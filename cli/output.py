"""One way to finish a command: a JSON document with --json, rich text otherwise, and exit codes
0 success, 1 the operation failed or found problems, 2 bad usage or configuration."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console

from rem.errors import ConfigError, RemError, UsageError
from rem.reports import human_bytes

# The global --page flag (one command per process): its runs' failures page like a deployment's.
PAGE_ON_FAILURE: dict[str, bool] = {}

# Piped output keeps whole lines (names, paths, s3:// URLs) rather than rich's 80-column folding.
# markup=False: names, paths and messages are data; a '[/]' in one must print as itself.
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, markup=False)


def show(data: Any, as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    """Print the command's result: exactly one JSON document, or the human rendering."""
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    elif render is not None:
        render(out)


def table_renderer(headers: list[str], rows: list[list[Any]], empty: str = "", whole: tuple[str, ...] = (),
                   after: list[str] = ()) -> Callable[[Console], None]:
    """The human rendering of tabular results: a rich table, or `empty` when there are no rows. The
    columns named in whole are never cut or wrapped (the others wrap to make room), and the lines
    in after follow the table unwrapped by rich: a value someone copies (a location) stays whole."""
    def render(console: Console) -> None:
        if not rows and empty:
            console.print(empty)
            return
        from rich.table import Table

        cells = [["" if v is None else str(v) for v in row] for row in rows]
        widest = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
        if whole and sum(widest) + 3 * len(headers) + 1 > console.width:
            # Too narrow for the table: one block per row, as pgBackRest's info prints, the whole
            # columns first on a line of their own, nothing cut.
            for row in cells:
                first = "  ".join(v for h, v in zip(headers, row) if h in whole)
                rest = ", ".join(f"{h.lower()} {v}" for h, v in zip(headers, row) if h not in whole and v)
                console.print(first, style="bold", soft_wrap=True, highlight=False)
                console.print(f"  {rest}", soft_wrap=True, highlight=False)
        else:
            table = Table()
            for i, header in enumerate(headers):
                table.add_column(header, **({"no_wrap": True, "min_width": widest[i]} if header in whole else {}))
            for row in cells:
                table.add_row(*row)
            console.print(table)
        for line in after:
            console.print(line, soft_wrap=True, highlight=False)

    return render


def fail(message: str, code: int, as_json: bool = False) -> NoReturn:
    """One clear line on stderr (and a JSON error document with --json), then exit."""
    from rem.errors import redact

    message = redact(message)
    from runtime.orchestration import send_pending_prefect_work

    send_pending_prefect_work()  # so that this line stays the last one (nothing to send without Prefect)
    if as_json:
        sys.stdout.write(orjson.dumps({"ok": False, "error": message}).decode() + "\n")
    from rich.text import Text

    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def cli_run(ctx: typer.Context, as_json: bool, settings: bool = True) -> Iterator[Any]:
    """Every command's preamble: its settings (a bad one is one line, exit 2, before any work), then
    the command's errors as one line and the right exit code. Yields the Settings (None with
    settings=False: a command that reads none)."""
    cfg = ctx.obj.settings(as_json) if settings else None
    with command(as_json):
        yield cfg


@contextmanager
def command(as_json: bool) -> Iterator[None]:
    """Turn errors into one line and the right exit code (REM_DEBUG=1 keeps the traceback of the
    unexpected ones); under Prefect, tag the runs as ad hoc."""
    from runtime.orchestration import adhoc_tags, when_prefect_loads

    try:
        with bars(as_json), when_prefect_loads(_one_line_for_expected_errors), \
                adhoc_tags(PAGE_ON_FAILURE.get("page", False)):
            yield
    except (ConfigError, UsageError) as exc:
        fail(str(exc), 2, as_json)
    except RemError as exc:
        fail(str(exc), 1, as_json)
    except typer.Exit:
        raise
    except OSError as exc:
        if os.environ.get("REM_DEBUG"):
            raise
        where = exc.filename or "a file this command writes"
        fail(f"{where}: {exc.strerror or exc}" + ("; free space there or choose another directory"
                                                  if exc.errno == errno.ENOSPC else ""), 1, as_json)
    except Exception as exc:
        if os.environ.get("REM_DEBUG"):
            raise
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):  # botocore's, not imported here
            fail("no AWS credentials were found for the bucket: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                 "(or AWS_PROFILE, or the host's instance role), or give the REM Backup Storage block's "
                 "AwsCredentials its keys", 2, as_json)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(f"{type(exc).__name__}: {message} (rerun with REM_DEBUG=1 for the traceback)", 1, as_json)


class Bars:
    """Rich progress bars on stderr: total, done, rate (bytes or rows per second) and time left."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, ProgressColumn, TimeRemainingColumn
        from rich.text import Text

        class Amount(ProgressColumn):
            def render(self, task) -> Text:
                unit, total = task.fields["unit"], task.total
                if unit == "bytes":
                    done = human_bytes(task.completed)
                    return Text(f"{done} of {human_bytes(total)}" if total else done)
                return Text(f"{int(task.completed):,}" + (f" of {int(total):,}" if total else "") + f" {unit}")

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                if not speed:
                    return Text("")
                unit = task.fields["unit"]
                return Text(f"{human_bytes(speed)}/s" if unit == "bytes" else f"{speed:,.0f} {unit}/s")

        self.progress = Progress("{task.description}", BarColumn(), Amount(), Rate(), TimeRemainingColumn(),
                                 console=err, transient=True)

    def start(self, description: str, total: int | None, unit: str):
        return self.progress.add_task(description, total=total, unit=unit)

    def advance(self, bar, amount: int) -> None:
        self.progress.advance(bar, amount)

    def finish(self, bar) -> None:
        """Shown complete (and drawn at once, however short the step) until the command ends."""
        done = next(t.completed for t in self.progress.tasks if t.id == bar)
        self.progress.update(bar, total=done, completed=done)
        self.progress.refresh()


@contextmanager
def bars(as_json: bool) -> Iterator[None]:
    """Progress bars for the whole command when stderr is a terminal and the output is not --json.
    Started before Prefect is imported, so that Prefect's console handler writes through rich's
    redirected stderr, above the bars, instead of over them."""
    from runtime.progress import bars_shown

    if as_json or not err.is_terminal:
        yield
        return
    shown = Bars()
    with shown.progress, bars_shown(shown):
        yield


@contextmanager
def progress(description: str, total: int | None, unit: str = "entities") -> Iterator[Callable[[int], None]]:
    """A bar for a step of the command line itself, outside any flow run (so no artifact, and no
    Prefect import); the flows' steps report through RunProgress, artifact included."""
    from runtime.progress import RunProgress

    step = RunProgress(description, total, unit, artifact=False)
    yield step
    step.finish()


def _one_line_for_expected_errors() -> None:
    """Prefect prints the traceback of any exception a flow run ends with; for rem's own errors (bad
    input, a corrupt backup) the command prints its one line below, so the console shows only that.
    The run's logs in the API keep the traceback."""
    import logging

    import prefect.main  # noqa: F401 - its logging is configured when it loads

    from rem.errors import RemError

    class ExpectedError(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.exc_info and isinstance(record.exc_info[1], RemError))

    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", "prefect.flow_runs",
                                                                          "prefect.task_runs"))):
        for handler in logger.handlers:
            if "Console" in type(handler).__name__ and not any(isinstance(f, ExpectedError) for f in handler.filters):
                handler.addFilter(ExpectedError())


def quiet_prefect(verbose: bool) -> None:
    """Prefect's console lines (about eight INFO lines a command) only with -v; the run's logs still
    reach the Prefect API and its UI. Set before Prefect is imported; an explicit setting wins."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else "WARNING")
