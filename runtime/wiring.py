"""The one place configuration becomes objects: settings (and the blocks a deployment names) ->
Settings, and Settings -> stores, the log archive, the database's identity. S3 comes from the
BackupStorage block the settings name (the block builds its own client), else from the P8_S3_*
settings; the local backup directory otherwise. Every flow, task and command gets its ObjectStore
and its database's BackupStore from here; the library below takes those objects, never settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rem.backup.catalog import BackupRecord, BackupStore, find_backup
from rem.errors import UsageError
from rem.identity import LEGACY, OWNER, DatabaseIdentity, check_db_name, database_identity, take_over_name
from rem.settings import Settings, load_settings
from rem.storage import ObjectStore
from rem.storage.local import LocalObjectStore
from rem.storage.s3 import BOUNDED, S3ObjectStore, S3Settings, encryption_args
from runtime.observe import current_db, db_label, label_run

if TYPE_CHECKING:
    from rem.health import Watched
    from rem.wal_archive import WalArchive
    from rem.storage.keys import DataKeys, KeyWrap
    from rem.storage.throttled import RateLimiter


def resolve_settings(settings: dict[str, Any] | None, database_block: str | None = None,
                     storage_block: str | None = None, encryption_block: str | None = None) -> Settings:
    """Settings given by the command line, else from the environment and config file; a RemDatabase
    block named by a deployment supplies the database's path, name, backup directory and storage
    block, so every flow of a deployment writes and reads where its backups are."""
    cfg = Settings.model_validate(settings) if settings else load_settings()
    update: dict[str, Any] = {}
    if database_block:
        from pathlib import Path

        from blocks.backup import RemDatabase

        block = RemDatabase.load(database_block)
        if not settings:  # the database's own config file, beside the path the block names
            cfg = load_settings(db_path=Path(block.path))
        update = {"db_path": Path(block.path), "backup_dir": Path(block.backup_dir) if block.backup_dir else None,
                  "db_name": block.db_name, "storage_block": block.storage_block,
                  "encryption_block": block.encryption_block}
    # A block a run names overrides the database block's; a parameter left empty (None) overrides
    # nothing, so a deployment's blocks always win over the worker's environment.
    update.update({k: v for k, v in (("storage_block", storage_block), ("encryption_block", encryption_block))
                   if v is not None})
    cfg = cfg.model_copy(update={k: v for k, v in update.items() if v is not None})
    current_db.set(db_label(cfg))
    label_run(current_db.get())
    return cfg


def has_remote(cfg: Settings) -> bool:
    return bool(cfg.storage_block or cfg.s3_bucket)


def remote_store(cfg: Settings, bounded: bool = False, bucket: str | None = None) -> ObjectStore:
    """The bucket: a BackupStorage block's (with its AwsCredentials) or the settings', its objects
    sealed when the encryption is client-side."""
    if cfg.storage_block and bucket is None:
        from blocks.backup import BackupEncryption, BackupStorage

        block = BackupStorage.load(cfg.storage_block)
        encryption = BackupEncryption.load(cfg.encryption_block) if cfg.encryption_block else None
        return sealed(cfg, throttled(cfg.backup_rate_limit_mb or block.rate_limit_mb, block.object_store(
            bounded, encryption.extra_args() if encryption else {},
            f"the REM Backup Storage block {cfg.storage_block!r}", **object_lock(cfg))), encryption, block)
    if not (bucket or cfg.s3_bucket):
        raise UsageError("--upload needs a bucket: set P8_S3_BUCKET (or [backup.s3] bucket, or --bucket)")
    return sealed(cfg, throttled(cfg.backup_rate_limit_mb, S3ObjectStore(S3Settings(
        bucket=bucket or cfg.s3_bucket, prefix=cfg.s3_prefix, endpoint_url=cfg.s3_endpoint_url, region=cfg.s3_region,
        storage_class=cfg.s3_storage_class, chunk_size_mb=cfg.backup_chunk_size_mb,
        concurrency=cfg.backup_upload_concurrency, extra_args=encryption_args(cfg.backup_encryption, cfg.kms_key_id),
        **object_lock(cfg), **(BOUNDED if bounded else {})))))


def object_lock(cfg: Settings) -> dict[str, Any]:
    """S3Settings' object lock from the settings: the mode S3 names, and for how long."""
    if cfg.backup_object_lock == "none":
        return {}
    return {"object_lock": cfg.backup_object_lock.upper(), "lock_days": cfg.lock_days}


def local_store(cfg: Settings) -> ObjectStore:
    return sealed(cfg, throttled(cfg.backup_rate_limit_mb, LocalObjectStore(cfg.local_backup_dir)))


_LIMITERS: dict[float, "RateLimiter"] = {}


