"""A real Airflow API server on loopback, with this package's plugin and the simple auth
manager's users (an admin and a read-only viewer), for the dashboard's tests."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

AIRFLOW = Path(sys.executable).with_name("airflow")
PASSWORDS = {"admin": "admin-secret", "viewer": "viewer-secret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    S3_CONN_ID = "dashboard_s3"  # an Airflow AWS connection (from the environment) to a moto S3 server

    def __init__(self, home: Path, port: int, s3_endpoint: str) -> None:
        self.home, self.port, self.s3_endpoint = home, port, s3_endpoint
        self.url = f"http://127.0.0.1:{port}"
        self.registry = home / "tuning-runs"

    def token(self, user: str) -> str:
        r = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": PASSWORDS[user]}, timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]

    def client(self, user: str | None) -> httpx.Client:
        """A client as ``user`` would be in the UI: the session cookie (None: logged out)."""
        cookies = {"_token": self.token(user)} if user else {}
        return httpx.Client(base_url=self.url, cookies=cookies, timeout=30, follow_redirects=False)


    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def api_server(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    s3_host, s3_port = moto.get_host_and_port()
    home = tmp_path_factory.mktemp("airflow-api")
    (home / "passwords.json").write_text(json.dumps(PASSWORDS))
    port = _free_port()
    server = ApiServer(home, port, f"http://{s3_host}:{s3_port}")
    s3_connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                     "extra": {"endpoint_url": server.s3_endpoint, "region_name": "us-east-1"}}
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "dashboard-tests-secret-key-of-some-length",
        "AIRFLOW__API__BASE_URL": server.url,
        "AIRFLOW__CIRRUS__DASHBOARD_REGISTRY": str(server.registry),
        f"AIRFLOW_CONN_{ApiServer.S3_CONN_ID.upper()}": json.dumps(s3_connection),
    }
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    log = (home / "api-server.log").open("w")
    proc = subprocess.Popen([str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API server exited: {(home / 'api-server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start: {(home / 'api-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        moto.stop()


class LiveSearch:
    """A search running in a thread of the test process, registered with the server's
    dashboard as a task instance of DAG ``tuning_dag``."""

    def __init__(self, search, entry, thread) -> None:
        self.search, self.entry, self.thread = search, entry, thread
        self.results = None

    @property
    def key(self) -> str:
        return self.entry.key

    def wait(self, timeout: float = 120) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the search did not end"
        return self.results


@pytest.fixture
def live_search(api_server, ratings_shards, tmp_path, inline_executor):
    """Starts searches that train until they are killed (or for at most two minutes)."""
    import threading

    from cirrus_airflow.dashboard import registry
    from cirrus_airflow.storage import Storage
    from cirrus_airflow.tuning.search import Search, TuneConfig

    inline = type(inline_executor)  # runs the real handler in this process
    shards = ratings_shards(users=100, items=200, rows=6000, seed=5)
    started = []

    def start(learning_rates=(0.05, 0.1, 0.02), *, run_id="manual__1", epochs=100_000, time_budget_s=120.0):
        out = tmp_path / f"tune-{run_id}"
        base = {"workers": 1, "factors": 4, "epochs": epochs, "time_budget_s": time_budget_s,
                "eval_interval_s": 0.2, "eval_rows": 1000, "poll_interval_s": 0.1}
        config = TuneConfig(data=str(shards), output=str(out), model="mf", base=base, early_stopping="none",
                            configs=[{"learning_rate": lr} for lr in learning_rates], concurrency=len(learning_rates))
        search = Search(config, storage=Storage(), executors=lambda params: inline(max_concurrency=2))
        entry = registry.RunEntry(dag_id="tuning_dag", run_id=run_id, task_id="tune", map_index=-1, output=str(out),
                                  aws_conn_id=None)
        registry.register(Storage(), str(api_server.registry), entry)
        live = LiveSearch(search, entry, None)

        def run():
            live.results = search.run()

        live.thread = threading.Thread(target=run, daemon=True)
        live.thread.start()
        started.append(live)
        return live

    yield start
    for live in started:
        live.search.cancel()
        live.thread.join(60)
