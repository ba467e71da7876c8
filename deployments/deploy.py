"""`rem deploy`: one database's deployments, blocks and writer slot on a shared Prefect server, plus the
block types, the process work pool, the notification block and the automations every database shares.

prefect.yaml is the template: each of its deployments becomes `{flow}/{db}` (the follower
`wal-archive/{db}-follow`) on the database host's own work queue, its parameters naming that
database's blocks `rem-db-{db}` and `rem-backups-{db}`. Running it twice changes nothing; running it
for a second database changes nothing of the first."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from rem.errors import RemError, UsageError

PROJECT_DIR = Path(__file__).resolve().parent.parent
NOTIFICATION_BLOCK = "rem-alerts"


def _run(args: list[str], env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=PROJECT_DIR, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RemError(f"prefect {' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    return proc.stdout


def ensure_work_pool(client, name: str) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(name)
        return "exists"
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        return "created"


def ensure_writer_limit(client, name: str) -> str:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_global_concurrency_limit_by_name(name)
        return "exists"
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        return "created"


def ensure_notification_block(webhook_url: str | None, existing: str | None):
    """The block automations notify: a named existing one, or a webhook to P8_ALERT_WEBHOOK_URL."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if existing:
        slug, _, name = existing.partition("/")
        try:
            return Block.load(existing) if name else CustomWebhookNotificationBlock.load(slug)
        except ValueError as exc:  # Prefect's word for a block, or a block type, it does not have
            raise UsageError(f"--notification-block {existing}: no such block on this Prefect server "
                             "(name one from `prefect block ls` as type-slug/name)") from exc
    block = CustomWebhookNotificationBlock(name="rem-alerts", url=webhook_url, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block.save(NOTIFICATION_BLOCK, overwrite=True)
    return CustomWebhookNotificationBlock.load(NOTIFICATION_BLOCK)


def enable_pitr_automations(client) -> dict[str, str]:
    """The archive's automations (WAL lag, follower stopped) beside the ones `rem deploy` made, sent
    to the same notification block: the one the backup-failure automation already notifies."""
    from deployments.automations import BACKUP_FAILED, automation_specs, sync_automations

    existing = client.read_automations_by_name(BACKUP_FAILED)
    if not existing:
        raise UsageError("no rem automations on this Prefect server yet: run `rem deploy` first")
    return sync_automations(client, automation_specs(existing[0].actions[0].block_document_id, True,
                                                     ui_base=ui_address()))


def ui_address() -> str | None:
    """The Prefect UI's address: PREFECT_UI_URL, else the API's address without /api (the server
    serves its UI there)."""
    from runtime.orchestration import prefect_api_url

    if os.environ.get("PREFECT_UI_URL"):
        return os.environ["PREFECT_UI_URL"]
    api = prefect_api_url()
    return api.rstrip("/").removesuffix("/api") if api else None


def set_wal_archive_schedule(client, db: str, interval_seconds: int, active: bool) -> str:
    """Point the database's wal-archive deployment's schedule at the [pitr] interval, paused unless
    PITR is on; its follower's deployment is switched with it."""
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(f"wal-archive/{db}")
    except ObjectNotFound:
        return "not deployed yet: `rem deploy` schedules it"
    schedule = IntervalSchedule(interval=interval_seconds)
    for existing in client.read_deployment_schedules(deployment.id):
        client.update_deployment_schedule(deployment.id, existing.id, active=active, schedule=schedule)
    with contextlib.suppress(ObjectNotFound):  # the follower's restart schedule follows the same switch
        follower = client.read_deployment_by_name(f"wal-archive/{db}-follow")
        for existing in client.read_deployment_schedules(follower.id):
            client.update_deployment_schedule(follower.id, existing.id, active=active)
    return f"every {interval_seconds} s, {'active' if active else 'paused (PITR is not enabled)'}"


def register_block_types() -> list[str]:
    """`prefect block register -m blocks` in this process (it recursively registers the nested
    prefect-aws types too): the UI offers each type before a block of it is saved. The command
    cost a Python start and a Prefect import, 3.5 s of each deploy."""
    import blocks
    from prefect.blocks.core import Block

    types = [cls for cls in vars(blocks).values() if isinstance(cls, type) and Block.is_block_class(cls)]
    for cls in types:
        cls.register_type_and_schema()
    return sorted(cls.get_block_type_slug() for cls in types)


def database_blocks(cfg, db: str) -> dict[str, str]:
    """The database's RemDatabase block (rewritten from the settings every deploy) and, with a bucket
    configured, its BackupStorage block (made once: credentials are edited in the UI, not here)."""
    from prefect.exceptions import ObjectNotFound
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks.backup import BackupEncryption, BackupStorage, RemDatabase
    from rem.settings import CLIENT_SIDE

    storage = f"rem-backups-{db}"
    outcome = {}
    if cfg.s3_bucket:
        try:
            BackupStorage.load(storage)
            outcome[storage] = "exists"
        except (ValueError, ObjectNotFound):
            # Each nested block saved under a name of its own: the UI shows and edits a named block
            # (bucket, keys, endpoint), never one saved anonymously inside another ("S3Bucket None").
            creds = AwsCredentials(region_name=cfg.s3_region, aws_client_parameters=AwsClientParameters(
                endpoint_url=cfg.s3_endpoint_url))
            creds.save(f"rem-aws-{db}", overwrite=True)
            bucket = S3Bucket(bucket_name=cfg.s3_bucket, credentials=creds)
            bucket.save(f"rem-bucket-{db}", overwrite=True)
            BackupStorage(bucket=bucket, prefix=cfg.s3_prefix,
                          storage_class=cfg.s3_storage_class, chunk_size_mb=cfg.backup_chunk_size_mb,
                          concurrency=cfg.backup_upload_concurrency,
                          compression_level=cfg.backup_compression).save(storage)
            outcome[storage] = "created"
    encryption = None
    if cfg.backup_encryption in CLIENT_SIDE:  # every flow of the database seals and opens with the same key
        encryption = f"rem-encryption-{db}"
        BackupEncryption(mode=cfg.backup_encryption, kms_key_id=cfg.kms_key_id,
                         key_file=str(cfg.backup_key_file) if cfg.backup_key_file else None,
                         kms_endpoint_url=cfg.kms_endpoint_url).save(encryption, overwrite=True)
        outcome[encryption] = "saved"
    RemDatabase(path=str(cfg.db_path), db_name=db, backup_dir=str(cfg.backup_dir) if cfg.backup_dir else None,
                storage_block=storage if cfg.s3_bucket else None, encryption_block=encryption).save(
        f"rem-db-{db}", overwrite=True)
    outcome[f"rem-db-{db}"] = "saved"
    return outcome


def database_deployments(db: str, host: str, remote: bool) -> dict:
    """prefect.yaml with every deployment renamed for this database, pointed at its blocks and tagged
    with its name and host (which pages and the fleet view read)."""
    import yaml

    spec = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        deployment["name"] = db + ("-follow" if deployment["name"].endswith("-follow") else "")
        params = deployment.setdefault("parameters", {})
        params["database_block"] = f"rem-db-{db}"
        if "storage_block" in params or "upload" in params:
            params.pop("storage_block", None)  # the database block names its storage
            if "upload" in params:
                params["upload"] = remote
        deployment["tags"] = sorted(set(deployment.get("tags", [])) | {f"db:{db}", f"host:{host}"})
    return spec


def deploy_everything(work_pool: str, work_queue: str, cfg, webhook_url: str | None,
                      notification_block: str | None) -> dict:
    import socket
    import tempfile

    import yaml
    from prefect.client.orchestration import get_client

    from deployments.automations import automation_specs, sync_automations
    from runtime.orchestration import prefect_server, writer_limit_name
    from runtime.wiring import identity

    prefect_server("rem deploy")
    if not (webhook_url or notification_block):  # refused before anything is written to the server
        raise UsageError("automations need somewhere to notify: set P8_ALERT_WEBHOOK_URL (or --alert-webhook-url), "
                         "or name a notification block with --notification-block")
    db, host = identity(cfg).name, socket.gethostname()
    env = {**os.environ, "REM_PROJECT_DIR": str(PROJECT_DIR), "REM_WORK_POOL": work_pool,
           "REM_WORK_QUEUE": work_queue}
    result: dict = {"db_name": db, "host": host, "work_pool": work_pool, "work_queue": work_queue}
    block = ensure_notification_block(webhook_url, notification_block)  # a named block that is missing stops here
    result["block_types"] = register_block_types()
    result["blocks"] = database_blocks(cfg, db)
    with get_client(sync_client=True) as client, tempfile.TemporaryDirectory(prefix="rem-deploy-") as tmp:
        result["work_pool_status"] = ensure_work_pool(client, work_pool)
        limit = writer_limit_name(cfg.db_path, host)
        result["writer_limit"] = {limit: ensure_writer_limit(client, limit)}
        spec_file = os.path.join(tmp, "prefect.yaml")
        with open(spec_file, "w") as f:
            yaml.safe_dump(database_deployments(db, host, bool(cfg.s3_bucket)), f, sort_keys=False)
        _run(["--no-prompt", "deploy", "--all", "--prefect-file", spec_file], env)
        result["deployments"] = sorted(f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()
                                       if d.name in (db, f"{db}-follow"))
        result["wal_archive_schedule"] = set_wal_archive_schedule(client, db, int(cfg.pitr_interval_seconds),
                                                                  cfg.pitr_enabled)
        result["automations"] = sync_automations(client, automation_specs(block._block_document_id, cfg.pitr_enabled,
                                                                          ui_base=ui_address()))
    result["notification_block"] = notification_block or NOTIFICATION_BLOCK
    return result


def schedule_pitr(db: str, interval: int) -> str:
    """With a Prefect server configured: the database's wal-archive deployment scheduled at interval
    and active, and the PITR automations on; what was done, as one line."""
    from runtime.orchestration import prefect_api_url

    if not prefect_api_url():
        return "no Prefect API configured: `rem deploy` will schedule wal-archive at this interval"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return ("wal-archive deployment: " + set_wal_archive_schedule(client, db, interval, True)
                + "; automations: " + ", ".join(f"{k} ({v})" for k, v in enable_pitr_automations(client).items()))