def throttled(mb_per_second: float | None, objects: ObjectStore) -> ObjectStore:
    """The store held to a rate, when one is set; every store of a process shares one limiter, so
    the rate is the run's, whichever stores it uses."""
    if not mb_per_second:
        return objects
    from rem.storage.throttled import RateLimiter, ThrottledObjectStore

    return ThrottledObjectStore(objects, _LIMITERS.setdefault(mb_per_second, RateLimiter(mb_per_second)))


def innermost(objects: ObjectStore) -> ObjectStore:
    """The backend under any wrappers (sealed, throttled)."""
    while hasattr(objects, "inner"):
        objects = objects.inner
    return objects


def key_wrap(cfg: Settings, mode: str | None = None, kms_key_id: str | None = None, key_file: str | None = None,
             encryption=None, storage=None) -> "KeyWrap | None":
    """What wraps the databases' data keys (KMS or a key file), from the REM Backup Encryption block
    the settings name (encryption: that block, already loaded), else from the settings; None when rem
    does not encrypt. mode, kms_key_id and key_file override both (`rem backup rekey`'s new key). KMS
    is reached with the storage block's AwsCredentials when there is one (storage: loaded already)."""
    from pathlib import Path

    from rem.settings import CLIENT_SIDE
    from rem.storage.keys import KeyFileWrap, KmsWrap

    if cfg.encryption_block and encryption is None:
        from blocks.backup import BackupEncryption

        encryption = BackupEncryption.load(cfg.encryption_block)
    if encryption is not None:
        configured = (encryption.mode, encryption.kms_key_id, encryption.key_file, encryption.kms_endpoint_url)
    else:
        configured = (cfg.backup_encryption, cfg.kms_key_id, str(cfg.backup_key_file or "") or None,
                      cfg.kms_endpoint_url)
    mode = mode or configured[0]
    if mode not in CLIENT_SIDE:
        return None
    if mode == "key-file":
        return KeyFileWrap(Path(key_file or configured[2]))
    endpoint = configured[3] or cfg.kms_endpoint_url
    if cfg.storage_block and storage is None:
        from blocks.backup import BackupStorage

        storage = BackupStorage.load(cfg.storage_block)
    if storage is not None:  # its endpoint unless one is given for KMS
        return KmsWrap(kms_key_id or configured[1], lambda: storage.kms_client(endpoint))

    def client():
        import boto3

        return boto3.client("kms", endpoint_url=endpoint or cfg.s3_endpoint_url, region_name=cfg.s3_region)

    return KmsWrap(kms_key_id or configured[1], client)


_DATA_KEYS: dict[tuple[str, str], "DataKeys"] = {}


def sealed(cfg: Settings, objects: ObjectStore, encryption=None, storage=None) -> ObjectStore:
    """The store with its objects sealed and opened by rem, when the encryption is client-side. A
    process unwraps each data key once (one KMS Decrypt), however many times the store is built."""
    wrap = key_wrap(cfg, encryption=encryption, storage=storage)
    if wrap is None:
        return objects
    from rem.storage.encrypted import EncryptedObjectStore
    from rem.storage.keys import DataKeys

    keys = _DATA_KEYS.setdefault((objects.url(""), wrap.kek), DataKeys(objects, wrap))
    keys.objects = objects  # the newest client (bounded or not) for the key objects too
    return EncryptedObjectStore(objects, keys, cfg.backup_allow_plaintext)


def object_stores(cfg: Settings, bounded: bool = False) -> list[ObjectStore]:
    """Every place backups may be: the local directory, and the bucket when one is configured."""
    return [local_store(cfg)] + ([remote_store(cfg, bounded)] if has_remote(cfg) else [])


def identity(cfg: Settings) -> DatabaseIdentity:
    return database_identity(cfg.db_path, cfg.db_name)


def backup_store(cfg: Settings, upload: bool, bounded: bool = False) -> BackupStore:
    """Where this database's backups are written: the bucket with upload, else the local directory."""
    me = identity(cfg)
    return BackupStore(remote_store(cfg, bounded) if upload else local_store(cfg), me.name, owner=me)


def legacy_store(objects: ObjectStore) -> BackupStore:
    """The layout before databases had a level: backups/full/ in a bucket, full/ in a directory."""
    local = isinstance(innermost(objects), LocalObjectStore)
    return BackupStore(objects, None, "full/" if local else "backups/full/")


def all_stores(cfg: Settings, bounded: bool = False, from_db: str | None = None) -> list[BackupStore]:
    """One database's backups wherever they are: this database's, or with from_db another's
    (`legacy`: the old layout's)."""
    objects = object_stores(cfg, bounded)
    if from_db == LEGACY:
        return [legacy_store(o) for o in objects]
    if from_db:
        return [BackupStore(o, check_db_name(from_db, "--from-db")) for o in objects]
    me = identity(cfg)
    return [BackupStore(o, me.name, owner=me) for o in objects]


