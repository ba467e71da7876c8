"""ObjectStore over an S3 (or S3-compatible) bucket through boto3: conditional puts (IfNoneMatch,
IfMatch), multipart uploads spooled to disk, parallel resumable ranged downloads."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from rem.errors import RemError
from rem.storage import ObjectArchived, ObjectInfo, ObjectMissing, PreconditionFailed, cleanup_quietly
from rem.storage.local import private_file


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
        # Declared, as `aws s3 cp` does: without an algorithm the server builds the object's checksum
        # itself at completion by reading every part again.
        self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32",
                                                        **put_args)["UploadId"]

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
                                                PartNumber=number, Body=body, ChecksumAlgorithm="CRC32")
            _punch_hole(self.file.fileno(), start, length)
            return {"PartNumber": number, "ETag": reply["ETag"],
                    **({"ChecksumCRC32": reply["ChecksumCRC32"]} if reply.get("ChecksumCRC32") else {})}
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
    object_lock: str | None = None  # GOVERNANCE or COMPLIANCE: every lockable object is written locked
    lock_days: float = 0  # for this long after it is written (or reused, for a shared SST)
    # Backups and restores wait out a slow S3; health, metrics and listings must answer in seconds.
    connect_timeout: float = 10
    read_timeout: float = 120
    max_attempts: int = 10
    # Where bucket, endpoint and credentials were set, for the hint when they do not work.
    source: str = "P8_S3_BUCKET, P8_S3_ENDPOINT_URL and the AWS credentials (or [backup.s3], or --bucket)"


def s3_client(cfg: S3Settings, client_factory: Callable[..., Any] | None = None):
    """A boto3 S3 client that retries throttling, 5xx and dropped connections (standard mode)."""
    from botocore.config import Config

    config = Config(retries={"max_attempts": cfg.max_attempts, "mode": "standard"}, connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout, max_pool_connections=max(10, cfg.concurrency * 2 + 2))
    if client_factory is not None:  # a prefect-aws AwsCredentials block's get_client
        return client_factory(config)
    with _SESSION_LOCK:  # a session makes clients one at a time; its clients are safe to share
        return _session().client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=config)


_SESSION_LOCK = threading.Lock()


@functools.cache
def _session():
    """One boto3 session per process: a session loads S3's service model once for every client it makes
    (a new session per store cost 0.15 s each)."""
    import boto3

    return boto3.session.Session()




def status(exc) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _missing(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _lost_race(exc) -> bool:
    return status(exc) in (409, 412) or exc.response.get("Error", {}).get("Code") in (
        "PreconditionFailed", "ConditionalRequestConflict")


def _answer(exc, key: str) -> Exception:
    """S3's refusal of a GET as the store's own exception where there is one, else itself."""
    if _missing(exc):
        return ObjectMissing(key)
    if _lost_race(exc):
        return PreconditionFailed(key)
    if exc.response.get("Error", {}).get("Code") == "InvalidObjectState":
        return ObjectArchived(key, exc.response["Error"].get("StorageClass", "GLACIER"))
    return exc


def lockable(key: str) -> bool:
    """Objects written locked when the store locks: all but claims and leases (names starting with
    '.', released when a run ends) and the log archive's manifest (rewritten every pass)."""
    name = key.rpartition("/")[2]
    return not name.startswith(".") and name != "manifest.json"


def encryption_args(mode: str, kms_key_id: str | None) -> dict[str, str]:
    """boto3 upload ExtraArgs for server-side encryption (none, AES256 or aws:kms; the client-side
    modes, kms-envelope and key-file, leave the bucket's own default)."""
    if mode in ("none", "kms-envelope", "key-file"):
        return {}
    if mode == "aws:kms":
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id or ""}
    return {"ServerSideEncryption": "AES256"}


# The reachability check answers in seconds: an endpoint that does not answer is named at once,
# not after the ten retries with backoff (about a minute) a transfer is allowed.
# Calls that give up within seconds: health, metrics and listings must answer while S3 is down.
BOUNDED = {"connect_timeout": 3, "read_timeout": 10, "max_attempts": 2}
CHECK_LIMITS = {"connect_timeout": 5, "read_timeout": 10, "max_attempts": 2}


