"""Settings: command-line flags beat P8_* environment variables, which beat the TOML file.

The TOML file is `--config` or P8_CONFIG when given, else the database's own, beside its directory
(`{db_path}.rem.toml`: /var/lib/rem/db.rem.toml), which every command, worker and service running
for that database reads without being told, and `rem pitr enable` writes. It uses the runbook's tables:

    db_path = "/var/lib/rem/db"
    db_name = "orders-eu-1"   (optional; default derived from the database, see rem.identity)
    [backup]        compression, chunk_size_mb, dir, upload_concurrency, encryption, kms_key_id, key_file,
                    kms_endpoint_url, object_lock, object_lock_days, keep_daily, keep_weekly, keep_monthly,
                    rate_limit_mb, allow_plaintext
    [backup.s3]     bucket, prefix, endpoint_url, region, storage_class
    [pitr]          enabled, interval_seconds, follow_interval_seconds, bucket, segment_max_mb
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rem.errors import ConfigError
from rem.identity import unknown_variables

# P8_* variables read outside Settings.
EXTRA_VARIABLES = {"P8_CONFIG", "P8_ALERT_WEBHOOK_URL"}

# (table, key) in the TOML file -> settings field
TOML_KEYS: dict[tuple[str, str], str] = {
    ("", "db_path"): "db_path",
    ("", "db_name"): "db_name",
    ("", "default_tenant"): "default_tenant",
    ("backup", "compression"): "backup_compression",
    ("backup", "chunk_size_mb"): "backup_chunk_size_mb",
    ("backup", "dir"): "backup_dir",
    ("backup", "upload_concurrency"): "backup_upload_concurrency",
    ("backup", "gc_grace_hours"): "backup_gc_grace_hours",
    ("backup", "encryption"): "backup_encryption",
    ("backup", "kms_key_id"): "kms_key_id",
    ("backup", "key_file"): "backup_key_file",
    ("backup", "kms_endpoint_url"): "kms_endpoint_url",
    ("backup", "rate_limit_mb"): "backup_rate_limit_mb",
    ("backup", "allow_plaintext"): "backup_allow_plaintext",
    ("backup", "object_lock"): "backup_object_lock",
    ("backup", "object_lock_days"): "backup_object_lock_days",
    ("backup", "keep_daily"): "backup_keep_daily",
    ("backup", "keep_weekly"): "backup_keep_weekly",
    ("backup", "keep_monthly"): "backup_keep_monthly",
    ("backup.s3", "bucket"): "s3_bucket",
    ("backup.s3", "prefix"): "s3_prefix",
    ("backup.s3", "endpoint_url"): "s3_endpoint_url",
    ("backup.s3", "region"): "s3_region",
    ("backup.s3", "storage_class"): "s3_storage_class",
    ("pitr", "enabled"): "pitr_enabled",
    ("pitr", "interval_seconds"): "pitr_interval_seconds",
    ("pitr", "follow_interval_seconds"): "pitr_follow_interval_seconds",
    ("pitr", "segment_max_mb"): "pitr_segment_max_mb",
    ("pitr", "page_segments"): "pitr_page_segments",
    ("pitr", "bucket"): "pitr_bucket",
}
FIELD_TO_TOML = {field: (table, key) for (table, key), field in TOML_KEYS.items()}
ENCRYPTION_MODES = ("none", "AES256", "aws:kms", "kms-envelope", "key-file")
CLIENT_SIDE = ("kms-envelope", "key-file")  # rem seals the objects itself (rem.storage.encrypted)
STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "REDUCED_REDUNDANCY")


def read_toml(path: Path) -> dict[str, Any]:
    """Flatten the runbook's tables into settings fields; unknown keys are an error naming the file."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check --config / P8_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}

    def walk(table: str, values: dict) -> None:
        for key, value in values.items():
            name = f"{table}.{key}" if table else key
            if isinstance(value, dict) and any(t == name for t, _ in TOML_KEYS):
                walk(name, value)
            elif (table, key) in TOML_KEYS:
                flat[TOML_KEYS[(table, key)]] = value
            else:
                accepted = ", ".join(k for t, k in TOML_KEYS if t == table) or "none"
                shown = f"[{table}] {key}" if table else key
                raise ConfigError(f"{path}: unknown key {shown}; accepted{' in [' + table + ']' if table else ''}: {accepted}")

    walk("", data)
    return flat


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class Settings(BaseSettings):
    """Everything a command needs to find the database and where its backups go."""

    model_config = SettingsConfigDict(env_prefix="P8_", extra="ignore", validate_default=True)

    db_path: Path = Field(Path.home() / ".p8" / "db", description="The REM database directory")
    db_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description=(
        "The database's name in the store: 1-63 lowercase letters, digits, '-'; default: its directory name "
        "and RocksDB IDENTITY (db-3f2a9c1e)"))
    default_tenant: str = Field("default", description="Tenant used when a command is not given one")
    backup_dir: Path | None = Field(None, description="Local backups; default: backups/ beside the database directory")
    # 2, not zstd's 3: on the engine's SSTs (LZ4 blocks) level 3's larger tables find almost nothing
    # more (0.5% smaller) and cost 1.6x the CPU.
    backup_compression: int = Field(2, ge=1, le=22, description="zstd level, 1 to 22")
    backup_chunk_size_mb: int = Field(100, ge=5, le=5120, description="Multipart part size in MiB (S3 minimum 5)")
    backup_upload_concurrency: int = Field(4, ge=1, le=64, description="Parts uploaded or downloaded at once")
    backup_gc_grace_hours: float = Field(6, ge=0, description="Hours an unreferenced shared SST object is kept "
                                         "before prune deletes it (a backup being written may still name it)")
    backup_encryption: Literal[ENCRYPTION_MODES] = Field("none", description=(  # type: ignore[valid-type]
        "none; AES256 or aws:kms (the bucket encrypts); kms-envelope or key-file (rem encrypts every object "
        "before it leaves the host: README, Security)"))
    kms_key_id: str | None = Field(None, description="KMS key (id, ARN or alias) for aws:kms and kms-envelope")
    backup_key_file: Path | None = Field(None, description="32-byte key file for key-file encryption "
                                         "(`openssl rand -hex 32`)")
    kms_endpoint_url: str | None = Field(None, description="KMS-compatible endpoint; default: the S3 endpoint's")
    backup_allow_plaintext: bool = Field(False, description=(
        "with rem's encryption on, also read objects that are not encrypted (backups made before it was turned on)"))
    backup_rate_limit_mb: float | None = Field(None, gt=0, description=(
        "MB/s a backup, restore, download or the log follower moves to or from the store, at most (default: "
        "no limit)"))
    backup_keep_daily: int = Field(7, ge=0, description="prune's default --keep-daily (and the lock it needs)")
    backup_keep_weekly: int = Field(4, ge=0, description="prune's default --keep-weekly")
    backup_keep_monthly: int = Field(3, ge=0, description="prune's default --keep-monthly")
    backup_object_lock: Literal["none", "governance", "compliance"] = Field("none", description=(
        "S3 Object Lock mode of every object rem writes to the bucket (the bucket must have Object Lock enabled)"))
    backup_object_lock_days: float | None = Field(None, gt=0, description=(
        "days each object is locked after it is written or reused; default: the longest retention class "
        "(max of keep_daily, 7 x keep_weekly, 31 x keep_monthly)"))
    s3_bucket: str | None = Field(None, min_length=3, description="Bucket for backups, WAL archive and exports")
    s3_prefix: str = Field("", description="Key prefix inside the bucket")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...)")
    s3_region: str = Field("us-east-1", description="AWS region")
    s3_storage_class: Literal[STORAGE_CLASSES] = Field("STANDARD_IA", description="S3 storage class of backup objects")
    storage_block: str | None = Field(None, description="BackupStorage block holding the bucket (deployments)")
    encryption_block: str | None = Field(None, description="BackupEncryption block for uploads (deployments)")
    pitr_enabled: bool = Field(False, description="Continuous WAL archival is on")
    pitr_interval_seconds: float = Field(300, ge=1, description="Seconds between scheduled log archival passes")
    pitr_follow_interval_seconds: float = Field(1, ge=0.2, le=3600,
                                                description="Seconds between the follower's shipments")
    pitr_bucket: str | None = Field(None, min_length=3, description="WAL archive bucket; default: s3_bucket")
    pitr_segment_max_mb: float = Field(16, gt=0, le=1024, description="Log MiB per archived segment at most")
    pitr_page_segments: int = Field(500, ge=2, le=100_000,
                                    description="Segments sealed into one page object, out of the manifest")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _TomlSource(settings_cls, _toml_values.get() or {})

    @property
    def lock_days(self) -> float:
        """How long an object stays locked: long enough for the retention class that keeps it longest."""
        return self.backup_object_lock_days or float(max(self.backup_keep_daily, 7 * self.backup_keep_weekly,
                                                         31 * self.backup_keep_monthly, 1))

    @property
    def local_backup_dir(self) -> Path:
        return self.backup_dir or self.db_path.parent / "backups"


