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

# The global --page flag (one command per process): its runs' failures page like a deployment's.
PAGE_ON_FAILURE: dict[str, bool] = {}

# Piped output keeps whole lines (names, paths, s3:// URLs) rather than rich's 80-column folding.
# markup=False: names, paths and messages are data; a '[/]' in one must print as itself.
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, markup=False)


def emit(data: Any, as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    """Print the command's result: exactly one JSON document, or the human rendering."""
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    elif render is not None:
        render(out)


def table_renderer(headers: list[str], rows: list[list[Any]], empty: str = "") -> Callable[[Console], None]:
    """The human rendering of tabular results: a rich table, or `empty` when there are no rows."""
    def render(console: Console) -> None:
        if not rows and empty:
            console.print(empty)
            return
        from rich.table import Table

        table = Table(*headers)
        for row in rows:
            table.add_row(*["" if v is None else str(v) for v in row])
        console.print(table)

    return render


def fail(message: str, code: int, as_json: bool = False) -> NoReturn:
    """One clear line on stderr (and a JSON error document with --json), then exit."""
    if as_json:
        sys.stdout.write(orjson.dumps({"ok": False, "error": message}).decode() + "\n")
    from rich.text import Text

    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def command(as_json: bool) -> Iterator[None]:
    """Turn errors into one line and the right exit code (REM_DEBUG=1 keeps the traceback of the
    unexpected ones); under Prefect, tag the runs as ad hoc."""
    from tasks.runtime import adhoc_tags

    try:
        with adhoc_tags(PAGE_ON_FAILURE.get("page", False)):
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
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(f"{type(exc).__name__}: {message} (rerun with REM_DEBUG=1 for the traceback)", 1, as_json)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing at all when stderr is not one."""
    if not err.is_terminal:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"
