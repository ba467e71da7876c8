"""Which database this is, in a store many databases share.

A database's name is the level under the store's prefix that holds everything of it
(`{prefix}/{name}/backups/full/...`, `.../backups/wal/...`, `.../exports/...`). It is given
(`--db-name`, P8_DB_NAME, the RemDatabase block) or derived from the database itself: its directory
name plus the start of RocksDB's IDENTITY, a UUID RocksDB writes when it creates a database. Two
hosts that both keep their database at /var/lib/rem/db therefore get different names, and a
database restored from its own backup (which carries its IDENTITY) keeps its name.

The first write under a name records the database's identity, host and path in
`{name}/database.json`; a database with another identity is refused there, so two databases
configured with one name by mistake never mix their backups, and prune never takes one's backups
for the other's. So is one with the same identity at another host or path: a copy (a staging
database restored from production's backup carries production's IDENTITY, and so its default
name) must never prune or overwrite the original's backups. A copy that replaces the original for
good (its disk is gone) takes the name over explicitly: `rem backup takeover`.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from difflib import get_close_matches
from pathlib import Path

from rem.errors import UsageError
from rem.storage import ObjectMissing, ObjectStore, PreconditionFailed

OWNER = "database.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Top-level names of the layout before databases had a level of their own (read as `--from-db legacy`).
RESERVED = {"backups", "exports", "full", "legacy"}
LEGACY = "legacy"

# P8_* variables the engine itself reads (percolate-rocks 5d3d19b): not ours to report.
ENGINE_VARIABLES = {
    "P8_ALT_EMBEDDING", "P8_BATCH_SIZE", "P8_CACHE_SIZE_MB", "P8_DEFAULT_EMBEDDING", "P8_DEFAULT_LLM",
    "P8_EMBEDDING_BATCH_SIZE", "P8_EXPORT_COMPRESSION", "P8_EXPORT_ROW_GROUP_SIZE", "P8_HNSW_CACHE_SIZE", "P8_HOME",
    "P8_HOT_DATA_DAYS", "P8_LOG_FORMAT", "P8_LOG_LEVEL", "P8_MAX_HOT_VECTORS", "P8_OPENAI_API_KEY",
    "P8_PRIMARY_HOST", "P8_REFRESH_INTERVAL", "P8_REPLICATION_MODE", "P8_REPLICATION_PORT",
    "P8_ROCKSDB_COMPRESSION", "P8_ROCKSDB_MAX_BACKGROUND_JOBS", "P8_ROCKSDB_MAX_OPEN_FILES",
    "P8_ROCKSDB_WRITE_BUFFER_SIZE", "P8_SCHEMA_BRUTE_FORCE_LIMIT", "P8_SCHEMA_SEARCH_TOP_K", "P8_SEARCH_TIMEOUT_MS",
    "P8_TENANT_ID", "P8_TIERED_SEARCH", "P8_WAL_ENABLED", "P8_WAL_MAX_SIZE_MB", "P8_WAL_RETENTION_HOURS",
    "P8_WAL_SYNC_INTERVAL_MS"}


def check_db_name(name: str, where: str = "--db-name / P8_DB_NAME") -> str:
    if not NAME.match(name) or name in RESERVED:
        raise UsageError(f"{where}: database name {name[:70]!r}: use 1 to 63 lowercase letters, digits or '-', "
                         f"starting with a letter or digit, other than {', '.join(sorted(RESERVED))}")
    return name


def rocksdb_identity(db_path: str | Path) -> str | None:
    """The UUID RocksDB keeps in the database's IDENTITY file, or None when there is no database."""
    try:
        value = (Path(db_path) / "IDENTITY").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return value or None


def derived_name(db_path: str | Path) -> str | None:
    """{directory name}-{first 8 hex digits of IDENTITY}, e.g. db-3f2a9c1e; None without a database."""
    identity = rocksdb_identity(db_path)
    if identity is None:
        return None
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(db_path).name.lower()).strip("-")[:40] or "db"
    return f"{stem}-{re.sub('[^0-9a-f]', '', identity.lower())[:8]}"