class _ContextValue:
    """The TOML values of the settings being built (pydantic-settings builds sources per class)."""

    def __init__(self):
        self.value: dict[str, Any] | None = None

    def get(self):
        return self.value


_toml_values = _ContextValue()


def _describe_source(field: str, flags: dict[str, Any], config_path: Path | None) -> str:
    if field in flags:
        return f"--{field.replace('_', '-')}"
    env = f"P8_{field.upper()}"
    if env in os.environ:
        return env
    if config_path is not None and field in FIELD_TO_TOML:
        table, key = FIELD_TO_TOML[field]
        return f"{config_path}: [{table}] {key}" if table else f"{config_path}: {key}"
    return field


def database_config(db_path: str | os.PathLike) -> Path:
    """The database's own config file: beside its directory, never inside it (not ours to write)."""
    db_path = Path(db_path)
    return db_path.parent / f"{db_path.name}.rem.toml"


def config_file(config: str | os.PathLike | None = None, db_path: str | os.PathLike | None = None) -> Path:
    """The config file a command reads, and `rem pitr enable` writes: --config, P8_CONFIG, else the
    database's own (whose path comes from the flag, P8_DB_PATH or the default)."""
    if config:
        return Path(config)
    if os.environ.get("P8_CONFIG"):
        return Path(os.environ["P8_CONFIG"])
    return database_config(db_path or os.environ.get("P8_DB_PATH") or Settings.model_fields["db_path"].default)


