"""`rem query`: one read-only SELECT (DuckDB) over the schemas it names, each exported to a
temporary Parquet table first; sandboxed (no files, URLs or extensions), bounded in memory and time."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from rem.db import open_db
from rem.errors import UsageError
from rem.format import check_tenant, file_stem
from rem.tenant import require_tenant

READ_ONLY_STATEMENTS = ("SELECT",)


QUERY_MEMORY_MB = 1024
QUERY_TIMEOUT_SECONDS = 60.0


def check_query(sql: str, con=None) -> None:
    """One read-only SELECT (or WITH ... SELECT), as DuckDB parses it; anything else is refused."""
    import duckdb

    con = con or duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                    "autoload_known_extensions": False})
    statements = con.extract_statements(sql)
    if len(statements) != 1 or statements[0].type.name not in READ_ONLY_STATEMENTS:
        raise UsageError("rem query answers one read-only SELECT (or WITH ... SELECT) statement")


def run_query(sql: str, db_path: str, tenant: str | None = None, include_deleted: bool = False,
              limit: int = 10_000, memory_mb: int = QUERY_MEMORY_MB, timeout: float = QUERY_TIMEOUT_SECONDS) -> dict:
    """Export the schemas the SQL names to temporary Parquet, and answer it with DuckDB, within
    memory_mb of memory (DuckDB's own limit, locked with the rest of its configuration, nothing
    spilled to disk) and timeout seconds (the query is interrupted then)."""
    import threading

    import duckdb

    from rem.export import export_tenant, schema_layouts  # with pyarrow: not for every command that imports this

    if tenant is not None:
        check_tenant(tenant)
        require_tenant(db_path, tenant)
    # No extension is ever fetched or loaded: a SELECT must not reach the internet or ~/.duckdb.
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False,
                                             "memory_limit": f"{memory_mb}MB", "temp_directory": ""})
    check_query(sql, con)
    with open_db(db_path, "ro") as db:
        layouts = schema_layouts(db)
        named = [s for s in layouts if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", sql, re.IGNORECASE)]
        if not named:
            raise UsageError(f"the query names no schema; tables: {', '.join(sorted(layouts))}")
        with tempfile.TemporaryDirectory(prefix="rem-query-") as tmp:
            targets = {name: Path(tmp) / f"{file_stem(name)}.parquet" for name in named}
            export_tenant(db, {n: layouts[n] for n in named}, tenant, targets, include_deleted)
            for name, path in targets.items():  # names from the data: quoted as identifiers, paths as parameters
                table = name.replace('"', '""')
                con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM read_parquet(?)', [str(path)])
    # From here the query sees only those tables: no file, URL or database outside them, and no
    # setting can be changed back.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    timer = threading.Timer(timeout, con.interrupt)
    timer.start()
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchmany(limit)
    except duckdb.InterruptException:
        raise UsageError(f"query stopped after its {timeout:g} s limit; raise it with --timeout") from None
    except duckdb.OutOfMemoryException:
        raise UsageError(f"query needs more than its {memory_mb:,} MB memory limit; raise it with --memory-limit-mb "
                         "or make it select less") from None
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        timer.cancel()
    return {"columns": columns, "rows": [list(r) for r in rows], "row_count": len(rows), "tables": named}
