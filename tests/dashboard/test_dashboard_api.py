"""The dashboard's routes in a real Airflow API server: the UI's authentication and
authorisation around every one, a live search's state, and the kill requests."""

import json
import sqlite3
import time

import httpx
import pytest


def _wait(check, timeout=60.0, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)


def _state(client, key):
    r = client.get(f"/cirrus/api/runs/{key}")
    r.raise_for_status()
    return r.json()


def test_nothing_is_served_without_the_ui_s_login(api_server, live_search):
    live = live_search(learning_rates=(0.05,))
    with api_server.client(None) as anonymous:
        assert anonymous.get("/cirrus/api/runs").status_code == 401
        assert anonymous.get(f"/cirrus/api/runs/{live.key}").status_code == 401
        assert anonymous.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": None}).status_code == 401
        page = anonymous.get(f"/cirrus/runs/{live.key}")
        assert page.status_code == 303 and page.headers["location"].startswith("/auth/login?next=")
    forged = httpx.Client(base_url=api_server.url, cookies={"_token": "not-a-token"}, timeout=30)
    with forged:
        assert forged.get("/cirrus/api/runs").status_code in (401, 403)


def test_a_logged_in_user_sees_the_search_live(api_server, live_search):
    live = live_search()
    with api_server.client("viewer") as viewer:
        runs = viewer.get("/cirrus/api/runs").json()
        assert live.key in [r["key"] for r in runs]
        state = _wait(lambda: (s := _state(viewer, live.key))["state"] == "running"
                      and all(len(c["curve"]) >= 2 for c in s["configs"]) and s)
        assert state["run"]["dag_id"] == "tuning_dag" and len(state["configs"]) == 3
        assert {c["status"] for c in state["configs"]} == {"running"}
        assert all(p["cost_usd"] > 0 and p["test_loss"] > 0 for c in state["configs"] for p in c["curve"])
        page = viewer.get(f"/cirrus/runs/{live.key}")
        assert page.status_code == 200 and "CirrusPage.render" in page.text
        assert viewer.get("/cirrus/api/runs/0123456789abcdef0123").status_code == 404


def test_a_viewer_may_look_but_not_kill(api_server, live_search):
    live = live_search(learning_rates=(0.05,))
    with api_server.client("viewer") as viewer:
        _wait(lambda: _state(viewer, live.key)["configs"])
        assert _state(viewer, live.key)["can_kill"] is False  # the page shows no kill buttons
        refused = viewer.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": None})
        assert refused.status_code == 403 and "may see but not change" in refused.json()["detail"]
        assert live.thread.is_alive()


def test_kill_one_configuration_then_all(api_server, live_search):
    live = live_search()
    with api_server.client("admin") as admin:
        state = _wait(lambda: (s := _state(admin, live.key))["configs"] and s)
        assert state["can_kill"] is True and state["task_state"] is None  # (no such task instance in Airflow)
        victim = state["configs"][0]["id"]
        assert admin.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": "nope"}).status_code == 404
        assert admin.post(f"/cirrus/api/runs/{live.key}/kill", data={"config": victim}).status_code == 422  # JSON only
        asked = admin.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": victim})
        assert asked.status_code == 202 and asked.json()["requested"] == victim
        statuses = _wait(lambda: (s := {c["id"]: c["status"] for c in _state(admin, live.key)["configs"]})
                         [victim] == "killed" and s)
        assert [status for cid, status in statuses.items() if cid != victim] == ["running", "running"]
        assert admin.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": None}).status_code == 202
        # In Airflow's audit log (read from its database: the API lists entries of DAGs it knows).
        with sqlite3.connect(api_server.home / "airflow.db") as db:
            audit = db.execute("SELECT owner, extra FROM log WHERE event = 'cirrus.tune.kill' AND run_id = ?",
                               (live.entry.run_id,)).fetchall()
        assert sorted(json.loads(extra)["config"] for _, extra in audit) == sorted([victim, "all"])
        assert {owner for owner, _ in audit} == {"admin"}
        results = live.wait()
        assert {c["status"] for c in results["configs"]} == {"killed"}
        assert _state(admin, live.key)["state"] == "done"
        ended = admin.post(f"/cirrus/api/runs/{live.key}/kill", json={"config": None})
        assert ended.status_code == 409


