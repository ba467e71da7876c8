"""The engine-faithful test writer (tests/engine/writer.py), run in its own virtualenv with RocksDB
8.10.0 (rocksdict 0.3.22), as percolate-rocks runs it. `make test` creates .venv-engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = REPO / ".venv-engine" / "bin" / "python"
RUN = Path(__file__).resolve().parent / "run.py"


def engine_write(path, ops: list, mode: str = "standalone", crash: bool = False, **options) -> list:
    """Apply ops to the database at path (created if missing) as the engine would; returns each result.
    crash: end without closing, as a killed engine does (its logs keep every write)."""
    if not ENGINE_PYTHON.exists():
        raise RuntimeError(f"{ENGINE_PYTHON} is missing: run `make test` (it creates .venv-engine)")
    script = json.dumps({"path": str(path), "mode": mode, "options": options, "ops": ops, "crash": crash})
    proc = subprocess.run([str(ENGINE_PYTHON), str(RUN)], input=script, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"engine writer failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def engine_read_all(path) -> dict[str, dict[bytes, bytes]]:
    """Open the database read-write in RocksDB 8.10.0 with the engine's options (as the engine would)
    and read back every key of every column family."""
    code = ("import sys, json; sys.path.insert(0, sys.argv[2]); from writer import Engine; "
            "from rocksdict import ReadOptions; ro = ReadOptions(); ro.set_total_order_seek(True); "
            "e = Engine(sys.argv[1]); out = {n: {k.hex(): v.hex() for k, v in "
            "e.db.get_column_family(n).items(read_opt=ro)} for n in e.cfs}; e.close(); json.dump(out, sys.stdout)")
    proc = subprocess.run([str(ENGINE_PYTHON), "-c", code, str(path), str(RUN.parent)], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"RocksDB 8.10 could not open {path}:\n{proc.stderr}")
    return {cf: {bytes.fromhex(k): bytes.fromhex(v) for k, v in rows.items()}
            for cf, rows in json.loads(proc.stdout).items()}


class LiveEngine:
    """An engine that stays open in its own process (RocksDB 8.10 holding the lock, writing its logs)
    while the test runs our tools against its directory; `call` runs one op and returns its result."""

    def __init__(self, path, mode: str = "standalone", **options):
        if not ENGINE_PYTHON.exists():
            raise RuntimeError(f"{ENGINE_PYTHON} is missing: run `make test` (it creates .venv-engine)")
        self.path = Path(path)
        self.proc = subprocess.Popen([str(ENGINE_PYTHON), str(RUN), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._send({"path": str(path), "mode": mode, "options": options})

    def _send(self, message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the engine exited ({self.proc.wait()})")
        answer = json.loads(reply)
        if "error" in answer:
            raise RuntimeError(f"engine: {answer['error']}")
        return answer["result"]

    def call(self, name: str, *args):
        return self._send([name, *args])

    def dump(self) -> dict[str, dict[bytes, bytes]]:
        return {cf: {bytes.fromhex(k): bytes.fromhex(v) for k, v in rows.items()}
                for cf, rows in self.call("dump").items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