class S3ObjectStore:
    def __init__(self, cfg: S3Settings, client=None, client_factory: Callable[..., Any] | None = None):
        self.cfg = cfg
        self.client_factory = client_factory  # a prefect-aws credentials block's, when it made the client
        self.client = client or s3_client(cfg, client_factory)
        self.prefix = cfg.prefix.strip("/") + "/" if cfg.prefix.strip("/") else ""

    def full_key(self, key: str) -> str:
        return self.prefix + key

    def url(self, key: str = "") -> str:
        return f"s3://{self.cfg.bucket}/{self.prefix}{key}"

    def _put_args(self) -> dict[str, str]:
        return {"StorageClass": self.cfg.storage_class, **(self.cfg.extra_args or {})}

    def check(self) -> None:
        from botocore.exceptions import ClientError, EndpointConnectionError

        from dataclasses import replace

        try:
            s3_client(replace(self.cfg, **CHECK_LIMITS), self.client_factory).head_bucket(Bucket=self.cfg.bucket)
        except ClientError as exc:
            raise RemError(f"s3://{self.cfg.bucket}: bucket not reachable ({exc.response.get('Error', {}).get('Code')}); "
                           f"check {self.cfg.source}") from None
        except EndpointConnectionError as exc:
            raise RemError(f"s3://{self.cfg.bucket}: cannot connect to {exc.kwargs.get('endpoint_url')}; "
                           f"check {self.cfg.source}") from None

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            reply = self.client.head_object(Bucket=self.cfg.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return ObjectInfo(key, reply["ContentLength"], reply["ETag"], reply["LastModified"].timestamp(),
                          reply.get("StorageClass", "STANDARD"))

    def _get(self, key: str, **args) -> dict:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.cfg.bucket, Key=self.full_key(key), **args)
        except ClientError as exc:
            raise _answer(exc, key) from None

    def get(self, key: str, start: int | None = None, end: int | None = None, if_match: str | None = None) -> bytes:
        args: dict[str, Any] = {}
        if start is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_match is not None:
            args["IfMatch"] = if_match
        return self._get(key, **args)["Body"].read()

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        reply = self._get(key)
        return reply["Body"].read(), reply["ETag"]

    def _locking(self, key: str) -> bool:
        return bool(self.cfg.object_lock) and lockable(key)

    def lock_until(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(days=self.cfg.lock_days)

    def extend_lock(self, keys: Iterable[str]) -> int:
        """Lock each object (again) until lock_days from now: one request per object. A date never
        moves back: every call's is later than any an earlier call set."""
        if not self.cfg.object_lock:
            return 0
        from botocore.exceptions import ClientError

        until, count = self.lock_until(), 0
        for key in keys:
            if not lockable(key):
                continue
            try:
                self.client.put_object_retention(Bucket=self.cfg.bucket, Key=self.full_key(key), Retention={
                    "Mode": self.cfg.object_lock, "RetainUntilDate": until})
            except ClientError:  # S3 refuses to shorten a lock: one already later (object_lock_days lowered) stays
                current = self._retain_until(key)
                if current is None or current < until:
                    raise
            count += 1
        return count

    def locked_until(self, key: str) -> datetime | None:
        """When the object's lock ends, if it is locked now (no request unless this store locks)."""
        if not self.cfg.object_lock:
            return None
        until = self._retain_until(key)
        return until if until and until > datetime.now(timezone.utc) else None

    def _retain_until(self, key: str) -> datetime | None:
        """The object's lock date as S3 holds it (None: no lock, or no object)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.cfg.bucket, Key=self.full_key(key)).get(
                "ObjectLockRetainUntilDate")
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def lock_status(self) -> dict[str, Any]:
        """The bucket's versioning and object lock, as `rem check` reports them."""
        from botocore.exceptions import ClientError

        versioning = self.client.get_bucket_versioning(Bucket=self.cfg.bucket).get("Status") or "off"
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.cfg.bucket)["ObjectLockConfiguration"]
            enabled = lock.get("ObjectLockEnabled") == "Enabled"
            default = lock.get("Rule", {}).get("DefaultRetention")
        except ClientError:
            enabled, default = False, None
        return {"versioning": versioning, "object_lock": "enabled" if enabled else "off",
                "default_retention": default, "rem_writes": (self.cfg.object_lock or "none").lower(),
                "lock_days": self.cfg.lock_days if self.cfg.object_lock else None}

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None,
            metadata: dict[str, str] | None = None) -> str:
        from botocore.exceptions import ClientError

        # Small objects (claims, manifests rewritten every pass, segments) stay in STANDARD: an
        # infrequent-access class bills each at least 128 KB for 30 days.
        args: dict[str, Any] = dict(self.cfg.extra_args or {})
        if self._locking(key):  # in the PUT itself: no request of its own
            args.update(ObjectLockMode=self.cfg.object_lock, ObjectLockRetainUntilDate=self.lock_until())
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = if_match
        if metadata:
            args["Metadata"] = metadata
        if key.endswith(".json"):
            args["ContentType"] = "application/json"
        try:
            return self.client.put_object(Bucket=self.cfg.bucket, Key=self.full_key(key), Body=body, **args)["ETag"]
        except ClientError as exc:
            if _lost_race(exc):
                raise PreconditionFailed(key) from None
            raise

    @contextmanager
    def writer(self, key: str, spool_dir: Path) -> Iterator[BinaryIO]:
        """A sink whose bytes go up as a multipart upload while they are still being written.

        Measured here, boto3's streamed upload_fileobj keeps whole parts in memory (353 MB peak for
        100 MB parts at concurrency 2), so the stream is spooled to a file instead and each finished
        part is uploaded, in parallel, as a slice of that file: memory stays flat whatever the part
        size, retries re-read the slice, and uploaded ranges are released from disk behind us.
        Any failure aborts the multipart upload."""
        upload = SpooledMultipartUpload(self.client, self.cfg.bucket, self.full_key(key), self._put_args(),
                                        self.cfg.chunk_size_mb * 1024 * 1024, self.cfg.concurrency,
                                        spool_dir / (key.rpartition("/")[2] + ".spool"))
        try:
            yield upload
            upload.complete()
        except BaseException:
            cleanup_quietly(upload.abort, f"aborting the multipart upload of {self.url(key)}")
            raise
        # One request per object, after it is whole: a lock given to CreateMultipartUpload is not
        # honoured by every S3-compatible store (moto's is not).
        self.extend_lock([key])

    def put_file(self, key: str, path: Path) -> None:
        """boto3's managed transfer (multipart above the part size)."""
        from boto3.s3.transfer import TransferConfig

        chunk = self.cfg.chunk_size_mb * 1024 * 1024
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=self.cfg.concurrency, use_threads=True)
        self.client.upload_file(str(path), self.cfg.bucket, self.full_key(key), ExtraArgs=self._put_args(),
                                Config=config)
        self.extend_lock([key])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=self.full_key(prefix)):
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"], obj["ETag"], obj["LastModified"].timestamp(),
                                 obj.get("StorageClass", ""))

    def list_folder(self, folder: str) -> tuple[list[str], list[ObjectInfo]]:
        folders: list[str] = []
        objects: list[ObjectInfo] = []
        start = len(self.full_key(folder))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=self.full_key(folder), Delimiter="/"):
            folders += [p["Prefix"][start:-1] for p in page.get("CommonPrefixes", [])]
            objects += [ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"], obj["ETag"],
                                   obj["LastModified"].timestamp(), obj.get("StorageClass", ""))
                        for obj in page.get("Contents", [])]
        return folders, objects

    def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(self.full_key(key))
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        objects: list[dict[str, str]] = [{"Key": k} for k in keys]
        if self.cfg.object_lock:  # a versioned bucket: each version goes (a plain delete only hides them)
            wanted = set(keys)
            objects = []
            for prefix in sorted({k.rpartition("/")[0] + "/" for k in keys}):
                for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.cfg.bucket,
                                                                                       Prefix=prefix):
                    objects += [{"Key": v["Key"], "VersionId": v["VersionId"]}
                                for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] in wanted]
        for start in range(0, len(objects), 1000):  # S3 takes 1,000 per request; a key may have many versions
            batch = objects[start:start + 1000]
            reply = self.client.delete_objects(Bucket=self.cfg.bucket, Delete={"Objects": batch, "Quiet": True})
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise RemError(f"s3://{self.cfg.bucket}/{first['Key']}: not deleted ({first.get('Code')}: "
                               f"{first.get('Message')}); {len(reply['Errors'])} of {len(batch)} objects failed")

    def local_path(self, key: str) -> Path | None:
        return None

    def restore_hint(self, key: str) -> str:
        """How an operator brings an archived object back (S3 restores it for the days asked, in hours)."""
        return (f"aws s3api restore-object --bucket {self.cfg.bucket} --key {self.full_key(key)} "
                "--restore-request Days=7")

    def tag(self, key: str, tags: dict[str, str]) -> None:
        self.client.put_object_tagging(Bucket=self.cfg.bucket, Key=self.full_key(key), Tagging={
            "TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})

    def abort_uploads(self, prefix: str, abandoned: Callable[[str], bool], started_before: float | None = None) -> int:
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.cfg.bucket, Prefix=self.full_key(prefix)):
            for upload in page.get("Uploads", []):
                if started_before is not None and upload["Initiated"].timestamp() >= started_before:
                    continue
                if abandoned(upload["Key"][len(self.prefix):]):
                    self.client.abort_multipart_upload(Bucket=self.cfg.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        return aborted

    def lifecycle_rules(self) -> list[dict]:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_bucket_lifecycle_configuration(Bucket=self.cfg.bucket).get("Rules", [])
        except ClientError:
            return []

    def set_lifecycle_rules(self, rules: list[dict]) -> None:
        self.client.put_bucket_lifecycle_configuration(Bucket=self.cfg.bucket, LifecycleConfiguration={"Rules": rules})

    def download(self, key: str, target: Path, progress: Callable[[int], None] | None = None) -> None:
        """Parallel ranged GETs into target.partial; an interrupted download resumes from its state file."""
        head = self.head(key)
        if head is None:
            raise ObjectMissing(key)
        size, etag = head.size, head.etag
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
                    body = self.client.get_object(Bucket=self.cfg.bucket, Key=self.full_key(key),
                                                  Range=f"bytes={start}-{end}", IfMatch=etag)["Body"].read()
                    if len(body) != end - start + 1:
                        raise IOError(f"part {index} of {key}: got {len(body)} bytes, asked for "
                                      f"{end - start + 1} (bytes={start}-{end} of {size})")
                    break
                except ClientError as exc:  # an S3 answer is final
                    raise _answer(exc, key) from None
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