@dataclass(frozen=True)
class DatabaseIdentity:
    name: str
    identity: str | None  # None: no database at the path (a restore onto an empty host)
    host: str
    path: str
    named_by: str  # where the name came from, said in listings and errors


def database_identity(db_path: str | Path, db_name: str | None, named_by: str = "--db-name / P8_DB_NAME") \
        -> DatabaseIdentity:
    identity = rocksdb_identity(db_path)
    if db_name:
        name = check_db_name(db_name, named_by)
    else:
        name = derived_name(db_path)
        if name is None:
            raise UsageError(f"{db_path}: no database here to take its name from; give the name its backups are "
                             "under with --db-name (or P8_DB_NAME); `rem backup list --all-dbs` shows them")
        named_by = f"derived from {db_path}/IDENTITY (set P8_DB_NAME to choose one)"
    return DatabaseIdentity(name, identity, socket.gethostname(), str(Path(db_path).resolve()), named_by)


def _record(me: DatabaseIdentity) -> bytes:
    record = {**asdict(me), "claimed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record.pop("named_by")
    return json.dumps(record, indent=2).encode()


def claim_name(objects: ObjectStore, me: DatabaseIdentity, write: bool) -> None:
    """Refuse a name whose database.json records another database, or this database's identity at
    another host or path (a copy: a restore of its backup elsewhere carries its IDENTITY); record
    ours on the first write."""
    if me.identity is None:
        return
    key = f"{me.name}/{OWNER}"
    for _ in range(3):
        try:
            owner = json.loads(objects.get(key))
        except ObjectMissing:
            if not write:
                return
            try:
                objects.put(key, _record(me), if_none_match=True)
                return
            except PreconditionFailed:
                continue  # another run recorded it first: read what it wrote
        except ValueError:
            raise UsageError(f"{objects.url(key)}: not readable as a database record; whatever wrote it was not "
                             "rem: move it aside or choose another P8_DB_NAME") from None
        where = f"{owner.get('host')}:{owner.get('path')}"
        if owner.get("identity") != me.identity:
            raise UsageError(
                f"{objects.url(me.name + '/')} holds database {me.name!r} of {where} (RocksDB identity "
                f"{owner.get('identity')}), not this one at {me.host}:{me.path} (identity {me.identity}); give this "
                "database its own name with --db-name / P8_DB_NAME")
        if (owner.get("host"), owner.get("path")) != (me.host, me.path):
            raise UsageError(
                f"{objects.url(me.name + '/')} holds database {me.name!r} of {where}; this one at {me.host}:{me.path} "
                "has its RocksDB identity, so it is a copy (restored from its backup, or moved): give the copy its "
                "own name with --db-name / P8_DB_NAME, or, if it replaces the original for good, run "
                f"`rem --db-name {me.name} backup takeover` here")
        return


def take_over_name(objects: ObjectStore, me: DatabaseIdentity) -> dict:
    """Record this database (identity, host, path) as the owner of its name: for a copy that replaces
    the original. Returns the record it replaced ({} when there was none)."""
    if me.identity is None:
        raise UsageError(f"{me.path}: no database here to record; restore it first")
    key = f"{me.name}/{OWNER}"
    try:
        body, etag = objects.get_with_etag(key)
    except ObjectMissing:
        objects.put(key, _record(me), if_none_match=True)
        return {}
    try:
        previous = json.loads(body)
    except ValueError:
        previous = {"unreadable": objects.url(key)}
    try:
        objects.put(key, _record(me), if_match=etag)
    except PreconditionFailed:
        raise UsageError(f"{objects.url(key)} changed while it was being replaced; run the takeover again") from None
    return previous


def unknown_variables(known: set[str], environ: dict[str, str] | None = None) -> list[str]:
    """One line for each P8_* variable neither rem nor the engine reads (a typo is silently ignored otherwise)."""
    env = os.environ if environ is None else environ
    lines = []
    for name in sorted(v for v in env if v.startswith("P8_") and v not in known and v not in ENGINE_VARIABLES):
        close = get_close_matches(name, sorted(known), n=1)
        lines.append(f"{name} is not a setting rem or the engine reads; it is ignored"
                     + (f" (did you mean {close[0]}?)" if close else ""))
    return lines
