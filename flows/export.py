"""tenant_export: a tenant's entities to Parquet, one file per schema, stored locally and/or uploaded."""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rem.engine import SYSTEM_SCHEMA_PROPERTIES
from rem.errors import UsageError
from rem.export import chosen_schemas
from rem.format import check_tenant, file_stem
from rem.identity import claim_name
from rem.tenant import require_tenant
from runtime.observe import publish_report
from runtime.orchestration import flow
from runtime.wiring import identity, remote_store, resolve_settings
from tasks.export import export_files, upload_export


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
