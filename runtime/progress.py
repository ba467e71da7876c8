"""Progress of a long step: a bar on the terminal and a progress artifact on the Prefect run."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any, Protocol

from runtime.observe import _artifact


class TerminalBars(Protocol):
    """What draws progress bars on a terminal (the command line's, see cli.output.Bars)."""

    def start(self, description: str, total: int | None, unit: str) -> Any: ...

    def advance(self, bar: Any, amount: int) -> None: ...

    def finish(self, bar: Any) -> None: ...


# Bars on the terminal while the command line shows them (stderr a terminal, no --json); else None.
terminal_bars: TerminalBars | None = None


@contextmanager
def bars_shown(bars: TerminalBars) -> Iterator[None]:
    """Every RunProgress made inside the block also draws on these bars."""
    global terminal_bars
    terminal_bars = bars
    try:
        yield
    finally:
        terminal_bars = None


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
