"""Deployments and automations against a real `prefect server` on 127.0.0.1 (started once per session)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import REPO, db_name_of, rem


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every notification it is sent."""

    def __init__(self):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    note = json.loads(body or b"{}")
                except ValueError:
                    note = {"raw": body.decode(errors="replace")}
                outer.received.append({**note, "received_at": time.time()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, seconds: float) -> dict | None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            for note in list(self.received):
                if predicate(note):
                    return note
            time.sleep(0.5)
        return None


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def api(prefect_api):
    """This process and every subprocess talk to the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {"PREFECT_API_URL": prefect_api["url"], "PREFECT_HOME": prefect_api["home"]}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api["url"]}):
        yield env
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


FLOWS = ["full-backup", "health-and-metrics", "pitr-log", "pitr-undo", "prune", "recovery-drill", "verify",
         "wal-archive", "weekly-maintenance"]


def _deploy(env, queue):
    return json.loads(rem("deploy", "--work-pool", "rem-test", "--work-queue", queue, "--json", env=env,
                          check=True).stdout)


def _deployments_of(client, db):
    """Each of the database's deployments as what a redeploy of another database must not change."""
    return {d.name + "@" + client.read_flow(d.flow_id).name: (d.id, d.updated, d.work_queue_name, d.parameters,
                                                              sorted(d.tags), [(s.schedule, s.active) for s in d.schedules])
            for d in client.read_deployments() if d.name in (db, db + "-follow")}


@pytest.fixture(scope="module")
def deployed(api, receiver, tmp_path_factory, s3_endpoint):
    """Two databases, each kept at .../db on its own "host" (queue), sharing one bucket and one server."""
    import boto3

    from tests.engine.sample import engine_sample
    from tests.helpers import db_name_of

    bucket = f"rem-fleet-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    hosts = {}
    for host in ("host-a", "host-b"):
        db = tmp_path_factory.mktemp(host) / "db"
        engine_sample(db, 500, 2, 3, 16)
        hosts[host] = {"db": db, "name": db_name_of(db),
                       "env": {**api, "P8_DB_PATH": str(db), "P8_ALERT_WEBHOOK_URL": receiver.url,
                               "P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint,
                               "P8_BACKUP_CHUNK_SIZE_MB": "5"}}
    a, b = hosts["host-a"], hosts["host-b"]
    first = _deploy(a["env"], "host-a")
    second = _deploy(a["env"], "host-a")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        a_before = _deployments_of(client, a["name"])
    b["deployed"] = _deploy(b["env"], "host-b")
    return {"a": a, "b": b, "bucket": bucket, "first": first, "second": second, "a_before": a_before,
            "env": a["env"]}


def test_deploying_a_second_database_changes_nothing_of_the_first(deployed):
    from prefect.client.orchestration import get_client

    from blocks import RemDatabase

    a, b = deployed["a"], deployed["b"]
    assert a["name"] != b["name"]  # both live at .../db on their hosts
    assert deployed["second"]["work_pool_status"] == "exists"
    assert set(deployed["second"]["automations"].values()) == {"updated"}
    with get_client(sync_client=True) as client:
        assert _deployments_of(client, a["name"]) == deployed["a_before"]  # not one field of A moved
        for db, queue in ((a, "host-a"), (b, "host-b")):
            mine = [d for d in client.read_deployments() if d.name in (db["name"], db["name"] + "-follow")]
            assert sorted(client.read_flow(d.flow_id).name for d in mine) == sorted(FLOWS + ["wal-archive"])
            assert {d.work_queue_name for d in mine} == {queue}
            assert all(d.parameters["database_block"] == f"rem-db-{db['name']}" and f"db:{db['name']}" in d.tags
                       for d in mine)
            backup = next(d for d in mine if client.read_flow(d.flow_id).name == "full-backup")
            assert backup.schedules[0].schedule.cron == "0 2 * * *" and backup.parameters["upload"] is True
            undo = next(d for d in mine if client.read_flow(d.flow_id).name == "pitr-undo")
            assert not undo.schedules and undo.parameters["wait_for_approval"] is True  # run by hand, approved
            for d in mine:  # PITR is not enabled for these databases: no archival runs
                if client.read_flow(d.flow_id).name == "wal-archive":
                    assert not d.schedules[0].active
            block = RemDatabase.load(f"rem-db-{db['name']}")
            assert (block.path, block.db_name, block.storage_block) == (str(db["db"]), db["name"],
                                                                        f"rem-backups-{db['name']}")
        limits = {lim.name: lim.limit for lim in client.read_global_concurrency_limits(limit=200)}
        slots = [next(iter(r["writer_limit"])) for r in (deployed["first"], b["deployed"])]
        assert slots[0] != slots[1] and all(limits.get(s) == 1 for s in slots)  # one writer slot per database
        # the path with every run of characters outside [A-Za-z0-9.-] as one '-' (tmp names carry '_')
        assert all(re.sub(r"[^A-Za-z0-9.-]+", "-", str(db["db"]).strip("/")) in s for db, s in zip((a, b), slots))
        # every block type is offered in the UI, the encryption one too though no block of it was saved
        assert deployed["first"]["block_types"] == ["rem-backup-encryption", "rem-backup-storage", "rem-database"]
        for slug in deployed["first"]["block_types"]:
            assert client.read_block_type_by_slug(slug).slug == slug
        for name in deployed["first"]["automations"]:
            found = client.read_automations_by_name(name)
            assert len(found) == 1
            trigger = found[0].trigger
            assert trigger.expect and trigger.match.root  # never a trigger that matches every event


def test_a_deploy_with_nowhere_to_notify_is_refused_in_one_line_before_it_writes_anything(deployed, tmp_path):
    from prefect.client.orchestration import get_client

    from tests.engine.sample import engine_sample

    db = tmp_path / "db"
    engine_sample(db, 50, 1, 3, 16)
    name = db_name_of(db)
    env = {**deployed["env"], "P8_DB_PATH": str(db), "P8_ALERT_WEBHOOK_URL": ""}
    with get_client(sync_client=True) as client:
        before = {b.name for b in client.read_block_documents()}
        for args in ([], ["--notification-block", "custom-webhook/nowhere"]):
            proc = rem("deploy", "--work-pool", "rem-test", "--work-queue", "host-c", *args, env=env)
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
            assert "notif" in proc.stderr
        assert not [d for d in client.read_deployments() if name in d.name]
        assert {b.name for b in client.read_block_documents()} == before


def _schedule(db_name, parameters=None):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"full-backup/{db_name}")
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {}).id


