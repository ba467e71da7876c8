"""Independent readers for assertions: plain rocksdict and json, none of the code under test."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, ReadOptions

REPO = Path(__file__).resolve().parent.parent


def dump_all(path: str | os.PathLike) -> dict[str, dict[bytes, bytes]]:
    """Every key and value of every column family, read with raw rocksdict (read-only)."""
    path = str(path)
    litter = os.path.join(path, "rocksdict-config.json")
    existed = os.path.exists(litter)
    opts, cf_opts = Options.load_latest(path)
    db = Rdict(path, options=opts, column_families=cf_opts, access_type=AccessType.read_only(False))
    try:
        out = {}
        for name in Rdict.list_cf(path):
            cf = db.get_column_family(name)
            ro = ReadOptions()
            ro.set_total_order_seek(True)
            out[name] = dict(cf.items(read_opt=ro))
            del cf
        return out
    finally:
        db.close()
        if not existed and os.path.exists(litter):
            os.remove(litter)


def digest(rows: dict[str, dict[bytes, bytes]]) -> str:
    h = hashlib.sha256()
    for cf in sorted(rows):
        for k in sorted(rows[cf]):
            h.update(cf.encode() + b"\0" + k + b"\0" + rows[cf][k] + b"\0")
    return h.hexdigest()


def brute_force_stats(path) -> dict:
    rows = dump_all(path)
    live = deleted = schemas = 0
    for key, value in rows["entities"].items():
        e = json.loads(value)
        if e["entity_type"] == "schemas" and key.startswith(b"entity:default:"):
            schemas += e["deleted_at"] is None
        elif e["deleted_at"] is None:
            live += 1
        else:
            deleted += 1
    wal_seqs = [json.loads(v)["seq"] for v in rows["wal"].values()]
    return {"entities_live": live, "entities_soft_deleted": deleted, "schemas": schemas,
            "embeddings": len(rows["embeddings"]), "edges": len(rows["edges"]),
            "wal_entries": len(rows["wal"]), "wal_latest_seq": max(wal_seqs, default=0),
            "keys": {cf: len(v) for cf, v in rows.items() if cf != "default"}}


def rem(*args: str, env: dict | None = None, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `rem` command line in a fresh process, as on-call would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rem {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_dir(path) -> dict[str, tuple[int, int, bytes]]:
    """(size, mtime_ns, sha256) of every file below path, for 'left exactly as it was' checks."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                found[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).digest())
    return found


def database_files(path) -> dict[str, str]:
    """SHA-256 of each file of a database, but those every open rewrites (its LOCK, LOGs and
    rocksdict's config), for "the same database, file by file" checks."""
    found = {}
    for p in Path(path).iterdir():
        if p.is_file() and p.name not in ("LOCK", "rocksdict-config.json") and not p.name.startswith("LOG"):
            with open(p, "rb") as f:
                found[p.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return found


@contextmanager
def holding_lock(path):
    """Another process holds the database read-write (as the running engine does) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rem.db import open_db; "
                               "db = open_db(sys.argv[1], 'rw'); print('locked', flush=True); time.sleep(120)",
                               str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until url answers (a server we started), failing early if its process died."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


class DirectoryEvents:
    """Linux inotify on one directory: every entry created, deleted, renamed or written in it while
    the block runs (names, with the event), read through ctypes from the kernel itself."""

    MASK = 0x100 | 0x200 | 0x40 | 0x80 | 0x02 | 0x08  # CREATE DELETE MOVED_FROM MOVED_TO MODIFY CLOSE_WRITE

    def __init__(self, path):
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and self.libc.inotify_add_watch(self.fd, str(path).encode(), self.MASK) >= 0
        self.events: list[tuple[int, str]] = []

    def collect(self) -> list[tuple[int, str]]:
        import struct

        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.events
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                self.events.append((mask, name))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def db_name_of(path) -> str:
    """The name rem must give a database by default: its directory name and the start of the
    RocksDB IDENTITY the engine's RocksDB wrote when it created it."""
    identity = (Path(path) / "IDENTITY").read_text().strip().replace("-", "")[:8]
    return f"{Path(path).name}-{identity}"


def in_terminal(*args: str, env: dict | None = None, columns: int = 80, timeout: float = 120) -> tuple[int, str]:
    """Run `rem` under a pseudo-terminal of the given width, as a person at a terminal would, and
    return its exit code and everything the screen showed (stdout and stderr together)."""
    import pty
    import select

    full_env = {**os.environ, **(env or {}), "COLUMNS": str(columns), "LINES": "50"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: rem on the terminal
        os.chdir(REPO)
        os.execvpe(sys.executable, [sys.executable, "-m", "cli.main", *args], full_env)
    screen = b""
    while select.select([fd], [], [], timeout)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")
