"""rem fleet status: every database the Prefect server schedules, from its deployments (tagged
db:NAME and host:HOST by `rem deploy`), their runs, artifacts and the databases' own events."""

from __future__ import annotations

import contextvars
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from rem.health import BACKUP_MAX_AGE_HOURS, WAL_LAG_WARN_SECONDS
from runtime.observe import publish_table
from runtime.orchestration import flow, prefect_server


def _tag(tags: list[str], kind: str) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith(kind + ":")), None)


FINAL = ["COMPLETED", "FAILED", "CRASHED"]  # a run's result; a cancelled one says nothing of the database
CHECKED_FLOWS = ("full-backup", "verify", "recovery-drill")  # their last result is each database's verdict
# A scheduled run this late has no worker polling its queue (Prefect marks runs Late after 15 s).
OVERDUE_MINUTES = 15


def _runs(client, deployment_ids: list, states: list[str], soonest: bool = False, limit: int = 1,
          offset: int = 0) -> list:
    """The deployments' runs in one of states: newest first by when they ended, or soonest first by
    when they are expected to start."""
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployment_ids))),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC if soonest else FlowRunSort.END_TIME_DESC, limit=limit,
        offset=offset)


def _latest_run(client, deployment_id, states: list[str]):
    """The deployment's newest run in one of states, by when it ended (a scheduled run has not)."""
    runs = _runs(client, [deployment_id], states)
    return runs[0] if runs else None


RECENT = 50  # a database's newest final runs (or events) read at once; each verdict is usually among them
FLEET_PAGE = 200  # runs (or events, 50 at most) a fleet-wide read takes at once
FLEET_PAGES = 10  # pages a fleet-wide read goes through before the databases it has not settled are read alone
WAITING = 20  # a database's soonest scheduled runs looked at for overdue ones


def _completed(run) -> bool:
    return bool(run.state) and run.state.type.value == "COMPLETED"


def _fleet_pages(read) -> Iterator[tuple[list, bool]]:
    """read(limit, offset) page after page (at most FLEET_PAGES), each with whether it was the last.
    Pages by offset over runs by end time, where two runs rarely share a key: a run that ends while
    they are read shifts the rest down and one is read twice, never skipped."""
    for number in range(FLEET_PAGES):
        page = read(FLEET_PAGE, number * FLEET_PAGE)
        yield page, len(page) < FLEET_PAGE


def _fleet_final_runs(client, deployment_ids: list, with_completed: bool) -> tuple[dict, dict, set]:
    """Each deployment's newest final run (and newest completed one), read newest first across all of
    them; and the deployments settled: those whose runs were all read, or whose answers were seen."""
    latest, completed = {}, {}
    answered = completed if with_completed else latest
    for page, last in _fleet_pages(lambda limit, offset: _runs(client, deployment_ids, FINAL, limit=limit,
                                                               offset=offset)):
        for run in page:
            latest.setdefault(run.deployment_id, run)
            if with_completed and _completed(run):
                completed.setdefault(run.deployment_id, run)
        if last:
            return latest, completed, set(deployment_ids)
        if len(answered) == len(deployment_ids):
            break
    return latest, completed, set(answered)


def _fleet_waiting(client, db_of: dict, now: datetime) -> tuple[dict, set]:
    """Each database's overdue scheduled runs (among its WAITING soonest) and its next one, from one
    read of the fleet's FLEET_PAGE soonest; and the databases settled (every run read, or the answer
    seen). One page only: every database's cron runs at the same instant, and pages by offset over
    equal sort keys may skip a run, which here could hide an overdue one."""
    page = _runs(client, list(db_of), ["SCHEDULED"], soonest=True, limit=FLEET_PAGE)
    waiting: dict[str, list] = {db: [] for db in set(db_of.values())}
    settled: set[str] = set()
    for run in page:
        db = db_of[run.deployment_id]
        if db not in settled:
            waiting[db].append(run)
            if len(waiting[db]) == WAITING or not _overdue(run, now):
                settled.add(db)
    if len(page) < FLEET_PAGE:
        settled = set(waiting)
    return {db: _split_waiting(waiting[db], now) for db in settled}, settled


def _overdue(run, now: datetime) -> bool:
    return bool(run.expected_start_time) and (now - run.expected_start_time).total_seconds() > OVERDUE_MINUTES * 60