def _work(queue, env):
    subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "rem-test", "--work-queue", queue,
                    "--run-once"], cwd=REPO, env={**os.environ, **env}, capture_output=True, timeout=180)


def _final_state(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for _ in range(60):
            state = client.read_flow_run(run_id).state
            if state.is_final():
                return state
            time.sleep(1)
    raise AssertionError("the flow run did not finish")


def test_each_backup_runs_on_its_own_hosts_worker_under_its_own_prefix(deployed, s3):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    a, b = deployed["a"], deployed["b"]
    fleet = rem("fleet", "status", "--json", env=deployed["env"])
    assert fleet.returncode == 1  # neither has a backup yet: a breach
    rows = {r["db"]: r for r in json.loads(fleet.stdout)["databases"]}
    assert {a["name"], b["name"]} <= set(rows) and rows[a["name"]]["host"] == socket.gethostname()

    run_a, run_b = _schedule(a["name"]), _schedule(b["name"])
    _work("host-b", b["env"])  # host B's worker takes only host B's run
    assert _final_state(run_b).type.value == "COMPLETED"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_a).state.type.value == "SCHEDULED"
    _work("host-a", a["env"])
    assert _final_state(run_a).type.value == "COMPLETED"
    with get_client(sync_client=True) as client:  # runs an operator can tell apart, with forms that guide
        run = client.read_flow_run(run_a)
        assert run.name.startswith(f"full-backup/{a['name']} 20") and f"db:{a['name']}" in run.tags, run.name
        for deployment in client.read_deployments():
            if deployment.name in (a["name"], a["name"] + "-follow"):
                properties = deployment.parameter_openapi_schema["properties"]
                assert all(p.get("description") for p in properties.values()), (deployment.name, properties)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=deployed["bucket"])["Contents"]]
    for db in (a, b):
        assert any(k.startswith(f"{db['name']}/backups/full/_all/") and k.endswith("/metadata.json") for k in keys)
    assert all(k.split("/")[0] in (a["name"], b["name"]) for k in keys)  # nothing outside the two prefixes
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_a])))
    assert any(x.key == f"backup-{a['name']}" and "SHA-256" in x.data for x in artifacts)
    table = next(x for x in artifacts if x.key == f"recent-backups-{a['name']}")
    rows = json.loads(table.data)
    assert table.type == "table" and len(rows) == 1 and f"/{a['name']}/backups/full/" in rows[0]["location"]  # A's only
    progress = [x for x in artifacts if x.type == "progress"]
    assert progress and float(progress[0].data) == 100.0  # the upload's progress artifact ran to the end

    fleet = rem("fleet", "status", "--json", env=deployed["env"])
    rows = {r["db"]: r for r in json.loads(fleet.stdout)["databases"]}
    for db in (a, b):
        assert rows[db["name"]]["backup_age_hours"] is not None and rows[db["name"]]["backup_age_hours"] < 1
        assert rows[db["name"]]["work_queue"] == ("host-a" if db is a else "host-b")


