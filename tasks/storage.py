"""The one place stores are built: S3 from the BackupStorage block the settings name, else from the
P8_S3_* settings; the local backup directory otherwise. Every flow, task and command gets its
ObjectStore and its database's BackupStore from here."""

from __future__ import annotations

from rem.backups import BackupStore
from rem.errors import UsageError
from rem.log_archive import WalArchive
from rem.identity import LEGACY, OWNER, DatabaseIdentity, check_db_name, database_identity, take_over_name
from rem.settings import Settings
from rem.storage import ObjectStore
from rem.storage.local import LocalObjectStore
from rem.storage.s3 import S3ObjectStore, S3Settings, encryption_args, s3_client

# Calls that give up within seconds: health, metrics and listings must answer while S3 is down.
BOUNDED = {"connect_timeout": 3, "read_timeout": 10, "max_attempts": 2}


def has_remote(cfg: Settings) -> bool:
    return bool(cfg.storage_block or cfg.s3_bucket)


def remote_store(cfg: Settings, bounded: bool = False, bucket: str | None = None) -> S3ObjectStore:
    """The bucket: a BackupStorage block's (with its AwsCredentials) or the settings'."""
    limits = BOUNDED if bounded else {}
    if cfg.storage_block and bucket is None:
        from blocks.backup import BackupEncryption, BackupStorage

        block = BackupStorage.load(cfg.storage_block)
        creds = block.bucket.credentials
        params = creds.aws_client_parameters
        extra = BackupEncryption.load(cfg.encryption_block).extra_args() if cfg.encryption_block else {}
        prefix = "/".join(p for p in (block.bucket.bucket_folder.strip("/"), block.prefix.strip("/")) if p)
        s3 = S3Settings(bucket=block.bucket.bucket_name, prefix=prefix, endpoint_url=params.endpoint_url,
                        region=creds.region_name or "us-east-1", storage_class=block.storage_class,
                        chunk_size_mb=block.chunk_size_mb, concurrency=block.concurrency, extra_args=extra,
                        source=f"the REM Backup Storage block {cfg.storage_block!r} (its bucket, endpoint and "
                               "AwsCredentials; Prefect UI -> Blocks)", **limits)
        session = creds.get_boto3_session()
        return S3ObjectStore(s3, client_factory=lambda config: session.client(
            "s3", endpoint_url=params.endpoint_url, region_name=s3.region, config=config))
    if not (bucket or cfg.s3_bucket):
        raise UsageError("--upload needs a bucket: set P8_S3_BUCKET (or [backup.s3] bucket, or --bucket)")
    return S3ObjectStore(S3Settings(
        bucket=bucket or cfg.s3_bucket, prefix=cfg.s3_prefix, endpoint_url=cfg.s3_endpoint_url, region=cfg.s3_region,
        storage_class=cfg.s3_storage_class, chunk_size_mb=cfg.backup_chunk_size_mb,
        concurrency=cfg.backup_upload_concurrency, extra_args=encryption_args(cfg.backup_encryption, cfg.kms_key_id),
        **limits))


def local_store(cfg: Settings) -> LocalObjectStore:
    return LocalObjectStore(cfg.local_backup_dir)


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
    return BackupStore(objects, None, "full/" if isinstance(objects, LocalObjectStore) else "backups/full/")


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
    if cfg.pitr_bucket:
        objects: ObjectStore = remote_store(cfg, bounded, bucket=cfg.pitr_bucket)
    else:
        objects = remote_store(cfg, bounded) if has_remote(cfg) else local_store(cfg)
    if from_db == LEGACY:
        return WalArchive(objects, None)
    return WalArchive(objects, check_db_name(from_db, "--from-db") if from_db else identity(cfg).name)


def take_over(cfg: Settings) -> list[dict]:
    """Record this database as the owner of its name in every configured store (and the log
    archive's bucket): what each store recorded before."""
    me = identity(cfg)
    stores = object_stores(cfg)
    if cfg.pitr_bucket:
        stores.append(remote_store(cfg, bucket=cfg.pitr_bucket))
    return [{"store": o.url(me.name + "/"), "previous": take_over_name(o, me)} for o in stores]
