"""`rem deploy`: block types, the process work pool, every deployment in prefect.yaml, the writer
concurrency limit, the notification block and the automations. Running it twice changes nothing."""

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
        return Block.load(existing) if name else CustomWebhookNotificationBlock.load(slug)
    if not webhook_url:
        raise UsageError("automations need somewhere to notify: set P8_ALERT_WEBHOOK_URL (or --alert-webhook-url), "
                         "or name a notification block with --notification-block")
    block = CustomWebhookNotificationBlock(name="rem-alerts", url=webhook_url, method="POST",
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block.save(NOTIFICATION_BLOCK, overwrite=True)
    return CustomWebhookNotificationBlock.load(NOTIFICATION_BLOCK)


def set_wal_archive_schedule(client, interval_seconds: int, active: bool) -> str:
    """Point the wal-archive deployment's schedule at the [pitr] interval, paused unless PITR is on;
    the follower's deployment is switched with it."""
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name("wal-archive/wal-archive")
    except ObjectNotFound:
        return "not deployed yet: `rem deploy` schedules it"
    schedule = IntervalSchedule(interval=interval_seconds)
    for existing in client.read_deployment_schedules(deployment.id):
        client.update_deployment_schedule(deployment.id, existing.id, active=active, schedule=schedule)
    with contextlib.suppress(ObjectNotFound):  # the follower's restart schedule follows the same switch
        follower = client.read_deployment_by_name("wal-archive/wal-archive-follow")
        for existing in client.read_deployment_schedules(follower.id):
            client.update_deployment_schedule(follower.id, existing.id, active=active)
    return f"every {interval_seconds} s, {'active' if active else 'paused (PITR is not enabled)'}"


def deploy_everything(work_pool: str, work_queue: str, db_name: str, pitr_enabled: bool,
                      webhook_url: str | None, notification_block: str | None, pitr_interval: int = 300) -> dict:
    from prefect.client.orchestration import get_client

    from deployments.automations import automation_specs, sync_automations
    from tasks.runtime import prefect_api_url, writer_limit_name

    if not prefect_api_url():
        raise UsageError("rem deploy needs a Prefect server: set PREFECT_API_URL (or a Prefect profile with one)")
    env = {**os.environ, "REM_PROJECT_DIR": str(PROJECT_DIR), "REM_WORK_POOL": work_pool,
           "REM_WORK_QUEUE": work_queue}
    result: dict = {"work_pool": work_pool, "work_queue": work_queue}
    _run(["block", "register", "-m", "blocks"], env)
    result["block_types"] = ["rem-database", "rem-backup-storage", "rem-backup-encryption"]
    block = ensure_notification_block(webhook_url, notification_block)
    with get_client(sync_client=True) as client:
        result["work_pool_status"] = ensure_work_pool(client, work_pool)
        result["writer_limit"] = {writer_limit_name(db_name): ensure_writer_limit(client, writer_limit_name(db_name))}
        _run(["--no-prompt", "deploy", "--all", "--prefect-file", str(PROJECT_DIR / "prefect.yaml")], env)
        result["deployments"] = sorted(f"{d.name}" for d in client.read_deployments())
        result["wal_archive_schedule"] = set_wal_archive_schedule(client, pitr_interval, pitr_enabled)
        result["automations"] = sync_automations(client, automation_specs(block._block_document_id, pitr_enabled))
    result["notification_block"] = notification_block or NOTIFICATION_BLOCK
    return result