def test_a_failed_backup_pages_naming_its_host_database_and_run(deployed, receiver, s3_endpoint):
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import BackupStorage

    b = deployed["b"]
    creds = AwsCredentials(region_name="us-east-1", aws_client_parameters=AwsClientParameters(endpoint_url=s3_endpoint))
    BackupStorage(bucket=S3Bucket(bucket_name="rem-no-such-bucket", credentials=creds)).save(
        "rem-backups-broken", overwrite=True)
    run_id = _schedule(b["name"], {"storage_block": "rem-backups-broken"})
    _work("host-b", b["env"])
    state = _final_state(run_id)
    assert state.type.value == "FAILED"
    note = receiver.wait_for(lambda n: "backup failed" in n.get("subject", "") and str(run_id) in n.get("body", ""),
                             30)
    assert note is not None, receiver.received
    assert note["received_at"] - state.timestamp.timestamp() < 30  # from the run failing to the page arriving
    assert b["name"] in note["subject"] and f"host:{socket.gethostname()}" in note["body"]
    assert "rem-no-such-bucket" in note["body"] and deployed["a"]["name"] not in note["body"]
    link = note["body"].strip().splitlines()[-1]  # this server runs without PREFECT_UI_URL
    assert link != "None" and link.endswith(f"/runs/flow-run/{run_id}"), note["body"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:  # the failed run says why in the UI too
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert any(isinstance(x.data, str) and "Backup: FAILED" in x.data and "rem-no-such-bucket" in x.data
               for x in artifacts), [x.data for x in artifacts]

    # By hand from the command line the same failure pages only when asked to.
    broken = {**b["env"], "P8_S3_BUCKET": "rem-no-such-bucket"}
    assert rem("--db-path", str(b["db"]), "backup", "create", "--upload", "--name", "by-hand", env=broken).returncode
    assert rem("--db-path", str(b["db"]), "--page", "backup", "create", "--upload", "--name", "paged",
               env=broken).returncode
    paged = receiver.wait_for(lambda n: "ad-hoc run failed" in n.get("subject", ""), 30)
    assert paged is not None and "adhoc" in paged["body"] and "rem-no-such-bucket" in paged["body"], receiver.received
    time.sleep(3)  # the unasked run failed first: its page, were there one, would be here by now
    pages = [n for n in receiver.received if "failed" in n.get("subject", "")]
    assert len(pages) == 2, pages  # the deployment run's and the --page run's, nothing for the unasked one


def _run_deployment(name: str, parameters=None):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {}).id


