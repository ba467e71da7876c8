"""Tenant export to Parquet, and read-only SQL over a database's schemas (DuckDB over that export)."""

from __future__ import annotations

import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flows.backup import resolve_settings
from rem.db import open_db
from rem.errors import UsageError
from rem.export import export_tenant, schema_layouts
from rem.engine import SYSTEM_SCHEMA_PROPERTIES
from rem.format import check_tenant, file_stem
from rem.tenant import require_tenant
from rem.stats import estimate_keys
from tasks.runtime import RunProgress, flow, publish_report, task
from rem.identity import claim_name
from rem.storage import ObjectStore
from tasks.storage import identity, remote_store


@task("export-schemas", retries=1, retry_delay_seconds=2)
def export_files(db_path: str, targets: dict[str, Path], tenant: str | None, include_deleted: bool) -> list[dict]:
    """The schemas' entities to Parquet files, in one scan of the database."""
    with open_db(db_path, "ro") as db:
        layouts = schema_layouts(db)
        # A tenant's share of the entities is unknown without a scan: the bar counts, with no total.
        progress = RunProgress(f"Exporting {tenant or 'every tenant'}", None if tenant else
                               estimate_keys(db, "entities"), "entities")
        stats = export_tenant(db, {n: layouts[n] for n in targets}, tenant, targets, include_deleted,
                              progress=progress)
        progress.finish()
    return [s.__dict__ for s in stats.values()]


@task("upload-export", retries=3, retry_delay_seconds=5)
def upload_export(objects: ObjectStore, path: Path, key: str) -> str:
    """Store a Parquet file under the database's exports/."""
    objects.put_file(key, path)
    return objects.url(key)


def chosen_schemas(db_path: str, wanted: list[str] | None) -> list[str]:
    with open_db(db_path, "ro") as db:
        known = sorted(schema_layouts(db))
    if not wanted:
        return known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise UsageError(f"unknown schema(s) {', '.join(unknown)}; this database has: {', '.join(known)}")
    return wanted


@flow("tenant-export", description="Export a tenant's entities to Parquet, one file per schema.")
def tenant_export(tenant: str, output: str | None = None, schemas: list[str] | None = None, upload: bool = False,
                  include_deleted: bool = False, settings: dict[str, Any] | None = None) -> dict:
    cfg = resolve_settings(settings)
    check_tenant(tenant)
    require_tenant(str(cfg.db_path), tenant)
    names = chosen_schemas(str(cfg.db_path), schemas)
    if not output and not upload:
        raise UsageError("give --output PATH (and/or --upload)")
    objects = remote_store(cfg) if upload else None
    if objects is not None:
        me = identity(cfg)
        claim_name(objects, me, write=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="rem-export-") as tmp:
        base = Path(output) if output else Path(tmp)
        single = bool(output) and len(names) == 1 and bool(schemas)
        targets = {name: base if single else base / f"{file_stem(name)}.parquet" for name in names}
        files = export_files(str(cfg.db_path), targets, tenant, include_deleted)
        if not schemas:  # all schemas: the built-in ones only where the tenant has entities of theirs
            for result in [r for r in files if r["schema"] in SYSTEM_SCHEMA_PROPERTIES and not r["rows"]]:
                Path(result["path"]).unlink(missing_ok=True)
                files.remove(result)
        for result in files:
            if objects is not None:
                key = f"{me.name}/exports/{tenant}/{stamp}/{file_stem(result['schema'])}.parquet"
                result["uploaded"] = upload_export(objects, targets[result["schema"]], key)
            if not output:
                result["path"] = None
    publish_report("tenant-export", f"# Export of {tenant}\n\n" + "\n".join(
        f"- {f['schema']}: {f['rows']} rows" for f in files))
    return {"ok": True, "tenant": tenant, "files": files}


READ_ONLY_STATEMENTS = ("SELECT",)


QUERY_MEMORY_MB = 1024
QUERY_TIMEOUT_SECONDS = 60.0


def run_query(sql: str, db_path: str, tenant: str | None = None, include_deleted: bool = False,
              limit: int = 10_000, memory_mb: int = QUERY_MEMORY_MB, timeout: float = QUERY_TIMEOUT_SECONDS) -> dict:
    """Export the schemas the SQL names to temporary Parquet, and answer it with DuckDB, within
    memory_mb of memory (DuckDB's own limit, locked with the rest of its configuration, nothing
    spilled to disk) and timeout seconds (the query is interrupted then)."""
    import threading

    import duckdb

    if tenant is not None:
        check_tenant(tenant)
        require_tenant(db_path, tenant)
    # No extension is ever fetched or loaded: a SELECT must not reach the internet or ~/.duckdb.
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False,
                                             "memory_limit": f"{memory_mb}MB", "temp_directory": ""})
    statements = con.extract_statements(sql)
    if len(statements) != 1 or statements[0].type.name not in READ_ONLY_STATEMENTS:
        raise UsageError("rem query answers one read-only SELECT (or WITH ... SELECT) statement")
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
