"""Where backups live: a local directory or an S3 bucket, with the runbook's layout

    {root}/backups/full/{tenant}/{name}/metadata.json | rocksdb.tar.zst | schemas.json

(locally {backup_dir}/full/{tenant}/{name}/). A whole-database backup uses the tenant segment
`_all`; tenant ids cannot start with '_'. A backup exists only once its metadata.json does:
it is written last, so an interrupted run leaves nothing `list` or `restore` would take.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, Field, field_validator, model_validator

from rem.errors import NoSpace, RemError, UsageError
from rem.format import check_tenant

ALL_TENANTS = "_all"
METADATA = "metadata.json"
ARCHIVE = "rocksdb.tar.zst"
SCHEMAS = "schemas.json"
CLAIM = ".claim"
FORMAT_VERSION = 1
NAME_MAX = 128
# An S3 claim older than this whose backup never got its metadata.json was left by a run that died.
CLAIM_STALE_SECONDS = 6 * 3600


class BackupMetadata(BaseModel):
    """metadata.json: everything a restore, a listing or PITR needs to know of a backup."""

    format_version: int = FORMAT_VERSION
    name: str
    kind: str = Field(description="full (whole database) or tenant")
    tenant_id: str | None = Field(description="None for a whole-database backup")
    timestamp: str = Field(description="RFC 3339 UTC time the snapshot was taken")
    size_bytes: int = Field(description="compressed archive size")
    uncompressed_bytes: int
    entity_count: int
    schema_count: int
    checksum_sha256: str
    rocksdb_version: str = Field(description="the RocksDB that wrote the database (its OPTIONS file): the engine's")
    tools_rocksdb_version: str | None = Field(default=None, description="the RocksDB our tools ran (rocksdict's)")
    schema_version: str = Field(description="SHA-256 prefix of schemas.json: changes when any schema does")
    wal_last_seq: int = Field(description="highest logical-WAL sequence inside the snapshot")
    last_sequence: int | None = Field(default=None, description="RocksDB's last sequence number in a whole-database "
                                      "snapshot: every write up to it is in the backup, none after")
    last_sequence_time: str | None = Field(default=None, description="when the snapshot held last_sequence: the "
                                           "instant a point-in-time restore from this base starts at")
    wal_last_timestamp: str | None = Field(default=None, description="time of the logical WAL's entry wal_last_seq")
    column_families: dict[str, int] = Field(description="keys per column family")
    host: str
    tool_version: str
    duration_seconds: float
    compression: str
    online: bool = Field(description="a writer held the database while it was backed up")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        try:
            return check_name(name)
        except UsageError as exc:  # pydantic reports ValueErrors as validation errors
            raise ValueError(str(exc)) from None

    @field_validator("tenant_id")
    @classmethod
    def _valid_tenant(cls, tenant: str | None) -> str | None:
        try:
            return None if tenant is None else check_tenant(tenant)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _kind_matches_tenant(self) -> "BackupMetadata":
        if (self.kind == "tenant") != (self.tenant_id is not None):
            raise ValueError(f"kind {self.kind!r} does not go with tenant_id {self.tenant_id!r}")
        return self

    @property
    def tenant_segment(self) -> str:
        return self.tenant_id or ALL_TENANTS


@dataclass
class BackupRecord:
    """A backup as found: `segment` and `folder` are where its metadata.json was, and every action on
    the backup (download, delete) uses them, never the names written inside the file."""

    metadata: BackupMetadata
    location: str
    store: "LocalStore | S3Store"
    segment: str
    folder: str

    @property
    def name(self) -> str:
        return self.metadata.name


class BackupNotFound(UsageError):
    pass


def backup_name(now: datetime | None = None) -> str:
    """The default name: the snapshot's UTC time, sortable, without ':' (2025-10-25T143000Z)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H%M%S") + "Z"


def check_name(name: str) -> str:
    if (not name or len(name) > NAME_MAX or name.startswith((".", "_"))
            or any(not (c.isascii() and (c.isalnum() or c in "-_.")) for c in name)):
        shown = name if len(name) <= 40 else name[:40] + f"... ({len(name)} characters)"
        raise UsageError(f"backup name {shown!r}: use 1 to {NAME_MAX} letters, digits, '-', '_' or '.', "
                         "not starting with '.' or '_'")
    return name


