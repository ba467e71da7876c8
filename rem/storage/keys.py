"""Data keys for client-side encryption: one random AES-256 key per database, kept in the store only
wrapped (`{db}/keys/{id}.json`), by KMS (`GenerateDataKey`, `Decrypt`: the plaintext never leaves
this process's memory) or by a local 32-byte key file. The wrapped key is bound to its database and
id (KMS's encryption context, the key file's AES-GCM associated data), so a key object copied to
another database or renamed does not unwrap.

A database may hold several data keys (two first writers racing each make one, and a change of KMS
key starts a new one): every object names the key that sealed it, and any of them opens.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rem.errors import ConfigError, RemError

KEYS = "keys/"
KEY_BYTES = 32


class KeyUnavailable(ConfigError):
    """The data key cannot be had: no key file, the wrong one, KMS refusing (disabled, no access)."""


def keys_prefix(db: str) -> str:
    return f"{db}/{KEYS}"


@dataclass
class DataKey:
    id: str
    key: bytes = field(repr=False)  # never printed, logged or stored as it is
    kek: str  # what wrapped it: the KMS key's ARN, or key-file:{fingerprint}


def _context(db: str, key_id: str) -> dict[str, str]:
    return {"rem-db": db, "rem-data-key": key_id}


class KmsWrap:
    """Data keys made and unwrapped by AWS KMS (any KMS-compatible endpoint)."""

    mode = "kms-envelope"

    def __init__(self, key_id: str, client_factory: Callable[[], Any]):
        self.key_id = key_id
        self._client_factory = client_factory
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    @property
    def kek(self) -> str:
        return self.key_id

    def describe(self) -> str:
        return f"KMS key {self.key_id}"

    def same_kek(self, kek: str) -> bool:
        return kek == self.key_id or kek.endswith(f"/{self.key_id}") or kek.endswith(f":{self.key_id}")

    def generate(self, db: str, key_id: str) -> tuple[bytes, bytes, str]:
        answer = self._call("GenerateDataKey", f"a data key for database {db}", KeyId=self.key_id, KeySpec="AES_256",
                            EncryptionContext=_context(db, key_id))
        return answer["Plaintext"], answer["CiphertextBlob"], answer["KeyId"]

    def wrap(self, db: str, key_id: str, plaintext: bytes) -> tuple[bytes, str]:
        answer = self._call("Encrypt", f"data key {key_id} of database {db}", KeyId=self.key_id, Plaintext=plaintext,
                            EncryptionContext=_context(db, key_id))
        return answer["CiphertextBlob"], answer["KeyId"]

    def unwrap(self, db: str, key_id: str, wrapped: bytes, kek: str) -> bytes:
        return self._call("Decrypt", f"data key {key_id} of database {db} (wrapped by {kek})", CiphertextBlob=wrapped,
                          EncryptionContext=_context(db, key_id))["Plaintext"]

    def _call(self, operation: str, what: str, **args) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        method = {"GenerateDataKey": "generate_data_key", "Encrypt": "encrypt", "Decrypt": "decrypt"}[operation]
        try:
            return getattr(self.client, method)(**args)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise KeyUnavailable(f"KMS {operation} of {what} failed: {error.get('Code', '?')}: "
                                 f"{error.get('Message', '').strip() or 'no message'}; enable the key, or grant this "
                                 "host kms:GenerateDataKey and kms:Decrypt on it (README: Security)") from None
        except BotoCoreError as exc:
            raise KeyUnavailable(f"KMS {operation} of {what} failed: {exc}; check the KMS endpoint and "
                                 "credentials") from None


class KeyFileWrap:
    """Data keys wrapped (AES-256-GCM) by a 32-byte key in a local file: no cloud account needed."""

    mode = "key-file"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._kek = read_key_file(self.path)
        self.fingerprint = hashlib.sha256(b"rem key file\0" + self._kek).hexdigest()[:16]

    @property
    def kek(self) -> str:
        return f"key-file:{self.fingerprint}"

    def describe(self) -> str:
        return f"key file {self.path} ({self.kek})"

    def same_kek(self, kek: str) -> bool:
        return kek == self.kek

    def generate(self, db: str, key_id: str) -> tuple[bytes, bytes, str]:
        plaintext = os.urandom(KEY_BYTES)
        wrapped, kek = self.wrap(db, key_id, plaintext)
        return plaintext, wrapped, kek

    def wrap(self, db: str, key_id: str, plaintext: bytes) -> tuple[bytes, str]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(12)
        return nonce + AESGCM(self._kek).encrypt(nonce, plaintext, orjson.dumps(_context(db, key_id))), self.kek

    def unwrap(self, db: str, key_id: str, wrapped: bytes, kek: str) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if kek != self.kek:
            raise KeyUnavailable(f"data key {key_id} of database {db} was wrapped by {kek}, not by {self.describe()}: "
                                 "give the key file it was made with (P8_BACKUP_KEY_FILE)")
        try:
            return AESGCM(self._kek).decrypt(wrapped[:12], wrapped[12:], orjson.dumps(_context(db, key_id)))
        except InvalidTag:
            raise KeyUnavailable(f"data key {key_id} of database {db} does not unwrap with {self.describe()}: the key "
                                 "object was altered or moved from another database") from None


def read_key_file(path: Path) -> bytes:
    """32 bytes: raw, or 64 hex digits (`openssl rand -hex 32`), or their base64."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyUnavailable(f"{path}: no such key file; make one with `openssl rand -hex 32 > {path}` and keep a "
                             "copy off this host (without it no backup can be read)") from None
    except OSError as exc:
        raise KeyUnavailable(f"{path}: cannot read the key file ({exc.strerror})") from None
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise KeyUnavailable(f"{path}: not a 32-byte key (raw, 64 hex digits or base64); make one with "
                         f"`openssl rand -hex 32 > {path}`")


