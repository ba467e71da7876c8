"""Client-side encryption's cost: `rem backup create` and `rem backup restore --name` of a ~1 GB
sample, in a local store and in moto's S3 on 127.0.0.1, unencrypted vs envelope encryption
(AES-256-GCM in 1 MiB chunks: `key-file` locally, `kms-envelope` with moto's KMS in S3). Runs
alternate; the minimum of BENCH_RUNS (3) counts; the page cache is flushed (sync) before each.
Target: each encrypted command within 1.10x of the same unencrypted one.

Usage: python -m benchmarks.encryption [ENTITIES]   (default 660000: about 1 GB)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import rem, save_result  # noqa: E402
from rem.stats import directory_size  # noqa: E402


def main(entities: int = 660_000, runs: int | None = None) -> dict:
    runs = runs or int(os.environ.get("BENCH_RUNS", "3"))
    work = Path(tempfile.mkdtemp(prefix="rem-bench-enc-"))
    try:
        db = work / "db"
        rem("--db-path", str(db), "db", "init", "--sample", str(entities))
        key = work / "backup.key"
        key.write_text(os.urandom(32).hex())
        from benchmarks.pitr import moto_buckets

        best: dict[str, float] = {}
        with moto_buckets("rem-bench-enc-") as (_, s3, env_for):
            import boto3

            bucket, s3_env = env_for("enc")
            kms = boto3.client("kms", endpoint_url=s3_env["P8_S3_ENDPOINT_URL"], region_name="us-east-1")
            modes = {"local plain": ({}, []),
                     "local key-file": ({"P8_BACKUP_ENCRYPTION": "key-file", "P8_BACKUP_KEY_FILE": str(key)}, []),
                     "S3 plain": (s3_env, ["--upload"]),
                     "S3 kms-envelope": ({**s3_env, "P8_BACKUP_ENCRYPTION": "kms-envelope",
                                          "P8_KMS_KEY_ID": kms.create_key()["KeyMetadata"]["KeyId"]}, ["--upload"])}
            for run in range(runs):
                for mode, (extra, upload) in modes.items():
                    store = work / "store"
                    shutil.rmtree(store, ignore_errors=True)
                    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                        for o in page.get("Contents", []):
                            s3.delete_object(Bucket=bucket, Key=o["Key"])
                    env = {**os.environ, "P8_BACKUP_DIR": str(store), **extra}
                    os.sync()
                    seconds, _ = rem("--db-path", str(db), "backup", "create", "--name", "b", *upload, env=env)
                    best[f"backup {mode}"] = min(seconds, best.get(f"backup {mode}", seconds))
                    target = work / "restored"
                    shutil.rmtree(target, ignore_errors=True)
                    os.sync()
                    seconds, _ = rem("--db-path", str(db), "backup", "restore", "--name", "b", "--target",
                                     str(target), env=env)
                    best[f"restore {mode}"] = min(seconds, best.get(f"restore {mode}", seconds))
        result = {"entities": entities, "db_bytes": directory_size(db), **best}
        for where, sealed in (("local", "key-file"), ("S3", "kms-envelope")):
            for step in ("backup", "restore"):
                ratio = best[f"{step} {where} {sealed}"] / best[f"{step} {where} plain"]
                result[f"{step}_{where}_ratio"] = ratio
                print(f"{step}, {where}, {result['db_bytes'] / 1e9:.2f} GB: {sealed} {best[f'{step} {where} {sealed}']:.1f}"
                      f" s vs unencrypted {best[f'{step} {where} plain']:.1f} s: ratio {ratio:.2f} (target <= 1.10)",
                      flush=True)
        save_result("encryption", result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