def test_a_verify_that_finds_damage_ends_failed_and_pages(deployed, receiver):
    from tests.helpers import dump_all
    from tests.test_verify import plant

    b = deployed["b"]
    key, value = next((k, v) for k, v in sorted(dump_all(b["db"])["entities"].items())
                      if k.startswith(b"entity:") and not k.startswith(b"entity:default:"))
    plant(b["db"], [("entities", key, b"{broken")])  # damage the engine's write paths cannot produce
    try:
        run_id = _run_deployment(f"verify/{b['name']}")
        _work("host-b", b["env"])
        state = _final_state(run_id)
        assert state.type.value == "FAILED", state
        assert "critical" in state.message and key.decode() in state.message, state.message
        note = receiver.wait_for(lambda n: "verify failed" in n.get("subject", "")
                                 and str(run_id) in n.get("body", ""), 30)
        assert note is not None, receiver.received
        assert b["name"] in note["subject"] and "critical" in note["body"]
    finally:
        plant(b["db"], [("entities", key, value)])
    by_hand = rem("--db-path", str(b["db"]), "db", "verify", "--json", env=b["env"])
    assert by_hand.returncode == 0 and json.loads(by_hand.stdout)["ok"], by_hand.stderr

    # The fleet view shows that failure, and a run no worker picked up, as breaches with why.
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    a = deployed["a"]
    with get_client(sync_client=True) as client:
        health = client.read_deployment_by_name(f"health-and-metrics/{a['name']}")
        late = client.create_flow_run_from_deployment(health.id, state=Scheduled(
            scheduled_time=datetime.now(timezone.utc) - timedelta(hours=2))).id
    try:
        fleet = rem("fleet", "status", "--json", env=deployed["env"])
        assert fleet.returncode == 1, fleet.stderr
        rows = {r["db"]: r for r in json.loads(fleet.stdout)["databases"]}
        assert rows[b["name"]]["status"] == "BREACH" and rows[b["name"]]["last_verify"] == "Failed"
        assert "last verify failed" in rows[b["name"]]["why"] and key.decode() in rows[b["name"]]["why"]
        overdue = [x for x in rows[a["name"]]["breaches"] if "overdue" in x]
        assert overdue and "health-and-metrics overdue by 1" in overdue[0] and "host-a" in overdue[0], rows[a["name"]]
        assert list(rows[a["name"]])[:3] == ["db", "status", "why"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(late)


def test_a_scheduled_backup_writes_where_its_blocks_say_not_where_the_workers_environment_does(deployed, s3):
    from prefect.client.orchestration import get_client
    from prefect_aws import S3Bucket

    b = deployed["b"]
    with get_client(sync_client=True) as client:  # the bucket is a block of its own: the UI shows and edits it
        storage = client.read_block_document_by_name(f"rem-backups-{b['name']}", "rem-backup-storage")
        nested = storage.block_document_references["bucket"]
        bucket_doc = client.read_block_document(nested["block_document"]["id"])
    assert bucket_doc.name == f"rem-bucket-{b['name']}" and not bucket_doc.is_anonymous
    bucket_block = S3Bucket.load(bucket_doc.name)
    theirs, mine = deployed["bucket"], f"rem-edited-{os.getpid()}"  # the worker's P8_S3_BUCKET, the block's
    s3.create_bucket(Bucket=mine)
    records = lambda name: {o["Key"] for o in s3.list_objects_v2(Bucket=name).get("Contents", [])  # noqa: E731
                            if o["Key"].endswith("/metadata.json")}
    before = records(theirs)
    bucket_block.bucket_name = mine  # edited as in the UI
    bucket_block.save(bucket_doc.name, overwrite=True)
    try:
        run_id = _schedule(b["name"])
        _work("host-b", b["env"])
        assert _final_state(run_id).type.value == "COMPLETED"
    finally:
        bucket_block.bucket_name = theirs
        bucket_block.save(bucket_doc.name, overwrite=True)
    assert [k for k in records(mine) if k.startswith(f"{b['name']}/backups/full/_all/")]
    assert records(theirs) == before


def test_a_proactive_automation_fires_without_success_events_and_stays_quiet_with_them(deployed, receiver):
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    from deployments.automations import automation_specs, sync_automations
    from deployments.deploy import ensure_notification_block

    block = ensure_notification_block(receiver.url, None)
    specs = [s for s in automation_specs(block._block_document_id, False, backup_window=timedelta(seconds=10),
                                         prefix="test: ") if "no successful backup" in s.name]
    with get_client(sync_client=True) as client:
        sync_automations(client, specs)
    time.sleep(6)  # the server's triggers service loads a new automation within a few seconds
    quiet, silent = "rem.db.test-host.quiet", "rem.db.test-host.silent"
    emit_event(event="rem.backup.succeeded", resource={"prefect.resource.id": silent})
    fired = lambda resource: any(resource in n.get("subject", "") and "overdue" in n["subject"]  # noqa: E731
                                 for n in receiver.received)
    started = time.time()
    while time.time() - started < 40 and not fired(silent):
        emit_event(event="rem.backup.succeeded", resource={"prefect.resource.id": quiet})
        time.sleep(3)
    assert fired(silent), receiver.received  # a 10 s window, evaluated every 5 s
    for _ in range(5):  # and the database that kept succeeding is never paged
        emit_event(event="rem.backup.succeeded", resource={"prefect.resource.id": quiet})
        time.sleep(3)
    assert not fired(quiet), receiver.received


def test_pitr_enable_writes_the_config_and_activates_the_archival_schedule(deployed, tmp_path):
    from prefect.client.orchestration import get_client

    config = tmp_path / "rem.toml"
    config.write_text('[backup]\ncompression = 5\n')
    result = json.loads(rem("--config", str(config), "pitr", "enable", "--bucket", "wal-bucket", "--interval", "120",
                            "--json", env=deployed["env"], check=True).stdout)
    assert "every 120 s, active" in result["deployment"]
    import tomllib

    assert tomllib.loads(config.read_text()) == {"backup": {"compression": 5},
                                                 "pitr": {"enabled": True, "bucket": "wal-bucket",
                                                          "interval_seconds": 120}}
    name = deployed["a"]["name"]
    with get_client(sync_client=True) as client:
        wal = client.read_deployment_by_name(f"wal-archive/{name}")
        assert wal.schedules[0].active and wal.schedules[0].schedule.interval.total_seconds() == 120
        other = client.read_deployment_by_name(f"wal-archive/{deployed['b']['name']}")
        assert not other.schedules[0].active  # the other database's archival is its own business
        from deployments.deploy import set_wal_archive_schedule

        set_wal_archive_schedule(client, name, 300, False)  # leave the shared server without runs nobody picks up
        archive_automations = [a for a in client.read_automations()
                               if a.name in ("rem: no WAL archived", "rem: log follower stopped")]
        assert len(archive_automations) == 2  # pitr enable made them, as `rem deploy` does with PITR on
        for automation in archive_automations:
            client.delete_automation(automation.id)


def test_a_worker_runs_the_log_follower_until_cancelled_sending_heartbeats(deployed, s3_endpoint, bucket, s3, tmp_path):
    """The long-running way to follow: the wal-archive-follow deployment on a process worker."""
    import urllib.request

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from blocks import RemDatabase
    from tests.engine import LiveEngine

    db = tmp_path / "followed"
    engine = LiveEngine(db)
    RemDatabase(path=str(db)).save("rem-followed", overwrite=True)
    env = {**os.environ, **deployed["env"], "P8_S3_BUCKET": bucket, "P8_S3_ENDPOINT_URL": s3_endpoint}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"wal-archive/{deployed['a']['name']}-follow")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={
            "database_block": "rem-followed", "interval_seconds": 0.5})
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "rem-test", "--work-queue",
                               "host-a", "--run-once"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        engine.call("insert", "acme", "resources", {"uri": "u:1", "content": "followed"})
        wanted, deadline, archived = engine.call("latest_sequence"), time.time() + 120, 0
        while time.time() < deadline and archived < wanted:
            key = f"{db_name_of(db)}/backups/wal/_all/manifest.json"
            if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
                manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                archived = manifest["last_archived_sequence"] or 0
            time.sleep(0.5)
        assert archived >= wanted  # the run follows the live engine's writes
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).state.is_running()
            beats = []
            for _ in range(60):  # the server stores events a moment after they are sent
                request = urllib.request.Request(
                    deployed["env"]["PREFECT_API_URL"] + "/events/filter", method="POST",
                    headers={"Content-Type": "application/json"},
                    data=json.dumps({"filter": {"event": {"name": ["rem.wal.follower.alive"]}}, "limit": 50}).encode())
                with urllib.request.urlopen(request, timeout=10) as response:
                    beats = [e for e in json.loads(response.read())["events"]
                             if e["resource"]["prefect.resource.name"] == db_name_of(db)]
                if beats:
                    break
                time.sleep(0.5)
            assert beats  # what the follower-stopped automation expects
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            for _ in range(90):
                state = client.read_flow_run(run.id).state
                if state.is_final():
                    break
                time.sleep(1)
        assert state.type.value == "CANCELLED", state
    finally:
        worker.terminate()
        worker.wait(60)
        engine.close()