def other_stores(cfg: Settings, bounded: bool = True, databases: bool = False) -> list[BackupStore]:
    """The old layout's stores and, with databases, every other database's: searched only to say
    where a backup not found among this database's is, never to take it."""
    objects = object_stores(cfg, bounded)
    mine = identity(cfg).name
    others = [BackupStore(o, n) for o in objects for n in database_names(o) if n != mine] if databases else []
    return [legacy_store(o) for o in objects] + others


def database_names(objects: ObjectStore) -> list[str]:
    """Every database with backups in a store (the first level under its root)."""
    names = set()
    for info in objects.list(""):
        first, _, rest = info.key.partition("/")
        if rest.startswith("backups/") or rest == OWNER:
            names.add(first)
    return sorted(n for n in names if n not in ("backups", "full"))


def log_archive(cfg: Settings, bounded: bool = False, from_db: str | None = None) -> WalArchive:
    """The database's log archive: in [pitr] bucket when one is set, else beside its backups (the
    configured bucket, or the local backup directory)."""
    from rem.wal_archive import WalArchive  # numpy and the log format: not every command's start pays for them

    if cfg.pitr_bucket:
        objects: ObjectStore = remote_store(cfg, bounded, bucket=cfg.pitr_bucket)
    else:
        objects = remote_store(cfg, bounded) if has_remote(cfg) else local_store(cfg)
    if from_db == LEGACY:
        return WalArchive(objects, None)
    return WalArchive(objects, check_db_name(from_db, "--from-db") if from_db else identity(cfg).name)


def rekey(cfg: Settings, kms_key_id: str | None, key_file: str | None) -> list[dict]:
    """This database's data keys in every configured store (and the log archive's bucket) wrapped
    again, under a new KMS key or key file; no object but the key objects is rewritten."""
    from rem.storage.encrypted import EncryptedObjectStore

    if (kms_key_id is None) == (key_file is None):
        raise UsageError("rekey needs exactly one of --kms-key-id (a new KMS key) or --key-file (a new key file)")
    current = key_wrap(cfg)
    if current is None:
        raise UsageError("this database's backups are not encrypted by rem: set P8_BACKUP_ENCRYPTION to kms-envelope "
                         "or key-file (with the key they were made with) to rekey them")
    new = key_wrap(cfg, "kms-envelope" if kms_key_id else "key-file", kms_key_id, key_file)
    me = identity(cfg)
    stores = object_stores(cfg)
    if cfg.pitr_bucket:
        stores.append(remote_store(cfg, bucket=cfg.pitr_bucket))
    return [{"store": o.url(me.name + "/"), "rewrapped": o.keys.rekey(me.name, new)}
            for o in stores if isinstance(o, EncryptedObjectStore)]


def take_over(cfg: Settings) -> list[dict]:
    """Record this database as the owner of its name in every configured store (and the log
    archive's bucket): what each store recorded before."""
    me = identity(cfg)
    stores = object_stores(cfg)
    if cfg.pitr_bucket:
        stores.append(remote_store(cfg, bucket=cfg.pitr_bucket))
    return [{"store": o.url(me.name + "/"), "previous": take_over_name(o, me)} for o in stores]


def listed_stores(cfg: Settings, from_db: str | None = None,
                  all_dbs: bool = False) -> tuple[list[BackupStore], str | None]:
    """The stores `rem backup list` reads (this database's, or from_db's, or with all_dbs every
    database's, and the old layout's unless from_db), and the name of the database listing them."""
    if all_dbs:
        stores = [BackupStore(o, name) for o in object_stores(cfg, bounded=True) for name in database_names(o)]
    else:
        stores = all_stores(cfg, bounded=True, from_db=from_db)
    if not from_db:
        stores += other_stores(cfg)
    return stores, None if all_dbs else identity(cfg).name


def find_record(cfg: Settings, name: str, tenant: str | None, from_db: str | None) -> BackupRecord:
    """This database's backup called name, or with from_db another database's (`legacy`: the old layout's)."""
    return find_backup(all_stores(cfg, from_db=from_db), name, tenant,
                       None if from_db else lambda: other_stores(cfg, databases=True))


def watched(cfg: Settings) -> "Watched":
    """What health and metrics look at, with whatever could not be built said, never raised."""
    from rem.health import Watched, error_line  # prometheus_client: only for the commands that report

    found = Watched(cfg.db_path, pitr_enabled=cfg.pitr_enabled)
    try:
        found.stores = all_stores(cfg, bounded=True)
    except UsageError as exc:  # no database here and no name given
        found.stores_error = str(exc)
    if cfg.pitr_enabled:
        try:
            found.archive = log_archive(cfg, bounded=True)
        except Exception as exc:  # reported as a failed check, never as a failed health command
            found.archive_error = error_line(exc)
    return found