def load_settings(config: str | os.PathLike | None = None, **flags: Any) -> Settings:
    """Build settings from flags (None means not given), the environment and the TOML file."""
    flags = {k: v for k, v in flags.items() if v is not None}
    config_path = config_file(config, flags.get("db_path"))
    if not (config or os.environ.get("P8_CONFIG")) and not config_path.is_file():
        config_path = None  # the database's own file is optional; a named one must exist
    _toml_values.value = read_toml(config_path) if config_path else {}
    try:
        settings = Settings(**flags)
        for line in unknown_variables({f"P8_{f.upper()}" for f in Settings.model_fields} | EXTRA_VARIABLES):
            logging.getLogger("rem").warning(line)
        if settings.backup_encryption in ("aws:kms", "kms-envelope") and not settings.kms_key_id:
            raise ConfigError(f"{_describe_source('backup_encryption', flags, config_path)}: "
                              f"{settings.backup_encryption} encryption needs a key: set P8_KMS_KEY_ID (or [backup] "
                              "kms_key_id)")
        if settings.backup_encryption == "key-file" and not settings.backup_key_file:
            raise ConfigError(f"{_describe_source('backup_encryption', flags, config_path)}: key-file encryption "
                              "needs a key file: set P8_BACKUP_KEY_FILE (or [backup] key_file)")
        return settings
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        info = Settings.model_fields.get(field)
        accepted = f"; accepted: {info.description}" if info and info.description else ""
        raise ConfigError(f"{_describe_source(field, flags, config_path)}: {err['msg']} "
                          f"(got {err.get('input')!r}){accepted}") from None
    finally:
        _toml_values.value = None


def enable_pitr(path: Path, bucket: str, interval: int, **flags) -> tuple[dict, "Settings"]:
    """Turn PITR on in the config file at path (its [pitr] table: enabled, bucket, interval), kept
    as it was unless the result is a file the next command can read; the table and those settings."""
    import tomli_w

    data = tomllib.loads(path.read_text()) if path.exists() else {}
    data.setdefault("pitr", {}).update(enabled=True, bucket=bucket, interval_seconds=interval)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(tomli_w.dumps(data))
    try:
        settings = load_settings(tmp, **flags)  # refuse to write a file the next command could not read
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(path)
    return data["pitr"], settings
