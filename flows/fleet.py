"""rem fleet status: every database the Prefect server schedules, from its deployments (tagged
db:NAME and host:HOST by `rem deploy`), their runs, artifacts and the databases' own events."""

from __future__ import annotations

import contextvars
import json
import os
import re
import threading
import urllib.request
from datetime import datetime, timezone
from typing import Any

from rem.health import BACKUP_MAX_AGE_HOURS, WAL_LAG_WARN_SECONDS
from runtime.observe import publish_table
from runtime.orchestration import flow, prefect_api_url


def _tag(tags: list[str], kind: str) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith(kind + ":")), None)


FINAL = ["COMPLETED", "FAILED", "CRASHED"]  # a run's result; a cancelled one says nothing of the database
CHECKED_FLOWS = ("full-backup", "verify", "recovery-drill")  # their last result is each database's verdict
# A scheduled run this late has no worker polling its queue (Prefect marks runs Late after 15 s).
OVERDUE_MINUTES = 15


def _latest_run(client, deployment_id, states: list[str]):
    """The deployment's newest run in one of states, by when it ended (a scheduled run has not)."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                 flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                                     type=FlowRunFilterStateType(any_=states))),
                                 sort=FlowRunSort.END_TIME_DESC, limit=1)
    return runs[0] if runs else None


RECENT = 50  # a database's newest final runs (or events) read at once; each verdict is usually among them


def _latest_runs(client, named: dict) -> tuple[dict, Any]:
    """Each checked deployment's newest final run and the newest completed backup, from one read of
    their RECENT newest final runs; only when that page is full and one is not on it, its own read."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort

    checked = {name: named[name] for name in CHECKED_FLOWS if name in named}
    if not checked:
        return {}, None
    names = {d.id: name for name, d in checked.items()}
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(names))),
                                 flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                                     type=FlowRunFilterStateType(any_=FINAL))),
                                 sort=FlowRunSort.END_TIME_DESC, limit=RECENT)
    latest, backup = {}, None
    for run in runs:
        name = names[run.deployment_id]
        latest.setdefault(name, run)
        if backup is None and name == "full-backup" and run.state and run.state.type.value == "COMPLETED":
            backup = run
    if len(runs) == RECENT:
        for name, deployment in checked.items():
            if name not in latest:
                latest[name] = _latest_run(client, deployment.id, FINAL)
        if backup is None and "full-backup" in checked:
            backup = _latest_run(client, checked["full-backup"].id, ["COMPLETED"])
    return {name: latest.get(name) for name in checked}, backup


def _scheduled(client, deployment_ids: list) -> list:
    """The runs still waiting, soonest (or most overdue) first."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=20)


def _latest_events(names: list[str], resource_id: str) -> dict[str, dict | None]:
    """The newest event of each name about the database: one read of its RECENT newest events of
    those names, and for a name not among them when that page is full, its own read."""
    events = _events(names, resource_id, RECENT)
    latest: dict[str, dict | None] = {}
    for event in events:
        latest.setdefault(event["event"], event)
    for name in names:
        if name not in latest:
            found = _events([name], resource_id, 1) if len(events) == RECENT else []
            latest[name] = found[0] if found else None
    return latest


def _events(names: list[str], resource_id: str, limit: int) -> list[dict]:
    """The newest events of those names about the database, through the server's events API."""
    body = json.dumps({"filter": {"event": {"name": names}, "resource": {"id": [resource_id]},
                                  "order": "DESC"}, "limit": limit}).encode()
    headers = {"Content-Type": "application/json"}
    if key := os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(prefect_api_url().rstrip("/") + "/events/filter", data=body, headers=headers,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()).get("events", [])


PAGE = 200  # the most a Prefect server returns for one read (PREFECT_API_DEFAULT_LIMIT)
ROW_THREADS = 8  # databases whose runs and events are read at once (each read waits on the server)


def _every(read, **filters) -> list:
    """Every item of a paged read: one call returns at most PAGE (a fleet of 25 databases has 200
    deployments)."""
    items, offset = [], 0
    while True:
        page = read(limit=PAGE, offset=offset, **filters)
        items += page
        if len(page) < PAGE:
            return items
        offset += PAGE


def _health(client, dbs: list[str]) -> dict[str, str]:
    """Each database's health, from the newest `health-{db}` artifact: one read per PAGE databases."""
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    found = {}
    keys = [f"health-{db}" for db in dbs]
    for start in range(0, len(keys), PAGE):
        for artifact in client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(any_=keys[start:start + PAGE])), limit=PAGE):
            if isinstance(artifact.data, str) and artifact.data.startswith("# Health: "):
                found[artifact.key] = artifact.data.split("\n", 1)[0].removeprefix("# Health: ").strip()
    return {db: found.get(f"health-{db}", "unknown") for db in dbs}


def _age_hours(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds() / 3600, 2)