def claim_is_stale(owner: dict) -> bool:
    """A claim whose run is gone: its process is dead on this host, or it is older than any backup runs."""
    if time.time() - float(owner.get("started", 0)) > CLAIM_STALE_SECONDS:
        return True
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner.get("pid", 0)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
    return False


def _parse_found(body: bytes, where: str, segment: str, folder: str) -> BackupMetadata | None:
    """The metadata found at where, or None (with a warning) when it is unreadable or names another
    place than the one it was found in: such a record is never listed, restored or deleted."""
    from tasks.runtime import get_logger

    try:
        metadata = BackupMetadata.model_validate_json(body)
    except ValueError as exc:
        get_logger().warning("skipping %s: not valid backup metadata (%s)", where, str(exc).splitlines()[0])
        return None
    if (metadata.tenant_segment, metadata.name) != (segment, folder):
        get_logger().warning("skipping %s: it says backup %r of %r but lies in %s/%s; rem did not write it there, "
                             "so it is neither listed nor acted on", where, metadata.name, metadata.tenant_segment,
                             segment, folder)
        return None
    return metadata


def private_file(path: Path) -> BinaryIO:
    """A new file only its owner can read: backups hold the `keys` column family."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


@contextmanager
def space_checked(path: Path, what: str) -> Iterator[None]:
    """ENOSPC becomes one line naming the path (and is not retried)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpace(path, what) from None
        raise


