"""Blocks for the backup flows, modelled on prefect-aws (a description on every field)."""

from __future__ import annotations

from typing import Literal, Optional

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import Field, model_validator

from rem.settings import STORAGE_CLASSES
from rem.storage.s3 import BOUNDED, S3ObjectStore, S3Settings, encryption_args


class RemDatabase(Block):
    """A REM database on a host: the directory the engine opens."""

    _block_type_name = "REM Database"
    _block_type_slug = "rem-database"
    _logo_url = "https://avatars.githubusercontent.com/u/39270919?s=200"  # type: ignore[assignment]
    _description = "Where a REM (percolate-rocks) database lives on its host."
    _documentation_url = "https://pypi.org/project/percolate-rocks/"  # type: ignore[assignment]

    path: str = Field(default=..., description="Directory of the REM database (P8_DB_PATH).")
    default_tenant: Optional[str] = Field(
        default=None, description="Tenant backed up when a run names none; empty means the whole database.")
    backup_dir: Optional[str] = Field(
        default=None, description="Local backup directory; default: backups/ beside the database directory.")
    db_name: Optional[str] = Field(
        default=None, description="The database's name in the store (P8_DB_NAME); default: derived from it.")
    storage_block: Optional[str] = Field(
        default=None, description="The REM Backup Storage block its backups, log archive and exports use.")
    encryption_block: Optional[str] = Field(
        default=None, description="The REM Backup Encryption block every flow of this database uses (kms-envelope "
                                  "or key-file: its backups, log archive and exports are sealed with it).")


class BackupEncryption(Block):
    """How backup objects are encrypted: by the bucket (upload ExtraArgs), or by rem before they
    leave the host (a data key per database, wrapped by KMS or by a local key file)."""

    _block_type_name = "REM Backup Encryption"
    _block_type_slug = "rem-backup-encryption"
    _logo_url = "https://avatars.githubusercontent.com/u/39270919?s=200"  # type: ignore[assignment]
    _description = ("Client-side envelope encryption (kms-envelope, key-file) or the bucket's SSE-S3 (AES256) / "
                    "SSE-KMS (aws:kms), for every backup, log segment and export.")
    _documentation_url = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/serv-side-encryption.html"  # type: ignore[assignment]

    mode: Literal["AES256", "aws:kms", "kms-envelope", "key-file"] = Field(
        default="AES256", description="kms-envelope or key-file: rem encrypts every object (AES-256-GCM) with a "
                                      "data key per database; AES256 or aws:kms: the bucket encrypts (S3 SSE).")
    kms_key_id: Optional[str] = Field(
        default=None, description="KMS key id, ARN or alias; required for aws:kms and kms-envelope.")
    key_file: Optional[str] = Field(
        default=None, description="Path on the worker of a 32-byte key file (`openssl rand -hex 32`); key-file only.")
    kms_endpoint_url: Optional[str] = Field(
        default=None, description="KMS-compatible endpoint; default: the storage block's endpoint, else AWS's.")

    @model_validator(mode="after")
    def _modes_need_their_key(self) -> "BackupEncryption":
        if self.mode in ("aws:kms", "kms-envelope") and not self.kms_key_id:
            raise ValueError(f"{self.mode} encryption needs kms_key_id")
        if self.mode == "key-file" and not self.key_file:
            raise ValueError("key-file encryption needs key_file")
        return self

    def extra_args(self) -> dict[str, str]:
        """The boto3 upload ExtraArgs for this encryption."""
        return encryption_args(self.mode, self.kms_key_id)


class BackupStorage(Block):
    """An S3 (or S3-compatible) bucket for backups, with how they are uploaded."""

    _block_type_name = "REM Backup Storage"
    _block_type_slug = "rem-backup-storage"
    _logo_url = "https://avatars.githubusercontent.com/u/39270919?s=200"  # type: ignore[assignment]
    _description = "Bucket, credentials and endpoint for REM backups, with storage class, part size and compression."
    _documentation_url = "https://docs.prefect.io/integrations/prefect-aws"  # type: ignore[assignment]

    bucket: S3Bucket = Field(
        default=..., description="prefect-aws S3Bucket: bucket name, AwsCredentials (keys, region, endpoint_url "
                                 "in aws_client_parameters for S3-compatible stores) and bucket folder.")
    prefix: str = Field(default="", description="Key prefix inside the bucket, before backups/full/.")
    storage_class: Literal[STORAGE_CLASSES] = Field(  # type: ignore[valid-type]
        default="STANDARD_IA", description="S3 storage class of backup objects.")
    chunk_size_mb: int = Field(default=100, ge=5, le=5120, description="Multipart part size in MiB (S3 minimum 5).")
    concurrency: int = Field(default=4, ge=1, le=64, description="Parts uploaded or downloaded in parallel.")
    compression_level: int = Field(default=2, ge=1, le=22, description="zstd compression level.")
    rate_limit_mb: Optional[float] = Field(
        default=None, gt=0, description="MB/s backups, restores, downloads and the log follower move at most "
                                        "(empty: no limit), so they never take the disk or network from the engine.")

    def object_store(self, bounded: bool = False, extra_args: dict[str, str] | None = None,
                     named: str = "this REM Backup Storage block", **lock) -> S3ObjectStore:
        """The bucket as an ObjectStore, its client built from the block's own AwsCredentials (session,
        region, endpoint), as prefect-aws's S3Bucket builds its client; bounded: calls that give up
        within seconds."""
        creds = self.bucket.credentials
        params = creds.aws_client_parameters
        prefix = "/".join(p for p in (self.bucket.bucket_folder.strip("/"), self.prefix.strip("/")) if p)
        s3 = S3Settings(bucket=self.bucket.bucket_name, prefix=prefix, endpoint_url=params.endpoint_url,
                        region=creds.region_name or "us-east-1", storage_class=self.storage_class,
                        chunk_size_mb=self.chunk_size_mb, concurrency=self.concurrency, extra_args=extra_args or {},
                        source=f"{named} (its bucket, endpoint and AwsCredentials; Prefect UI -> Blocks)",
                        **lock, **(BOUNDED if bounded else {}))
        session = creds.get_boto3_session()
        return S3ObjectStore(s3, client_factory=lambda config: session.client(
            "s3", endpoint_url=params.endpoint_url, region_name=s3.region, config=config))

    def kms_client(self, endpoint_url: str | None = None):
        """A KMS client with the block's own AwsCredentials (and its endpoint, unless one is given)."""
        creds = self.bucket.credentials
        return creds.get_boto3_session().client("kms", region_name=creds.region_name or "us-east-1",
                                                endpoint_url=endpoint_url or creds.aws_client_parameters.endpoint_url)
