"""An ObjectStore whose traffic is held to a rate (`--rate-limit`, `[backup] rate_limit_mb`), so a
backup, restore, download or the log follower never takes the disk or the network from the engine
(pgBackRest's and WAL-G's upload limits, RocksDB's own rate limiter for its backups). Every byte
that goes to or comes from the store counts: uploads as they are written (which paces the read of
the database's files behind them), downloads part by part, single puts and gets whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rem.storage import StoreWrapper

MB = 1_000_000
BURST_SECONDS = 0.25  # a limiter idle a while may let this much go at once, no more


class RateLimiter:
    """A token bucket shared by every thread of a run: take(n) returns once n more bytes fit the rate."""

    def __init__(self, mb_per_second: float):
        self.rate = mb_per_second * MB
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - BURST_SECONDS)
            self._next = start + n / self.rate
            wait = self._next - now - BURST_SECONDS
        if wait > 0:
            time.sleep(wait)


class _PacedSink:
    def __init__(self, sink: BinaryIO, limiter: RateLimiter):
        self.sink, self.limiter = sink, limiter

    def write(self, data) -> int:
        self.limiter.take(len(data))
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


class ThrottledObjectStore(StoreWrapper):
    """Any ObjectStore with its bytes held to the limiter's rate; calls that move no data go to it as they are."""

    def __init__(self, inner, limiter: RateLimiter):
        super().__init__(inner)
        self.limiter = limiter

    def put(self, key: str, body: bytes, **options) -> str:
        self.limiter.take(len(body))
        return self.inner.put(key, body, **options)

    @contextmanager
    def writer(self, key: str, spool_dir: Path | None, **options) -> Iterator[BinaryIO]:
        with self.inner.writer(key, spool_dir, **options) as sink:
            yield _PacedSink(sink, self.limiter)  # type: ignore[misc]

    def get(self, key: str, start: int | None = None, end: int | None = None, if_match: str | None = None) -> bytes:
        body = self.inner.get(key, start, end, if_match=if_match)
        self.limiter.take(len(body))
        return body

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        body, etag = self.inner.get_with_etag(key)
        self.limiter.take(len(body))
        return body, etag

    def download(self, key: str, dest: Path, progress: Callable[[int], None] | None = None) -> None:
        def paced(n: int) -> None:  # each part (or 8 MiB of a local copy) waits for its share
            self.limiter.take(n)
            if progress:
                progress(n)

        self.inner.download(key, dest, paced)