def database_rows(client, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per database: host, newest successful backup and its age, PITR lag, last verify,
    health, next scheduled run, and what breaches the runbook's thresholds. The databases' runs and
    events are read ROW_THREADS at a time, each thread with a client of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.orchestration import get_client

    now = now or datetime.now(timezone.utc)
    flows = {f.id: f.name for f in _every(client.read_flows)}
    by_db: dict[str, list] = {}
    for deployment in _every(client.read_deployments):
        if db := _tag(deployment.tags or [], "db"):
            by_db.setdefault(db, []).append(deployment)
    health = _health(client, sorted(by_db))
    local = threading.local()
    opened = []

    def row(item: tuple[str, list]) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = get_client(sync_client=True).__enter__()
            opened.append(local.client)
        return _database_row(local.client, *item, flows, health[item[0]], now)

    try:
        with ThreadPoolExecutor(ROW_THREADS, thread_name_prefix="rem-fleet") as pool:
            # each in a copy of this context: Prefect's settings (the API it talks to) live in context
            # variables, which a pool's threads do not inherit
            return [f.result() for f in [pool.submit(contextvars.copy_context().run, row, item)
                                         for item in sorted(by_db.items())]]
    finally:
        for each in opened:
            each.__exit__(None, None, None)


def _database_row(client, db: str, deployments: list, flows: dict, health: str, now: datetime) -> dict[str, Any]:
    named = {flows.get(d.flow_id): d for d in deployments if not d.name.endswith("-follow")}
    results, last_backup = _latest_runs(client, named)
    backup_at = last_backup.end_time if last_backup else None
    events = _latest_events(["rem.backup.succeeded", "rem.wal.archived"], f"rem.db.{db}")
    succeeded, archived = events["rem.backup.succeeded"], events["rem.wal.archived"]
    confirmed = (archived or {}).get("payload", {}).get("confirmed_timestamp")
    lag = round((now - datetime.fromisoformat(confirmed.replace("Z", "+00:00"))).total_seconds(), 1) \
        if confirmed else None
    waiting = _scheduled(client, [d.id for d in deployments])
    overdue = [r for r in waiting if r.expected_start_time and
               (now - r.expected_start_time).total_seconds() > OVERDUE_MINUTES * 60]
    upcoming = next((r for r in waiting if r not in overdue), None)
    last = {name: (run.state.name if run and run.state else None) for name, run in results.items()}
    row = {"db": db, "status": "ok", "why": "", "host": _tag(deployments[0].tags or [], "host"),
           "work_queue": deployments[0].work_queue_name,
           "last_backup": backup_at.isoformat() if backup_at else None,
           "backup_age_hours": _age_hours(backup_at, now),
           "pitr_lag_seconds": lag,
           "repository_bytes": (succeeded or {}).get("payload", {}).get("repository_bytes"),
           "last_backup_run": last.get("full-backup"), "last_verify": last.get("verify"),
           "last_drill": last.get("recovery-drill"),
           "health": health,
           "overdue": [f"{flows.get(r.flow_id)} due {r.expected_start_time.isoformat()}" for r in overdue],
           "next_run": (f"{flows.get(upcoming.flow_id)} at {upcoming.expected_start_time.isoformat()}"
                        if upcoming else None)}
    breaches = []
    if row["backup_age_hours"] is None or row["backup_age_hours"] > BACKUP_MAX_AGE_HOURS:
        breaches.append(f"no successful backup within {BACKUP_MAX_AGE_HOURS} h")
    for name, run in results.items():
        if run is not None and run.state and run.state.type.value in ("FAILED", "CRASHED"):
            why = re.sub(r"^Flow run encountered an exception: \w+: ", "",
                         (run.state.message or "").strip().split("\n", 1)[0])[:300]
            breaches.append(f"last {name} {run.state.name.lower()} ({run.name})" + (f": {why}" if why else ""))
    if lag is not None and lag > WAL_LAG_WARN_SECONDS:
        breaches.append(f"PITR lag over {WAL_LAG_WARN_SECONDS} s")
    if row["health"] == "unhealthy":
        breaches.append("unhealthy")
    for run in overdue:
        late = int((now - run.expected_start_time).total_seconds() // 60)
        breaches.append(f"{flows.get(run.flow_id)} overdue by {late} min: no worker polls queue "
                        f"{run.work_queue_name or row['work_queue']}")
    row["breaches"] = breaches
    row["status"], row["why"] = ("BREACH", "; ".join(breaches)) if breaches else ("ok", "")
    return row


@flow("fleet-status", description="Every database the server schedules: backups, PITR lag, verify, health.")
def fleet_status() -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    from rem.errors import UsageError

    if not prefect_api_url():
        raise UsageError("rem fleet status reads the Prefect server: set PREFECT_API_URL")
    with get_client(sync_client=True) as client:
        rows = database_rows(client)
    publish_table("fleet-status", [{k: v for k, v in r.items() if k not in ("breaches", "overdue")} for r in rows],
                  description="Every database on this Prefect server, against the runbook's thresholds: "
                              "database, status and why first")
    return {"ok": not any(r["breaches"] for r in rows), "databases": rows}
