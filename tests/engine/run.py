"""Run a script of engine writes (JSON on stdin) under .venv-engine; print each op's result as JSON.

{"path": DB, "mode": "standalone" | "primary", "options": {...}, "ops": [["insert", tenant, table, data], ...]}
A string "$N" anywhere in an op's arguments stands for the result of op N (an entity id).

With --serve, the script (without "ops") is the first line of stdin and the engine stays open: each further line on stdin is one op,
answered by one line of JSON ({"result": ...} or {"error": ...}), until stdin closes. Besides the
engine's write paths, a served engine answers three test-only ops: "latest_sequence" (RocksDB's),
"flush" (every column family) and "dump" (every key and value of every column family, hex).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from writer import Engine  # noqa: E402
from spec import COLUMN_FAMILIES  # noqa: E402


def resolve(value, results):
    if isinstance(value, str) and value.startswith("$") and value[1:].isdigit():
        return results[int(value[1:])]
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    return value


def test_op(engine: Engine, name: str):
    if name == "latest_sequence":
        return engine.db.latest_sequence_number()
    if name == "flush":
        for reader in engine.readers.values():
            reader.flush()
        return True
    if name == "dump":
        from rocksdict import ReadOptions

        whole = ReadOptions()
        whole.set_total_order_seek(True)  # past the prefix extractors: every key
        return {cf: {k.hex(): v.hex() for k, v in engine.readers[cf].items(read_opt=whole)} for cf in COLUMN_FAMILIES}
    return None


def serve(engine: Engine) -> None:
    results = []
    for line in sys.stdin:
        name, *args = json.loads(line)
        try:
            result = test_op(engine, name) if name in ("latest_sequence", "flush", "dump") else \
                getattr(engine, name)(*resolve(args, results))
            results.append(result)
            sys.stdout.write(json.dumps({"result": result}) + "\n")
        except Exception as exc:  # reported to the test, which decides
            results.append(None)
            sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.stdout.flush()


def main() -> None:
    served = "--serve" in sys.argv  # the script is the first line; ops follow, one per line
    script = json.loads(sys.stdin.readline()) if served else json.load(sys.stdin)
    engine = Engine(script["path"], script.get("mode", "standalone"), **script.get("options", {}))
    results = []
    try:
        if served:
            sys.stdout.write(json.dumps({"result": "ready"}) + "\n")
            sys.stdout.flush()
            serve(engine)
            return
        for name, *args in script["ops"]:
            results.append(getattr(engine, name)(*resolve(args, results)))
        if script.get("crash"):  # end like a killed engine: no flush, the logs stay as they are
            json.dump(results, sys.stdout)
            sys.stdout.flush()
            os._exit(0)
    finally:
        engine.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