KeyWrap = KmsWrap | KeyFileWrap


class DataKeys:
    """The data keys of the databases in one store, unwrapped once per process and kept in memory."""

    def __init__(self, objects, wrap: KeyWrap):
        self.objects = objects  # the store itself: key objects are never encrypted
        self.wrap = wrap
        self._keys: dict[tuple[str, str], bytes] = {}
        self._current: dict[str, DataKey] = {}
        self._lock = threading.Lock()

    def current(self, db: str) -> DataKey:
        """The key new objects of db are sealed with: its newest data key wrapped by this store's
        KMS key or key file, made (and stored, wrapped) when there is none."""
        with self._lock:
            if db not in self._current:
                found = [doc for doc in self._documents(db) if self.wrap.same_kek(doc["kek"])]
                if found:
                    doc = max(found, key=lambda d: (d["created"], d["id"]))
                    key = self._unwrap(db, doc)
                else:
                    doc, key = self._create(db)
                self._keys[(db, doc["id"])] = key
                self._current[db] = DataKey(doc["id"], key, doc["kek"])
            return self._current[db]

    def get(self, db: str, key_id: str) -> bytes:
        with self._lock:
            if (db, key_id) not in self._keys:
                self._keys[(db, key_id)] = self._unwrap(db, self.document(db, key_id))
            return self._keys[(db, key_id)]

    def document(self, db: str, key_id: str) -> dict:
        from rem.storage import ObjectMissing

        key = f"{keys_prefix(db)}{key_id}.json"
        try:
            doc = orjson.loads(self.objects.get(key))
        except ObjectMissing:
            raise KeyUnavailable(f"{self.objects.url(key)}: the data key this object was sealed with is missing; "
                                 "without it the object cannot be read (restore the key object from bucket "
                                 "versioning, or use another backup)") from None
        except orjson.JSONDecodeError:
            raise KeyUnavailable(f"{self.objects.url(key)}: not a readable data key object") from None
        if doc.get("id") != key_id or doc.get("db") != db:
            raise KeyUnavailable(f"{self.objects.url(key)}: names key {doc.get('id')} of {doc.get('db')}, not "
                                 f"{key_id} of {db}")
        return doc

    def _documents(self, db: str) -> list[dict]:
        return [self.document(db, info.key.rpartition("/")[2].removesuffix(".json"))
                for info in self.objects.list(keys_prefix(db)) if info.key.endswith(".json")]

    def _unwrap(self, db: str, doc: dict) -> bytes:
        key = self.wrap.unwrap(db, doc["id"], base64.b64decode(doc["wrapped"]), doc["kek"])
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"data key {doc['id']} of database {db} unwrapped to {len(key)} bytes, not 32")
        return key

    def _create(self, db: str) -> tuple[dict, bytes]:
        key_id = os.urandom(8).hex()
        plaintext, wrapped, kek = self.wrap.generate(db, key_id)
        doc = {"format": 1, "id": key_id, "db": db, "mode": self.wrap.mode, "kek": kek,
               "wrapped": base64.b64encode(wrapped).decode(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
        self.objects.put(f"{keys_prefix(db)}{key_id}.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2),
                         if_none_match=True)
        return doc, plaintext

    def rekey(self, db: str, new: KeyWrap) -> list[dict]:
        """Every data key of db unwrapped by this store's wrap and wrapped again by new; the data
        itself is not rewritten. What each key was wrapped by, before and after."""
        from rem.storage import PreconditionFailed

        changed = []
        for info in self.objects.list(keys_prefix(db)):
            if not info.key.endswith(".json"):
                continue
            body, etag = self.objects.get_with_etag(info.key)
            doc = orjson.loads(body)
            plaintext = self._unwrap(db, doc)
            wrapped, kek = new.wrap(db, doc["id"], plaintext)
            updated = {**doc, "mode": new.mode, "kek": kek, "wrapped": base64.b64encode(wrapped).decode(),
                       "rewrapped": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            try:
                self.objects.put(info.key, orjson.dumps(updated, option=orjson.OPT_INDENT_2), if_match=etag)
            except PreconditionFailed:
                raise RemError(f"{self.objects.url(info.key)} changed while it was rewrapped; run the rekey again") \
                    from None
            changed.append({"key": doc["id"], "from": doc["kek"], "to": kek})
        with self._lock:
            self._current.pop(db, None)
        return changed
