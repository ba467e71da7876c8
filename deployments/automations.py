"""Automations, created or updated by name so that syncing twice changes nothing.

Every trigger names the events it expects and the resources it matches: a trigger without both
matches every event in the workspace.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

BACKUP_FLOWS = ["full-backup", "recovery-drill", "verify"]  # a check that fails is as urgent as a backup
BACKUP_FAILED = "rem: backup or drill run failed"
PAGED_RUN_FAILED = "rem: ad-hoc run failed (--page)"
BACKUP_STALE = "rem: no successful backup"
WAL_STALE = "rem: no WAL archived"
FOLLOWER_STOPPED = "rem: log follower stopped"


def heartbeat(name: str, event: str, window: timedelta, actions: list) -> AutomationCore:
    """Fires for a database whose `event` has not come again within `window` of the previous one:
    `after` and `expect` name the same event, so each occurrence starts the window again."""
    return AutomationCore(
        name=name, description=f"No {event} for a database within {window} of the previous one.",
        trigger=EventTrigger(after={event}, expect={event}, match={"prefect.resource.id": "rem.db.*"},
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=window),
        actions=actions)


# The rest of a failure page: the run's tags (db: and host:), name, id, flow, state and UI address.
RUN_DETAILS = ("{{ flow_run.tags | join(', ') }}): flow run {{ flow_run.name }} ({{ flow_run.id }}) of "
               "{{ flow.name }} entered {{ flow_run.state.name }}: {{ flow_run.state.message }}\n")


def run_link(ui_base: str | None) -> str:
    """The run's UI address: the server's (PREFECT_UI_URL), else the one derived from the API address
    the deploy used (a server without PREFECT_UI_URL renders ui_url as None)."""
    fallback = (f"'{ui_base.rstrip('/')}/runs/flow-run/' ~ flow_run.id" if ui_base else
                "'(no UI address: set PREFECT_UI_URL on the Prefect server)'")
    return "{{ (flow_run | ui_url) or (" + fallback + ") }}"
HOST = "{{ event.resource.get('rem.host') or 'an unknown host' }}"


def run_failed(name: str, description: str, related, actions: list) -> AutomationCore:
    """Fires at once for each flow run entering Failed or Crashed whose related resources match."""
    return AutomationCore(
        name=name, description=description,
        trigger=EventTrigger(expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                             match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=actions)


def automation_specs(notification_block_id: UUID, pitr_enabled: bool, backup_window: timedelta = timedelta(hours=48),
                     wal_window: timedelta = timedelta(hours=1), prefix: str = "",
                     follower_window: timedelta = timedelta(minutes=5),
                     ui_base: str | None = None) -> list[AutomationCore]:
    notify = lambda subject, body: [SendNotification(block_document_id=notification_block_id,  # noqa: E731
                                                     subject=subject, body=body)]
    specs = [
        run_failed(prefix + BACKUP_FAILED, "A backup, verify or recovery-drill run of a deployment failed or crashed.",
                   # Deployment runs only: an ad-hoc run from the command line has its operator watching.
                   [{"prefect.resource.role": "flow", "prefect.resource.name": BACKUP_FLOWS},
                    {"prefect.resource.role": "deployment"}],
                   notify("REM {{ flow.name }} failed: {{ flow.name }}/{{ deployment.name }} ({{ flow_run.name }})",
                          "Database {{ deployment.name }} (" + RUN_DETAILS + run_link(ui_base))),
        run_failed(prefix + PAGED_RUN_FAILED, "A run started from the command line with --page failed or crashed.",
                   {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.rem-page"},
                   notify("REM ad-hoc run failed: {{ flow.name }} ({{ flow_run.name }})",
                          "Started by hand with --page (" + RUN_DETAILS + run_link(ui_base))),
        heartbeat(prefix + BACKUP_STALE, "rem.backup.succeeded", backup_window, notify(
            "REM backup overdue: {{ event.resource.id }} on " + HOST,
            f"No successful backup of {{{{ event.resource.id }}}} within {backup_window}.")),
    ]
    if pitr_enabled:
        specs.append(heartbeat(prefix + WAL_STALE, "rem.wal.archived", wal_window, notify(
            "REM WAL archive stalled: {{ event.resource.id }} on " + HOST,
            f"No WAL archived for {{{{ event.resource.id }}}} within {wal_window}: the recovery window is not moving.")))
        specs.append(heartbeat(prefix + FOLLOWER_STOPPED, "rem.wal.follower.alive", follower_window, notify(
            "REM log follower stopped: {{ event.resource.id }} on " + HOST,
            f"The log follower of {{{{ event.resource.id }}}} sent no heartbeat within {follower_window}: logs the "
            "engine deletes meanwhile are lost to point-in-time recovery (the 5-minute passes pin only what they "
            "find). Restart it: systemctl restart rem-wal-archiver@<name>, or run the wal-archive-follow deployment.")))
    return specs


def sync_automations(client, specs: list[AutomationCore]) -> dict[str, str]:
    """Create each automation, or update the one of that name; duplicates of a name are removed."""
    outcome = {}
    for spec in specs:
        existing = client.read_automations_by_name(spec.name)
        if existing:
            client.update_automation(existing[0].id, spec)
            for extra in existing[1:]:
                client.delete_automation(extra.id)
            outcome[spec.name] = "updated"
        else:
            client.create_automation(spec)
            outcome[spec.name] = "created"
    return outcome
