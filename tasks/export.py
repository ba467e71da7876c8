"""Export steps: the schemas' entities to Parquet in one scan, each file stored under exports/."""

from __future__ import annotations

from pathlib import Path

from rem.db import open_db
from rem.export import export_tenant, schema_layouts
from rem.stats import estimate_keys
from rem.storage import ObjectStore
from runtime.orchestration import task
from runtime.progress import RunProgress


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