def _split_waiting(waiting: list, now: datetime) -> tuple[list, Any]:
    """The overdue runs among a database's soonest scheduled ones, and the first that is not."""
    overdue = [r for r in waiting if _overdue(r, now)]
    return overdue, next((r for r in waiting if r not in overdue), None)


def _scheduled(client, deployment_ids: list) -> list:
    """The runs still waiting, soonest (or most overdue) first."""
    return _runs(client, deployment_ids, ["SCHEDULED"], soonest=True, limit=WAITING)


EVENTS = ("rem.backup.succeeded", "rem.wal.archived")  # each database's newest of each is in its row


def _latest_events(client, names: list[str], resource_id: str) -> dict[str, dict | None]:
    """The newest event of each name about the database: one read of its RECENT newest events of
    those names, and for a name not among them when that page is full, its own read."""
    events = _events(client, {"event": {"name": names}, "resource": {"id": [resource_id]}}, RECENT)["events"]
    latest: dict[str, dict | None] = {}
    for event in events:
        latest.setdefault(event["event"], event)
    for name in names:
        if name not in latest:
            found = _events(client, {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, 1)["events"] \
                if len(events) == RECENT else []
            latest[name] = found[0] if found else None
    return latest


def _fleet_events(client, name: str, dbs: list[str]) -> tuple[dict, set]:
    """Each database's newest event of that name, read newest first across the fleet (the server's
    pages of at most RECENT); and the databases settled (every event read, or theirs seen)."""
    ids = {f"rem.db.{db}": db for db in dbs}
    page = _events(client, {"event": {"name": [name]}, "resource": {"id": list(ids)}}, min(RECENT, FLEET_PAGE))
    latest: dict[str, dict] = {}
    for _ in range(FLEET_PAGES):
        for event in page["events"]:
            db = ids.get(event["resource"].get("prefect.resource.id"))
            if db is not None:
                latest.setdefault(db, event)
        if not page.get("next_page") or not page["events"]:
            return latest, set(dbs)
        if len(latest) == len(dbs):
            break
        page = _next_events(client, page["next_page"])
    return latest, set(latest)


def _events(client, event_filter: dict, limit: int) -> dict:
    """A page of the newest events the filter matches, through the server's events API."""
    response = client.request("POST", "/events/filter", json={"filter": {**event_filter, "order": "DESC"},
                                                              "limit": limit})
    response.raise_for_status()
    return response.json()


def _next_events(client, url: str) -> dict:
    response = client.request("GET", "/events/filter/next", params=dict(urllib.parse.parse_qsl(
        urllib.parse.urlsplit(url).query)))
    response.raise_for_status()
    return response.json()


PAGE = 200  # the most a Prefect server returns for one read (PREFECT_API_DEFAULT_LIMIT)
ROW_THREADS = 8  # databases whose remaining reads are made at once (each read waits on the server)


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


@dataclass(frozen=True)
class Deployment:
    """What the fleet view needs of a deployment: read as JSON, since parsing 2,200 whole deployments
    (their parameter schemas) took a second of the view's time."""

    id: UUID
    name: str
    flow_id: UUID
    tags: tuple[str, ...]
    work_queue_name: str | None


def _deployments(client) -> list[Deployment]:
    def read(limit: int, offset: int) -> list[Deployment]:
        response = client.request("POST", "/deployments/filter", json={"limit": limit, "offset": offset})
        response.raise_for_status()
        return [Deployment(UUID(d["id"]), d["name"], UUID(d["flow_id"]), tuple(d.get("tags") or ()),
                           d.get("work_queue_name")) for d in response.json()]

    return _every(read)


@dataclass
class FleetReads:
    """What the fleet-wide reads found: per checked flow (latest, completed, settled deployments), per
    event (newest by database, settled databases), and each settled database's waiting runs."""

    runs: dict[str, tuple[dict, dict, set]]
    events: dict[str, tuple[dict, set]]
    waiting: dict[str, tuple[list, Any]]


def _fleet_reads(client, named: dict[str, dict], by_db: dict[str, list], now: datetime) -> FleetReads:
    runs = {}
    for name in CHECKED_FLOWS:
        if ids := [flows_of[name].id for flows_of in named.values() if name in flows_of]:
            runs[name] = _fleet_final_runs(client, ids, with_completed=name == "full-backup")
    events = {name: _fleet_events(client, name, sorted(by_db)) for name in EVENTS}
    waiting, settled = _fleet_waiting(client, {d.id: db for db, deps in by_db.items() for d in deps}, now)
    return FleetReads(runs, events, {db: waiting[db] for db in settled})


def database_rows(client, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per database: host, newest successful backup and its age, PITR lag, last verify,
    health, next scheduled run, and what breaches the runbook's thresholds. Runs and events are read
    fleet-wide, newest (or soonest) first, a few pages at most: a server answers one request at a
    time, and 200 databases read one by one took 10 s. What those pages left out is read database by
    database, ROW_THREADS at a time, each thread with a client of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.orchestration import get_client

    now = now or datetime.now(timezone.utc)
    flows = {f.id: f.name for f in _every(client.read_flows)}
    by_db: dict[str, list] = {}
    for deployment in _deployments(client):
        if db := _tag(list(deployment.tags), "db"):
            by_db.setdefault(db, []).append(deployment)
    if not by_db:
        return []
    health = _health(client, sorted(by_db))
    named = {db: {flows.get(d.flow_id): d for d in deps if not d.name.endswith("-follow")}
             for db, deps in by_db.items()}
    fleet = _fleet_reads(client, named, by_db, now)
    local = threading.local()
    opened = []

    def own_client():
        if not hasattr(local, "client"):
            local.client = get_client(sync_client=True).__enter__()
            opened.append(local.client)
        return local.client

    def row(db: str) -> dict[str, Any]:
        return _database_row(own_client, db, by_db[db], named[db], flows, health[db], now, fleet)

    try:
        with ThreadPoolExecutor(ROW_THREADS, thread_name_prefix="rem-fleet") as pool:
            # each in a copy of this context: Prefect's settings (the API it talks to) live in context
            # variables, which a pool's threads do not inherit
            return [f.result() for f in [pool.submit(contextvars.copy_context().run, row, db) for db in sorted(by_db)]]
    finally:
        for each in opened:
            each.__exit__(None, None, None)


def _database_row(client, db: str, deployments: list, named: dict, flows: dict, health: str, now: datetime,
                  fleet: FleetReads) -> dict[str, Any]:
    """client(): this thread's client, for what the fleet-wide reads did not settle."""
    results, last_backup = {}, None
    for name in CHECKED_FLOWS:
        if name not in named:
            continue
        deployment_id = named[name].id
        latest, completed, settled = fleet.runs[name]
        results[name] = latest.get(deployment_id) if deployment_id in latest or deployment_id in settled \
            else _latest_run(client(), deployment_id, FINAL)
        if name == "full-backup":
            last_backup = completed.get(deployment_id) if deployment_id in settled \
                else _latest_run(client(), deployment_id, ["COMPLETED"])
    backup_at = last_backup.end_time if last_backup else None
    unsettled = [name for name in EVENTS if db not in fleet.events[name][1]]
    found = _latest_events(client(), unsettled, f"rem.db.{db}") if unsettled else {}
    events = {name: found[name] if name in found else fleet.events[name][0].get(db) for name in EVENTS}
    succeeded, archived = events["rem.backup.succeeded"], events["rem.wal.archived"]
    confirmed = (archived or {}).get("payload", {}).get("confirmed_timestamp")
    lag = round((now - datetime.fromisoformat(confirmed.replace("Z", "+00:00"))).total_seconds(), 1) \
        if confirmed else None
    overdue, upcoming = fleet.waiting[db] if db in fleet.waiting else \
        _split_waiting(_scheduled(client(), [d.id for d in deployments]), now)
    last = {name: (run.state.name if run and run.state else None) for name, run in results.items()}
    row = {"db": db, "status": "ok", "why": "", "host": _tag(list(deployments[0].tags), "host"),
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

    prefect_server("rem fleet status")
    with get_client(sync_client=True) as client:
        rows = database_rows(client)
    publish_table("fleet-status", [{k: v for k, v in r.items() if k not in ("breaches", "overdue")} for r in rows],
                  description="Every database on this Prefect server, against the runbook's thresholds: "
                              "database, status and why first")
    return {"ok": not any(r["breaches"] for r in rows), "databases": rows}