# ---------------------------------------------------------------------------------- local


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._claims: dict[tuple[str, str], int] = {}

    def describe(self) -> str:
        return str(self.root)

    def backup_dir(self, tenant_segment: str, name: str) -> Path:
        return self.root / "full" / tenant_segment / name

    def location(self, tenant_segment: str, name: str) -> str:
        return str(self.backup_dir(tenant_segment, name))

    def exists(self, tenant_segment: str, name: str) -> bool:
        return (self.backup_dir(tenant_segment, name) / METADATA).exists()

    def prepare(self, tenant_segment: str, name: str) -> None:
        """Claim the name for this run: a flock on the backup folder's .claim file, held until release().
        A second run with the same name is refused while the first lives; a dead run's claim is free."""
        if self.exists(tenant_segment, name):
            raise UsageError(f"a backup named {name!r} already exists in {self.root}; choose another --name")
        folder = self.backup_dir(tenant_segment, name)
        with space_checked(folder, "--backup-dir / P8_BACKUP_DIR"):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(folder / CLAIM, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"a backup named {name!r} is being written right now by another run in {self.root}; "
                             "choose another --name") from None
        self._claims[(tenant_segment, name)] = fd
        if self.exists(tenant_segment, name):  # the other run finished between our two looks
            self.release(tenant_segment, name)
            raise UsageError(f"a backup named {name!r} already exists in {self.root}; choose another --name")

    @contextmanager
    def archive_writer(self, tenant_segment: str, name: str, spool_dir: Path) -> Iterator[BinaryIO]:
        """The archive file itself (written as .partial, renamed when complete); no spool needed."""
        folder = self.backup_dir(tenant_segment, name)
        partial = folder / (ARCHIVE + ".partial")
        try:
            with space_checked(partial, "--backup-dir / P8_BACKUP_DIR"), private_file(partial) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, folder / ARCHIVE)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def put_file_bytes(self, tenant_segment: str, name: str, filename: str, data: bytes) -> None:
        folder = self.backup_dir(tenant_segment, name)
        tmp = folder / (filename + ".partial")
        with space_checked(tmp, "--backup-dir / P8_BACKUP_DIR"), private_file(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / filename)

    def finish(self, tenant_segment: str, name: str, tags: dict[str, str]) -> None:
        """Local files carry no tags."""

    def discard(self, tenant_segment: str, name: str) -> None:
        """Remove a failed attempt's files (the claim stays for a retry)."""
        folder = self.backup_dir(tenant_segment, name)
        if not (folder / METADATA).exists():
            for filename in (ARCHIVE, ARCHIVE + ".partial", SCHEMAS, SCHEMAS + ".partial"):
                (folder / filename).unlink(missing_ok=True)

    def release(self, tenant_segment: str, name: str) -> None:
        """End this run's claim; without metadata.json the folder is an unfinished backup and goes."""
        fd = self._claims.pop((tenant_segment, name), None)
        if fd is None:
            return
        folder = self.backup_dir(tenant_segment, name)
        try:
            if (folder / METADATA).exists():
                (folder / CLAIM).unlink(missing_ok=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    folder.parent.rmdir()  # a tenant folder this run made and nothing else uses
                except OSError:
                    pass
        finally:
            os.close(fd)

    def list(self) -> list[BackupRecord]:
        records = []
        for meta in sorted(self.root.glob(f"full/*/*/{METADATA}")):
            folder = meta.parent
            if folder.is_symlink() or folder.parent.is_symlink() or meta.is_symlink():
                from tasks.runtime import get_logger

                get_logger().warning("skipping %s: a symbolic link; backups are plain directories", meta)
                continue
            metadata = _parse_found(meta.read_bytes(), str(meta), folder.parent.name, folder.name)
            if metadata is not None:
                records.append(BackupRecord(metadata, str(folder), self, folder.parent.name, folder.name))
        return records

    def fetch(self, record: BackupRecord, out_dir: Path, progress: Callable[[int], None] | None = None) -> Path:
        """Local backups are restored in place: nothing to download."""
        return self.backup_dir(record.segment, record.folder)

    def delete(self, record: BackupRecord) -> None:
        """metadata.json first: a half-deleted backup is at once invisible, never mistaken for whole."""
        folder = self.backup_dir(record.segment, record.folder)
        (folder / METADATA).unlink(missing_ok=True)
        shutil.rmtree(folder)


# ------------------------------------------------------------------------------------- S3


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free a byte range of a file on disk (Linux fallocate PUNCH_HOLE); quietly nothing elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate(fd, 0x02 | 0x01, ctypes.c_longlong(offset), ctypes.c_longlong(length))
    except (OSError, AttributeError):
        pass


class SpooledMultipartUpload:
    """A write-only file-like object: bytes are appended to a spool file, and every time a part's
    worth is complete that range is uploaded (concurrency parts at a time). Each part carries
    botocore's default CRC32, which S3 checks; the archive's SHA-256 covers the whole file (a
    SHA-256 per part as well cost 1.4 s of 10 on a 640 MB upload here)."""

    def __init__(self, client, bucket: str, key: str, put_args: dict, part_size: int, concurrency: int, spool: Path):
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.spool = spool
        self.file = open(spool, "wb", buffering=0)
        self.size = 0
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-part")
        self.in_flight = threading.Semaphore(concurrency * 2)  # bounds how far the writer runs ahead
        self.futures: list = []
        self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **put_args)["UploadId"]

    def write(self, data) -> int:
        self.file.write(data)
        self.size += len(data)
        while self.size >= (len(self.futures) + 1) * self.part_size:
            self._submit(len(self.futures) * self.part_size, self.part_size)
        return len(data)

    def flush(self) -> None:
        """Bytes reach the spool file as they are written; nothing is buffered here."""

    def _submit(self, start: int, length: int) -> None:
        for future in self.futures:
            if future.done():
                future.result()  # surface a failed part now rather than after the whole stream
        self.in_flight.acquire()
        number = len(self.futures) + 1
        self.futures.append(self.pool.submit(self._upload_part, number, start, length))

    def _upload_part(self, number: int, start: int, length: int) -> dict:
        from s3transfer.utils import ReadFileChunk

        try:
            with ReadFileChunk.from_filename(str(self.spool), start, length) as body:
                reply = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                PartNumber=number, Body=body)
            _punch_hole(self.file.fileno(), start, length)
            return {"PartNumber": number, "ETag": reply["ETag"]}
        finally:
            self.in_flight.release()

    def complete(self) -> None:
        if self.size > len(self.futures) * self.part_size or not self.futures:
            start = len(self.futures) * self.part_size
            self._submit(start, self.size - start)
        parts = [future.result() for future in self.futures]
        self.pool.shutdown()
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": parts})
        self._close()

    def abort(self) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        finally:
            self._close()

    def _close(self) -> None:
        self.file.close()
        self.spool.unlink(missing_ok=True)


