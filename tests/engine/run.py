"""Run a script of engine writes (JSON on stdin) under .venv-engine; print each op's result as JSON.

{"path": DB, "mode": "standalone" | "primary", "options": {...}, "ops": [["insert", tenant, table, data], ...]}
A string "$N" anywhere in an op's arguments stands for the result of op N (an entity id).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from writer import Engine  # noqa: E402


def resolve(value, results):
    if isinstance(value, str) and value.startswith("$") and value[1:].isdigit():
        return results[int(value[1:])]
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    return value


def main() -> None:
    script = json.load(sys.stdin)
    engine = Engine(script["path"], script.get("mode", "standalone"), **script.get("options", {}))
    results = []
    try:
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
