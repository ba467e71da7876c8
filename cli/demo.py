"""`make demo`: the main job on an embedded default, no cloud account needed.

Builds a 100,000-entity sample database under the data directory, backs it up locally, restores
the backup into a new directory and shows the stats of both, printing each command as on-call
would type it. Then the same backup as production makes it: a Prefect server on 127.0.0.1, the
database's deployments, a run of full-backup through a worker, its UI address and the artifact it
published; everything the demo started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def run(*args: str, env: dict | None = None) -> None:
    print(f"\n$ rem {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", *args], check=True,
                   env=env or {**os.environ, "P8_DB_NAME": DEMO_NAME})


DEMO_NAME = "demo"  # one name for the demo's database, on the command line and in Prefect
DEMO_PORT = 4200  # Prefect's own default, which the README's restart command uses


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the Prefect server exited ({server.returncode}); see its log")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the Prefect server did not answer at {url} within {seconds:.0f} s")


def scheduled_backup(db: Path, data: Path) -> None:
    """Prefect on this machine only: server, deployments, one full-backup run through a worker."""
    home = data / "prefect"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = DEMO_PORT if port_is_free(DEMO_PORT) else free_port()  # the port the restart command below serves
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base.update(PREFECT_HOME=str(home.resolve()), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home.resolve()}/prefect.db")
    # The automations' pages go to a loopback address nothing listens on: the demo pages no one.
    env = {**base, "PREFECT_API_URL": api, "P8_DB_PATH": str(db.resolve()), "P8_DB_NAME": DEMO_NAME,
           "P8_BACKUP_DIR": str((data / "backups").resolve()), "P8_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/demo-pages"}
    print(f"\n$ prefect server start --host 127.0.0.1 --port {port}", flush=True)
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=base, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_server(api, server)
        run("deploy", "--work-pool", "rem-demo", "--work-queue", "demo", env=env)
        os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=base["PREFECT_HOME"])
        from prefect.client.orchestration import get_client

        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
        from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("full-backup/demo")
            scheduled = []
            for _ in range(40):  # the server's scheduler fills in the next runs of the new deployment
                scheduled = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                        any_=["SCHEDULED"]))), sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
                if scheduled:
                    break
                time.sleep(0.5)
            if scheduled:
                print(f"\nfull-backup/demo is scheduled ({deployment.schedules[0].schedule.cron} UTC); next run "
                      f"{scheduled[0].expected_start_time:%Y-%m-%d %H:%M} UTC. Running one now:")
            run_id = client.create_flow_run_from_deployment(deployment.id).id
            print("\n$ prefect deployment run full-backup/demo", flush=True)
            print("$ prefect worker start --pool rem-demo --work-queue demo --run-once", flush=True)
            subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "rem-demo", "--work-queue",
                            "demo", "--run-once"], env=env, check=True, capture_output=True, timeout=300)
            state = client.read_flow_run(run_id).state
            print(f"\nFlow run {run_id}: {state.type.value}")
            print(f"In the Prefect UI: http://127.0.0.1:{port}/runs/flow-run/{run_id} (the demo stops its server at "
                  f"the end; `PREFECT_HOME={home} .venv/bin/prefect server start --port {port}` brings it back)")
            artifacts = [a for a in client.read_artifacts() if a.key == "backup-demo" and a.flow_run_id == run_id]
            if artifacts:
                print(f"\nIts artifact backup-demo ({artifacts[0].description}):\n\n{artifacts[0].data}")
            if state.type.value != "COMPLETED":
                sys.exit(f"the scheduled backup ended {state.type.value}: {state.message}")
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        print("\nStopped the Prefect server the demo started.")


def run_json(*args: str) -> dict:
    print(f"\n$ rem {shlex.join(args)}", flush=True)
    out = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], check=True, capture_output=True,
                         text=True, env={**os.environ, "P8_DB_NAME": DEMO_NAME}).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--no-prefect", action="store_true", help="Skip the Prefect part")
    args = parser.parse_args()
    started = time.monotonic()
    data = Path(args.data_dir)
    db = data / "rem-db"
    for own in (db, data / "restored-db", data / "backups"):  # the demo's own output from a previous run
        shutil.rmtree(own, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    run("--db-path", str(db), "db", "init", "--sample", str(args.entities), "--tenants", "3")
    source = Path(run_json("--db-path", str(db), "backup", "create", "--name", "demo")["location"])
    run("--db-path", str(db), "backup", "list")
    restored = data / "restored-db"
    run("backup", "restore", "--source", str(source), "--target", str(restored))
    run("--db-path", str(db), "db", "stats")
    run("--db-path", str(restored), "db", "stats")
    before = run_json("--db-path", str(db), "db", "stats")
    after = run_json("--db-path", str(restored), "db", "stats")
    keys = lambda stats: {cf: v["keys"] for cf, v in stats["column_families"].items()}  # noqa: E731
    same = (before["entities_total"], keys(before)) == (after["entities_total"], keys(after))
    print(f"\nOriginal {before['entities_total']:,} entities, restored {after['entities_total']:,}; keys per column "
          f"family {'identical' if same else 'DIFFERENT'}.")
    if not same:
        sys.exit(1)
    if not args.no_prefect:
        scheduled_backup(db, data)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s.")


if __name__ == "__main__":
    main()
