"""Deployments and automations against a real `prefect server` on 127.0.0.1 (started once per session)."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import REPO, rem


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


@pytest.fixture(scope="module")
def deployed(api, receiver, tmp_path_factory):
    db = tmp_path_factory.mktemp("deploy") / "db"
    from rem.sample import create_sample

    create_sample(db, 500, 2, 3, 16)
    env = {**api, "P8_DB_PATH": str(db), "P8_ALERT_WEBHOOK_URL": receiver.url}
    first = json.loads(rem("deploy", "--work-pool", "rem-test", "--json", env=env, check=True).stdout)
    second = json.loads(rem("deploy", "--work-pool", "rem-test", "--json", env=env, check=True).stdout)
    return {"db": db, "env": env, "first": first, "second": second}


def test_deploy_twice_leaves_exactly_one_of_each_deployment_and_automation(deployed):
    from prefect.client.orchestration import get_client

    assert deployed["second"]["work_pool_status"] == "exists"
    assert set(deployed["second"]["automations"].values()) == {"updated"}
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        names = [d.name for d in deployments]
        assert sorted(names) == sorted(set(names)) == ["full-backup", "health-and-metrics", "prune",
                                                       "recovery-drill", "verify", "wal-archive",
                                                       "wal-archive-follow", "weekly-maintenance"]
        assert all(len(d.schedules) == 1 for d in deployments)
        backup = next(d for d in deployments if d.name == "full-backup")
        assert backup.schedules[0].schedule.cron == "0 2 * * *" and "backup" in backup.tags
        assert backup.parameters == {"upload": True, "database_block": "rem-db", "storage_block": "rem-backups"}
        drill = next(d for d in deployments if d.name == "recovery-drill")
        assert drill.schedules[0].schedule.cron == "0 3 1 */3 *"
        for name in ("wal-archive", "wal-archive-follow"):  # PITR is not enabled for this database: no runs
            assert not next(d for d in deployments if d.name == name).schedules[0].active
        for name in deployed["first"]["automations"]:
            found = client.read_automations_by_name(name)
            assert len(found) == 1
            trigger = found[0].trigger
            assert trigger.expect and trigger.match.root  # never a trigger that matches every event


def _save_blocks(db, bucket, endpoint, name):
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import BackupStorage, RemDatabase

    RemDatabase(path=str(db)).save("rem-db", overwrite=True)
    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))
    BackupStorage(bucket=S3Bucket(bucket_name=bucket, credentials=creds), chunk_size_mb=5).save(name, overwrite=True)


def _run_with_worker(env, parameters=None):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("full-backup/full-backup")
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {})
    subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "rem-test", "--run-once"],
                   cwd=REPO, env={**os.environ, **env}, capture_output=True, timeout=180)
    with get_client(sync_client=True) as client:
        for _ in range(60):
            state = client.read_flow_run(run.id).state
            if state.is_final():
                return run.id, state
            time.sleep(1)
    raise AssertionError("the flow run did not finish")


def test_a_worker_runs_the_backup_deployment_to_completed_with_its_artifact(deployed, s3_endpoint, bucket, s3):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _save_blocks(deployed["db"], bucket, s3_endpoint, "rem-backups")
    run_id, state = _run_with_worker(deployed["env"])
    assert state.type.value == "COMPLETED", state.message
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("/metadata.json") for k in keys)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert any(a.key == "backup" and "SHA-256" in a.data for a in artifacts)
    table = next(a for a in artifacts if a.key == "recent-backups")
    assert table.type == "table" and any(row["entities"] == 500 for row in json.loads(table.data))
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and float(progress[0].data) == 100.0  # the upload's progress artifact ran to the end


def test_a_failed_backup_pages_the_webhook_within_30_seconds(deployed, receiver, s3_endpoint):
    _save_blocks(deployed["db"], "rem-no-such-bucket", s3_endpoint, "rem-backups-broken")
    _, state = _run_with_worker(deployed["env"], {"storage_block": "rem-backups-broken"})
    assert state.type.value == "FAILED"
    note = receiver.wait_for(lambda n: "backup failed" in n.get("subject", "") and "full-backup" in n.get("subject", ""),
                             30)
    assert note is not None, receiver.received
    assert note["received_at"] - state.timestamp.timestamp() < 30  # from the run failing to the page arriving
    assert "rem-no-such-bucket" in note["body"]


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
    with get_client(sync_client=True) as client:
        wal = client.read_deployment_by_name("wal-archive/wal-archive")
        assert wal.schedules[0].active and wal.schedules[0].schedule.interval.total_seconds() == 120
        from deployments.deploy import set_wal_archive_schedule

        set_wal_archive_schedule(client, 300, False)  # leave the shared server without runs nobody will pick up


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
        deployment = client.read_deployment_by_name("wal-archive/wal-archive-follow")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={
            "database_block": "rem-followed", "interval_seconds": 0.5})
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "rem-test", "--run-once"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        engine.call("insert", "acme", "resources", {"uri": "u:1", "content": "followed"})
        wanted, deadline, archived = engine.call("latest_sequence"), time.time() + 120, 0
        while time.time() < deadline and archived < wanted:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="backups/wal/_all/manifest.json")
            if listed.get("KeyCount"):
                manifest = json.loads(s3.get_object(Bucket=bucket, Key="backups/wal/_all/manifest.json")["Body"].read())
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
                             if e["resource"]["prefect.resource.name"] == "followed"]
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
