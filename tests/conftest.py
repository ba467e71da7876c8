"""Session-scoped real parts: moto's S3 server and a Prefect server on 127.0.0.1, sample databases."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_http

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Fake credentials: nothing here may ever reach a real AWS account.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
os.environ.pop("AWS_PROFILE", None)
# Runs of the command line stay in-process (no Prefect API) unless a test points them at a server.
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto in server mode on 127.0.0.1, reached by boto3 over HTTP."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/", 30, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3) -> str:
    name = f"rem-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real `prefect server` on 127.0.0.1 with its own PREFECT_HOME, started once per session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(url + "/health", 90, proc)
        yield {"url": url, "home": str(home)}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def _sample_cache(tmp_path_factory):
    from tests.engine.sample import engine_sample

    cache: dict[tuple, Path] = {}

    def get(entities: int, tenants: int, seed: int, dim: int, replication: str) -> Path:
        key = (entities, tenants, seed, dim, replication)
        if key not in cache:
            path = tmp_path_factory.mktemp("samples") / f"sample-{entities}-{tenants}-{seed}-{dim}-{replication}"
            engine_sample(path, entities, tenants, seed, dim, replication)
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture
def make_sample(_sample_cache, tmp_path):
    """Factory: a fresh copy of a sample database (built once per session for each set of arguments)."""
    counter = iter(range(1000))

    def make(entities: int = 500, tenants: int = 3, seed: int = 7, dim: int = 16,
             replication: str = "standalone") -> Path:
        target = tmp_path / f"db-{next(counter)}"
        shutil.copytree(_sample_cache(entities, tenants, seed, dim, replication), target)
        return target

    return make


def pytest_collection_modifyitems(config, items):
    """Under `make test` (tests/parallel.py), only this process's shard of the suite runs."""
    shard = os.environ.get("REM_TEST_SHARD")
    if not shard:
        return
    from tests.parallel import shard_of

    mine, others = [], []
    for item in items:
        (mine if shard_of(item.fixturenames, item.path.name) == shard else others).append(item)
    if others:
        config.hook.pytest_deselected(items=others)
        items[:] = mine