def test_the_plugin_adds_the_dashboard_to_the_ui(api_server):
    with api_server.client("viewer") as viewer:
        r = viewer.get("/api/v2/plugins", headers={"Authorization": f"Bearer {api_server.token('admin')}"})
        (plugin,) = [p for p in r.json()["plugins"] if p["name"] == "cirrus"]
        assert plugin["fastapi_apps"][0]["url_prefix"] == "/cirrus"
        (view,) = plugin["external_views"]
        assert view["href"] == "cirrus/" and view["destination"] == "nav"
        assert viewer.get("/cirrus/").status_code == 200


@pytest.mark.parametrize("key", ["..%2F..%2Fetc%2Fpasswd", "..", "registry.json", "%2Fetc%2Fpasswd"])
def test_run_keys_cannot_reach_other_files(api_server, key):
    with api_server.client("admin") as admin:
        assert admin.get(f"/cirrus/api/runs/{key}").status_code == 404


def test_a_search_on_s3_is_read_through_its_airflow_connection(api_server):
    from cirrus_airflow.dashboard import registry
    from cirrus_airflow.storage import Storage

    s3 = api_server.s3_client()
    s3.create_bucket(Bucket="searches")
    state = {"state": "running", "model": "lr", "metric": "test_logloss", "early_stopping": "asha", "best": None,
             "worker_seconds_total": 3.0, "cost_total_usd": 0.001,
             "configs": [{"id": "000-abc", "params": {"learning_rate": 0.1}, "status": "running", "metric": None,
                          "curve": [{"t": 1.0, "test_loss": 0.6, "cost_usd": 0.0005}]}]}
    s3.put_object(Bucket="searches", Key="tunes/1/live.json", Body=json.dumps(state).encode())
    entry = registry.RunEntry(dag_id="tuning_dag", run_id="s3_run", task_id="tune", map_index=-1,
                              output="s3://searches/tunes/1", aws_conn_id=api_server.S3_CONN_ID)
    registry.register(Storage(), str(api_server.registry), entry)
    with api_server.client("admin") as admin:
        shown = _state(admin, entry.key)
        assert shown["configs"] == state["configs"] and shown["run"]["output"] == "s3://searches/tunes/1"
        assert admin.post(f"/cirrus/api/runs/{entry.key}/kill", json={"config": "000-abc"}).status_code == 202
    assert s3.get_object(Bucket="searches", Key="tunes/1/_kill/000-abc")["ContentLength"] == 0


def _register(api_server, output, run_id):
    from cirrus_airflow.dashboard import registry
    from cirrus_airflow.storage import Storage

    entry = registry.RunEntry(dag_id="tuning_dag", run_id=run_id, task_id="tune", map_index=-1, output=str(output),
                              aws_conn_id=None)
    registry.register(Storage(), str(api_server.registry), entry)
    return entry


def test_a_search_not_yet_started_or_unreadable_is_shown_as_such(api_server, tmp_path):
    starting = _register(api_server, tmp_path / "not-yet", "starting_run")
    broken_out = tmp_path / "broken"
    broken_out.mkdir()
    (broken_out / "live.json").write_text("{not json")
    broken = _register(api_server, broken_out, "broken_run")
    odd_out = tmp_path / "odd"
    odd_out.mkdir()
    (odd_out / "live.json").write_text(json.dumps({"configs": "none", "metric": float("nan")}))
    odd = _register(api_server, odd_out, "odd_run")
    (api_server.registry / ("0" * 20 + ".json")).write_text(json.dumps({"dag_id": "x"}))  # not an entry
    with api_server.client("admin") as admin:
        runs = {r["key"]: r for r in admin.get("/cirrus/api/runs").json()}
        assert runs[starting.key]["state"] == "starting" and runs[broken.key]["state"] == "unreadable"
        assert runs[odd.key]["state"] == "unreadable"  # JSON, but not a search's state
        assert "cannot read" in _state(admin, broken.key)["error"]
        # A kill before the search starts waits for it.
        assert admin.post(f"/cirrus/api/runs/{starting.key}/kill", json={"config": None}).status_code == 202
        assert (tmp_path / "not-yet" / "_kill" / "all").exists()
        assert admin.post(f"/cirrus/api/runs/{broken.key}/kill", json={"config": None}).status_code == 409
