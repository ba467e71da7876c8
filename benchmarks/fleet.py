"""A fleet on one Prefect server: BENCH_FLEET_DATABASES (200) databases, each deployed with its own
`rem deploy` (on 4 work queues, as 4 hosts would), then `rem fleet status` (target: under 5 s) and
the `fleet-status` flow run it makes, timed by the server.

Usage: python -m benchmarks.fleet [DATABASES]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import ENV, REPO, rem, save_result, target  # noqa: E402
from tests.helpers import free_port, wait_http  # noqa: E402

QUEUES = 4


def fleet_status(env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "fleet", "status", "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    return time.perf_counter() - started, json.loads(proc.stdout)


def flow_run_seconds(env: dict) -> list[float]:
    """Durations of the fleet-status flow's runs, as the server recorded them."""
    out = subprocess.run([sys.executable, "-c", "from prefect.client.orchestration import get_client\n"
                          "from prefect.client.schemas.filters import FlowFilter, FlowFilterName\n"
                          "with get_client(sync_client=True) as c:\n"
                          " runs = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=['fleet-status'])))\n"
                          " print([r.total_run_time.total_seconds() for r in runs if r.state and r.state.is_completed()])"],
                         env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def settle(env: dict, most_seconds: float = 180) -> float:
    """Wait until the server's scheduler has made the new deployments' runs (the count of scheduled
    runs stops changing): the state an operator's fleet is in, not the minute after 200 deploys."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import time\n"
                    "from prefect.client.orchestration import get_client\n"
                    "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType\n"
                    "seen, same, start = -1, 0, time.monotonic()\n"
                    "with get_client(sync_client=True) as c:\n"
                    f" while same < 3 and time.monotonic() - start < {most_seconds}:\n"
                    "  n = c.count_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=['SCHEDULED']))))\n"
                    "  same, seen = (same + 1, n) if n == seen else (0, n)\n"
                    "  time.sleep(10)\n"], env=env, cwd=REPO, check=True)
    return time.perf_counter() - started


def main(databases: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="rem-bench-fleet-", dir=os.environ.get("BENCH_DIR")))
    home = work / "prefect-home"
    home.mkdir()
    port = free_port()
    # the automations need a webhook; nothing fires during the benchmark, and it is loopback anyway
    env = {**ENV, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "P8_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/rem-bench",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", 90)
        template = work / "template"
        rem("--db-path", str(template), "db", "init", env=env)
        deploys = []
        for n in range(databases):
            db = work / "dbs" / f"db-{n:03d}"
            shutil.copytree(template, db)
            seconds, _ = rem("--db-path", str(db), "deploy", "--work-queue", f"host-{n % QUEUES}",
                             env={**env, "P8_DB_NAME": db.name, "P8_BACKUP_DIR": str(work / "backups")})
            deploys.append(seconds)
            if n % 20 == 0:
                print(f"deployed {n + 1}: {seconds:.1f} s", flush=True)
        runs = [fleet_status(env) for _ in range(3)]
        listed = {row["db"] for row in runs[-1][1]["databases"]}
        assert listed == {f"db-{n:03d}" for n in range(databases)}, f"fleet status listed {len(listed)} of {databases}"
        settled_after = settle(env)
        settled = [fleet_status(env) for _ in range(3)]
        flow_runs = flow_run_seconds(env)
        result = {"databases": databases, "queues": QUEUES, "deploy_s": deploys,
                  "deploy_median_s": statistics.median(deploys), "deploy_max_s": max(deploys),
                  "deploy_first_s": deploys[0], "deploy_last_s": deploys[-1],
                  "fleet_status_s": min(s for s, _ in runs), "fleet_status_runs_s": [s for s, _ in runs],
                  "settled_after_s": settled_after, "fleet_status_settled_s": min(s for s, _ in settled),
                  "fleet_status_settled_runs_s": [s for s, _ in settled],
                  "fleet_flow_s": min(flow_runs)}
        print(f"{databases} databases on {QUEUES} queues: rem deploy median {result['deploy_median_s']:.1f} s "
              f"(first {deploys[0]:.1f} s, last {deploys[-1]:.1f} s, max {max(deploys):.1f} s); "
              f"`rem fleet status` {result['fleet_status_s']:.2f} s right after, {result['fleet_status_settled_s']:.2f} s "
              f"settled (target < 5 s); fleet-status flow run "
              f"{result['fleet_flow_s']:.2f} s", flush=True)
        save_result("fleet", result)
        return result
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def rows(r: dict) -> list[tuple[str, str, str]]:
    where = f"{r['databases']} databases deployed on one Prefect server ({r['queues']} queues)"
    return [(f"`rem deploy`, each of {where}", f"median {r['deploy_median_s']:.1f} s (first {r['deploy_first_s']:.1f} s, "
             f"last {r['deploy_last_s']:.1f} s, max {r['deploy_max_s']:.1f} s)", "measured (#25)"),
            (f"`rem fleet status`, {where}", f"{r['fleet_status_s']:.2f} s right after the last deploy, "
             f"{r['fleet_status_settled_s']:.2f} s once the scheduler had made their runs (the fleet-status "
             f"flow run: {r['fleet_flow_s']:.2f} s)",
             target("< 5 s", max(r["fleet_status_s"], r["fleet_status_settled_s"]) < 5))]


if __name__ == "__main__":
    for row in rows(main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_FLEET_DATABASES", "200")))):
        print(" | ".join(row))