def test_fleet_status_lists_every_database_past_the_servers_page_of_200_deployments(deployed):
    """A server answers one read with at most 200 deployments; 26 databases have more than that. Every
    database must still have its row (a missing one is a database nobody sees go stale)."""
    from prefect.client.orchestration import get_client

    names = [f"bulk-{n:03d}" for n in range(210)]
    try:
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("full-backup")
            for name in names:
                client.create_deployment(flow_id, name, tags=[f"db:{name}", "host:bulk-host"])
        fleet = rem("fleet", "status", "--json", env=deployed["env"])
        rows = {r["db"]: r for r in json.loads(fleet.stdout)["databases"]}
        assert set(names) <= set(rows), f"{len(set(names) - set(rows))} databases missing"
        assert all(rows[name]["host"] == "bulk-host" and rows[name]["status"] == "BREACH" for name in names)
    finally:
        with get_client(sync_client=True) as client:  # 200 a request: 11 s here, against 25 s one by one
            while client.request("POST", "/deployments/bulk_delete", json={
                    "deployments": {"tags": {"all_": ["host:bulk-host"]}}}).json()["deleted"]:
                pass


def test_fleet_rows_read_fleet_wide_equal_the_rows_read_database_by_database(deployed, monkeypatch):
    """Runs and events are read fleet-wide, newest first, and what those pages leave out database by
    database. Forced onto every path (pages of one through as many pages as it takes; then pages of
    one and no second, so nearly everything is read alone), every row matches the fleet-wide rows,
    and the deployed databases have runs and events by now."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client

    from flows import fleet

    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        wide = fleet.database_rows(client, now)
        monkeypatch.setattr(fleet, "FLEET_PAGE", 1)
        monkeypatch.setattr(fleet, "FLEET_PAGES", 10_000)
        paged = fleet.database_rows(client, now)
        monkeypatch.setattr(fleet, "FLEET_PAGES", 1)
        monkeypatch.setattr(fleet, "RECENT", 1)
        alone = fleet.database_rows(client, now)
    assert wide == paged == alone
    assert len(wide) >= 2
    assert any(row["last_backup_run"] for row in wide) and any(row["repository_bytes"] for row in wide)