@dataclass
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    storage_class: str = "STANDARD_IA"
    chunk_size_mb: int = 100
    concurrency: int = 4
    extra_args: dict[str, str] | None = None  # server-side encryption headers
    # Backups and restores wait out a slow S3; health, metrics and listings must answer in seconds.
    connect_timeout: float = 10
    read_timeout: float = 120
    max_attempts: int = 10


def s3_client(cfg: S3Settings, client_factory: Callable[..., Any] | None = None):
    """A boto3 S3 client that retries throttling, 5xx and dropped connections (standard mode)."""
    from botocore.config import Config

    config = Config(retries={"max_attempts": cfg.max_attempts, "mode": "standard"}, connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout, max_pool_connections=max(10, cfg.concurrency * 2 + 2))
    if client_factory is not None:  # a prefect-aws AwsCredentials block's get_client
        return client_factory(config)
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=config)


class S3Store:
    def __init__(self, cfg: S3Settings, client=None):
        self.cfg = cfg
        self.client = client or s3_client(cfg)
        self.prefix = cfg.prefix.strip("/") + "/" if cfg.prefix.strip("/") else ""

    def describe(self) -> str:
        return f"s3://{self.cfg.bucket}/{self.prefix}backups/full/"

    def key(self, tenant_segment: str, name: str, filename: str = "") -> str:
        return f"{self.prefix}backups/full/{tenant_segment}/{name}/{filename}"

    def location(self, tenant_segment: str, name: str) -> str:
        return f"s3://{self.cfg.bucket}/{self.key(tenant_segment, name)}"

    def _put_args(self) -> dict[str, str]:
        return {"StorageClass": self.cfg.storage_class, **(self.cfg.extra_args or {})}

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        chunk = self.cfg.chunk_size_mb * 1024 * 1024
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=self.cfg.concurrency, use_threads=True)
        # A streamed (non-seekable) upload holds whole parts in memory, by default up to ten of them:
        # allow only the parts in flight, so memory is concurrency x part size whatever the database size.
        config.max_in_memory_upload_chunks = self.cfg.concurrency
        return config

    def exists(self, tenant_segment: str, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, name, METADATA))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def prepare(self, tenant_segment: str, name: str) -> None:
        """Refuse a taken name and claim it (a conditional put of .claim, so two runs cannot both
        write one backup); abort multipart uploads that interrupted runs of this tenant left."""
        from botocore.exceptions import ClientError, EndpointConnectionError

        try:
            self.client.head_bucket(Bucket=self.cfg.bucket)
        except ClientError as exc:
            raise RemError(f"s3://{self.cfg.bucket}: bucket not reachable ({exc.response.get('Error', {}).get('Code')}); "
                           "check P8_S3_BUCKET and credentials") from None
        except EndpointConnectionError as exc:
            raise RemError(f"s3://{self.cfg.bucket}: cannot connect to {exc.kwargs.get('endpoint_url')}; "
                           "check P8_S3_ENDPOINT_URL") from None
        if self.exists(tenant_segment, name):
            raise UsageError(f"a backup named {name!r} already exists in {self.describe()}; choose another --name")
        claim_key = self.key(tenant_segment, name, CLAIM)
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode()
        try:
            self.client.put_object(Bucket=self.cfg.bucket, Key=claim_key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if _status(exc) != 412:
                raise
            self._take_stale_claim(claim_key, body, name)
        self.clean_abandoned(tenant_segment)

    def _claim(self, claim_key: str) -> tuple[dict, str] | None:
        """A claim's owner and ETag; None when there is none (or it is unreadable)."""
        from botocore.exceptions import ClientError

        try:
            current = self.client.get_object(Bucket=self.cfg.bucket, Key=claim_key)
            return json.loads(current["Body"].read()), current["ETag"]
        except (ClientError, ValueError):
            return None

    def clean_abandoned(self, tenant_segment: str) -> None:
        """Remove what runs that died left in this tenant's backups: multipart uploads with no claim
        or a stale one, then the claims and partial objects of backups that never got metadata.json.
        A concurrent run's upload and claim are left alone."""
        base = f"{self.prefix}backups/full/{tenant_segment}/"
        abandoned: dict[str, bool] = {}

        def is_abandoned(folder: str) -> bool:
            if folder not in abandoned:
                claim = self._claim(self.key(tenant_segment, folder, CLAIM))
                abandoned[folder] = claim is None or claim_is_stale(claim[0])
            return abandoned[folder]

        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.cfg.bucket, Prefix=base):
            for upload in page.get("Uploads", []):
                if is_abandoned(upload["Key"][len(base):].split("/")[0]):
                    self.client.abort_multipart_upload(Bucket=self.cfg.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                folder, _, filename = obj["Key"][len(base):].partition("/")
                if filename == CLAIM and is_abandoned(folder) and not self.exists(tenant_segment, folder):
                    for leftover in (ARCHIVE, SCHEMAS, CLAIM):
                        self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, folder, leftover))

    def _take_stale_claim(self, claim_key: str, body: bytes, name: str) -> None:
        """Replace a claim its run left behind; refuse a live one."""
        from botocore.exceptions import ClientError

        busy = UsageError(f"a backup named {name!r} is being written right now by another run in {self.describe()}; "
                          "choose another --name")
        claim = self._claim(claim_key)
        if claim is None or not claim_is_stale(claim[0]):
            raise busy
        try:  # only the run that read this exact stale claim may replace it
            self.client.put_object(Bucket=self.cfg.bucket, Key=claim_key, Body=body, IfMatch=claim[1])
        except ClientError as exc:
            if _status(exc) == 412:
                raise busy from None
            raise

    def abort_incomplete_uploads(self, key_prefix: str) -> int:
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=key_prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.cfg.bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    @contextmanager
    def archive_writer(self, tenant_segment: str, name: str, spool_dir: Path) -> Iterator[BinaryIO]:
        """A sink whose bytes go up as a multipart upload while they are still being written.

        Measured here, boto3's streamed upload_fileobj keeps whole parts in memory (353 MB peak for
        100 MB parts at concurrency 2), so the stream is spooled to a file instead and each finished
        part is uploaded, in parallel, as a slice of that file: memory stays flat whatever the part
        size, retries re-read the slice, and uploaded ranges are released from disk behind us.
        Any failure aborts the multipart upload."""
        upload = SpooledMultipartUpload(self.client, self.cfg.bucket, self.key(tenant_segment, name, ARCHIVE),
                                        self._put_args(), self.cfg.chunk_size_mb * 1024 * 1024, self.cfg.concurrency,
                                        spool_dir / (ARCHIVE + ".spool"))
        try:
            yield upload
            upload.complete()
        except BaseException:
            cleanup_quietly(upload.abort, f"aborting the multipart upload of {self.location(tenant_segment, name)}")
            raise

    def put_file_bytes(self, tenant_segment: str, name: str, filename: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, name, filename), Body=data,
                               ContentType="application/json", **self._put_args())

    def finish(self, tenant_segment: str, name: str, tags: dict[str, str]) -> None:
        tagging = {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}
        for filename in (ARCHIVE, SCHEMAS, METADATA):
            self.client.put_object_tagging(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, name, filename),
                                           Tagging=tagging)

    def discard(self, tenant_segment: str, name: str) -> None:
        """Remove a failed attempt's objects (the claim stays for a retry)."""
        if self.exists(tenant_segment, name):
            return
        self.abort_incomplete_uploads(self.key(tenant_segment, name, ARCHIVE))
        for filename in (ARCHIVE, SCHEMAS):
            self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, name, filename))

    def release(self, tenant_segment: str, name: str) -> None:
        """End this run's claim; without metadata.json the objects are an unfinished backup and go."""
        self.discard(tenant_segment, name)
        self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(tenant_segment, name, CLAIM))

    def list(self) -> list[BackupRecord]:
        records = []
        base = f"{self.prefix}backups/full/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(base):].split("/")
                if len(parts) != 3 or parts[2] != METADATA:
                    continue
                body = self.client.get_object(Bucket=self.cfg.bucket, Key=obj["Key"])["Body"].read()
                metadata = _parse_found(body, f"s3://{self.cfg.bucket}/{obj['Key']}", parts[0], parts[1])
                if metadata is not None:
                    records.append(BackupRecord(metadata, self.location(parts[0], parts[1]), self, parts[0], parts[1]))
        return records

    def delete(self, record: BackupRecord) -> None:
        """metadata.json first: a half-deleted backup is at once invisible, never mistaken for whole."""
        for filename in (METADATA, ARCHIVE, SCHEMAS, CLAIM):
            self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(record.segment, record.folder, filename))

    def fetch(self, record: BackupRecord, out_dir: Path, progress: Callable[[int], None] | None = None) -> Path:
        """Download a backup to out_dir/{name}/ with parallel ranged GETs; an interrupted run resumes."""
        dest = out_dir / check_name(record.folder)
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(record.segment, record.folder, SCHEMAS))
        with space_checked(dest, "--output"):
            with private_file(dest / SCHEMAS) as f:
                f.write(body["Body"].read())
            self._ranged_download(self.key(record.segment, record.folder, ARCHIVE), dest / ARCHIVE, progress)
            # metadata.json last, as on upload: a directory without it is an unfinished download.
            with private_file(dest / METADATA) as f:
                f.write(record.metadata.model_dump_json(indent=2).encode())
        return dest

    def _ranged_download(self, key: str, target: Path, progress: Callable[[int], None] | None) -> None:
        head = self.client.head_object(Bucket=self.cfg.bucket, Key=key)
        size, etag = head["ContentLength"], head["ETag"]
        part = self.cfg.chunk_size_mb * 1024 * 1024
        parts = max(1, -(-size // part))
        partial = target.with_name(target.name + ".partial")
        state_file = target.with_name(target.name + ".download.json")
        state = {"etag": etag, "size": size, "part_size": part, "done": []}
        if target.exists() and not state_file.exists() and target.stat().st_size == size:
            return  # finished by an earlier run (restore checks its SHA-256 in any case)
        if state_file.exists() and partial.exists():
            saved = json.loads(state_file.read_text())
            if (saved["etag"], saved["size"], saved["part_size"]) == (etag, size, part):
                state = saved
        if not partial.exists():
            private_file(partial).close()
        os.truncate(partial, size)
        done = set(state["done"])
        lock = threading.Lock()
        if progress:
            progress(sum(min(part, size - i * part) for i in done))

        def fetch_part(index: int) -> None:
            from botocore.exceptions import ClientError

            start = index * part
            end = min(size, start + part) - 1
            # botocore retries the request; a body cut off while it is read is retried here. An S3
            # answer (403, 404, 412: the object changed) is final.
            for attempt in range(5):
                try:
                    body = self.client.get_object(Bucket=self.cfg.bucket, Key=key, Range=f"bytes={start}-{end}",
                                                  IfMatch=etag)["Body"].read()
                    if len(body) != end - start + 1:
                        raise IOError(f"part {index} of {key}: got {len(body)} bytes, asked for "
                                      f"{end - start + 1} (bytes={start}-{end} of {size})")
                    break
                except ClientError:
                    raise
                except Exception:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * 2 ** attempt)
            fd = os.open(partial, os.O_WRONLY)
            try:
                os.pwrite(fd, body, start)
                os.fsync(fd)
            finally:
                os.close(fd)
            with lock:
                done.add(index)
                state["done"] = sorted(done)
                tmp = state_file.with_name(state_file.name + ".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, state_file)
            if progress:
                progress(end - start + 1)

        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            for future in [pool.submit(fetch_part, i) for i in range(parts) if i not in done]:
                future.result()
        os.replace(partial, target)
        state_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ lookups


def _status(exc) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def cleanup_quietly(action: Callable[[], Any], what: str) -> None:
    """Run a clean-up step whose failure must not hide the error that made it necessary."""
    try:
        action()
    except Exception as exc:  # the original error is the one the operator needs; this one is logged
        from tasks.runtime import get_logger

        get_logger().warning("%s failed too (%s); the error that caused it follows", what, exc)


def find_backup(stores: list, name: str, tenant: str | None = None) -> BackupRecord:
    """The backup called name in any store. When several match, the one local copy wins (nothing to
    download); otherwise the ambiguity is an error."""
    check_name(name)
    if tenant is not None and tenant != ALL_TENANTS:
        check_tenant(tenant)
    matches = [r for store in stores for r in store.list()
               if r.name == name and (tenant is None or r.metadata.tenant_segment == tenant)]
    if not matches:
        where = ", ".join(s.describe() for s in stores)
        raise BackupNotFound(f"no backup named {name!r} in {where}; see `rem backup list`")
    if len(matches) == 1:
        return matches[0]
    local = [r for r in matches if isinstance(r.store, LocalStore)]
    if len(local) == 1:
        return local[0]
    raise UsageError(f"several backups are named {name!r}: {', '.join(r.location for r in matches)}; add --tenant")


def read_local_backup(source: Path) -> BackupMetadata:
    """The metadata of a backup directory (as written by create or download)."""
    meta = source / METADATA
    if not meta.exists():
        raise UsageError(f"{source}: no {METADATA} here (not a backup, or an unfinished download); "
                         "give --source the directory `rem backup download` wrote")
    try:
        return BackupMetadata.model_validate_json(meta.read_bytes())
    except ValueError as exc:
        raise RemError(f"{meta}: unreadable backup metadata ({str(exc).splitlines()[0]})") from None


def encryption_args(mode: str, kms_key_id: str | None) -> dict[str, str]:
    """boto3 upload ExtraArgs for server-side encryption (none, AES256 or aws:kms)."""
    if mode == "none":
        return {}
    if mode == "aws:kms":
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id or ""}
    return {"ServerSideEncryption": "AES256"}


# Calls that give up within seconds: health, metrics and listings must answer while S3 is down.
BOUNDED = {"connect_timeout": 3, "read_timeout": 10, "max_attempts": 2}


def make_store(settings, upload: bool, storage_block: str | None = None, encryption_block: str | None = None,
               bounded: bool = False):
    """The store a run writes to: S3 from a BackupStorage block or from settings, else the local directory.
    bounded: its S3 calls give up within seconds (see BOUNDED)."""
    limits = BOUNDED if bounded else {}
    if storage_block:
        from blocks.backup import BackupEncryption, BackupStorage

        block = BackupStorage.load(storage_block)
        creds = block.bucket.credentials
        params = creds.aws_client_parameters
        extra = BackupEncryption.load(encryption_block).extra_args() if encryption_block else {}
        prefix = "/".join(p for p in (block.bucket.bucket_folder.strip("/"), block.prefix.strip("/")) if p)
        cfg = S3Settings(bucket=block.bucket.bucket_name, prefix=prefix, endpoint_url=params.endpoint_url,
                         region=creds.region_name or "us-east-1", storage_class=block.storage_class,
                         chunk_size_mb=block.chunk_size_mb, concurrency=block.concurrency, extra_args=extra, **limits)
        session = creds.get_boto3_session()
        return S3Store(cfg, s3_client(cfg, lambda config: session.client(
            "s3", endpoint_url=params.endpoint_url, region_name=cfg.region, config=config)))
    if upload:
        if not settings.s3_bucket:
            raise UsageError("--upload needs a bucket: set P8_S3_BUCKET (or [backup.s3] bucket, or --bucket)")
        return S3Store(S3Settings(
            bucket=settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region, storage_class=settings.s3_storage_class,
            chunk_size_mb=settings.backup_chunk_size_mb, concurrency=settings.backup_upload_concurrency,
            extra_args=encryption_args(settings.backup_encryption, settings.kms_key_id), **limits))
    return LocalStore(settings.local_backup_dir)


def all_stores(settings, bounded: bool = False) -> list:
    """Every place backups may be: the local directory, and the bucket when one is configured.
    bounded: S3 calls give up within seconds (for health, metrics and listings)."""
    stores: list = [LocalStore(settings.local_backup_dir)]
    if settings.s3_bucket:
        stores.append(make_store(settings, upload=True, bounded=bounded))
    return stores


def list_reachable(stores: list) -> tuple[list[BackupRecord], dict[str, str]]:
    """Every backup in the stores that answer, and for each one that does not, why."""
    records: list[BackupRecord] = []
    failed: dict[str, str] = {}
    for store in stores:
        try:
            records.extend(store.list())
        except Exception as exc:  # one unreachable store must not hide the others' backups
            failed[store.describe()] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return records, failed
