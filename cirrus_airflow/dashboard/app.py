"""The live tuning dashboard: a FastAPI app that Airflow's API server mounts at ``/cirrus``.

Every route asks Airflow's auth manager, as the UI around it does: the caller is the user
of the UI's session cookie (or a bearer token), a search is shown only to users who may
read its DAG's task instances, and only users who may edit them can kill. The kill is a
JSON POST: the session cookie is SameSite=Lax, and a cross-site form cannot send JSON,
so another site cannot make a logged-in browser kill a search.

    GET  /cirrus/                       the searches this user may see (the UI's "Tuning" view)
    GET  /cirrus/runs/{key}             one search: plots and table, redrawn every second
    GET  /cirrus/api/runs               the same list, as JSON
    GET  /cirrus/api/runs/{key}         one search's live state (its live.json), as JSON
    POST /cirrus/api/runs/{key}/kill    {"config": ID} stops one configuration; {"config": null} all

The search's own file says ``running`` until it ends; the task instance's state, from
Airflow's database, tells a search whose task died (killed, out of memory, timed out)
from one that runs: it is shown as ``interrupted``, with no kill buttons.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from cirrus_airflow.dashboard import registry
from cirrus_airflow.dashboard.report import asset, page
from cirrus_airflow.storage import Storage, join
from cirrus_airflow.tuning.layout import LIVE, RUNNING, finite, request_kill

LISTED_RUNS = 50  # the index shows the newest searches only


def _auth():
    """Airflow's auth pieces, imported when a request needs them: this module is also
    imported where no API server runs (the plugin's extra links in workers)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api import security

    return get_auth_manager, DagAccessEntity, DagDetails, security


async def _user(request: Request) -> Any:
    """The caller as Airflow's API sees it; 401 without a session or token."""
    security = _auth()[3]
    bearer = await security.bearer_scheme(request)
    return await security.get_user(request, _oauth_token=None, bearer_credentials=bearer)


async def _page_user(request: Request) -> Any:
    """The caller, or None (a page then sends the browser to Airflow's login and back)."""
    try:
        return await _user(request)
    except HTTPException as exc:
        if exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            return None
        raise


User = Annotated[Any, Depends(_user)]
PageUser = Annotated[Any, Depends(_page_user)]


def _may(user: Any, dag_id: str, method: str) -> bool:
    """What Airflow's own task-instance routes ask: may ``user`` read (GET) or change (PUT)
    the task instances of ``dag_id``."""
    from airflow.models.dag import DagModel

    get_auth_manager, DagAccessEntity, DagDetails, _ = _auth()
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return get_auth_manager().is_authorized_dag(method=method, access_entity=DagAccessEntity.TASK_INSTANCE,
                                                details=details, user=user)


# Task states in which the search goes on (a retry resumes it).
_ALIVE = {"running", "deferred", "queued", "scheduled", "restarting", "up_for_reschedule", "up_for_retry"}


def _task_state(entry: registry.RunEntry) -> str | None:
    """The state of the task instance that runs the search; None if Airflow has no such one."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    with create_session() as session:
        state = session.scalar(select(TI.state).where(TI.dag_id == entry.dag_id, TI.run_id == entry.run_id,
                                                      TI.task_id == entry.task_id, TI.map_index == entry.map_index))
    return None if state is None else str(getattr(state, "value", state))


@functools.lru_cache(maxsize=32)
def _storage(aws_conn_id: str | None) -> Storage:
    """One storage (one S3 client) per connection, built through the Amazon provider's hooks."""
    from cirrus_airflow.hooks import CirrusHook

    return CirrusHook(aws_conn_id=aws_conn_id).get_storage()


def _registry_storage() -> Storage:
    """Where the registry is read from: ``[cirrus] dashboard_aws_conn_id`` if it is on S3."""
    return _storage(registry.registry_conn_id())


def _entry(key: str, user: Any, method: str = "GET") -> registry.RunEntry:
    entry = registry.find(_registry_storage(), registry.registry_uri(), key)
    # One answer for "no such search" and "not yours to see": the key does not leak the DAG.
    if entry is None or not _may(user, entry.dag_id, "GET"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tuning run {key!r} that you may see")
    if method != "GET" and not _may(user, entry.dag_id, method):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"you may see but not change the task instances of DAG {entry.dag_id!r}")
    return entry


def _live(entry: registry.RunEntry) -> dict:
    """The search's live.json, with where it comes from and its task instance's state. A
    search that has not published yet is ``starting``; one whose file cannot be read is
    ``unreadable``, with the reason (the page shows it, the list goes on)."""
    empty = {"configs": [], "best": None, "metric": "", "early_stopping": "", "worker_seconds_total": 0.0,
             "cost_total_usd": 0.0}
    uri = join(entry.output, LIVE)
    try:
        storage = _storage(entry.aws_conn_id)
        if not storage.exists(uri):
            state = {**empty, "state": "starting"}
        else:
            state = finite(json.loads(storage.read_text(uri)))
            if not isinstance(state, dict) or not isinstance(state.get("configs"), list) or "state" not in state:
                raise ValueError("it is not a search's state (no 'state' or 'configs')")
            state = {**empty, **state}
    except Exception as exc:  # noqa: BLE001 - storage, connection or JSON: the page says which
        state = {**empty, "state": "unreadable", "error": f"cannot read {uri}: {exc}"}
    task_state = _task_state(entry)
    if state["state"] in (RUNNING, "starting") and task_state is not None and task_state not in _ALIVE:
        state["state"] = "interrupted"
    return {**state, "run": _describe(entry), "task_state": task_state}


def _describe(entry: registry.RunEntry) -> dict:
    """Which task instance ran the search, and where its files are."""
    return {"key": entry.key, "dag_id": entry.dag_id, "run_id": entry.run_id, "task_id": entry.task_id,
            "map_index": entry.map_index, "output": entry.output, "registered_at": entry.registered_at,
            "task_url": _task_url(entry)}


def _task_url(entry: registry.RunEntry) -> str:
    """The task instance's page in the Airflow UI."""
    from airflow.sdk import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    path = f"/dags/{quote(entry.dag_id)}/runs/{quote(entry.run_id)}/tasks/{quote(entry.task_id)}"
    return base + path + (f"/mapped/{entry.map_index}" if entry.map_index >= 0 else "")


def _audit(entry: registry.RunEntry, user: Any, config: str | None) -> None:
    """Record a kill in Airflow's audit log (Browse > Audit Log), as the UI's own actions are
    (the same owner fields as Airflow's action logging)."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    with create_session() as session:
        session.add(Log(event="cirrus.tune.kill", owner=user.get_name(), owner_display_name=user.get_name(),
                        extra=json.dumps({"config": config or "all", "output": entry.output}),
                        dag_id=entry.dag_id, run_id=entry.run_id, task_id=entry.task_id, map_index=entry.map_index))


def _login(request: Request) -> RedirectResponse:
    """Airflow's login page, which comes back here once the user has logged in."""
    get_auth_manager = _auth()[0]
    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)),
                            status_code=status.HTTP_303_SEE_OTHER)


class KillRequest(BaseModel):
    config: str | None = None  # None: every configuration, and the search ends


def create_app() -> FastAPI:
    """The dashboard's app; the plugin mounts it at ``URL_PREFIX``."""
    app = FastAPI(title="Cirrus tuning dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: PageUser) -> Response:
        if user is None:
            return _login(request)
        return HTMLResponse(page("Tuning runs", asset("index.js"), subtitle="Searches by CirrusTuneOperator"))

    @app.get("/runs/{key}", response_class=HTMLResponse)
    def run_page(key: str, request: Request, user: PageUser) -> Response:
        if user is None:
            return _login(request)
        entry = _entry(key, user)
        subtitle = f"DAG {entry.dag_id} · run {entry.run_id} · task {entry.task_id} · {entry.output}"
        return HTMLResponse(page(f"Search {entry.task_id}", asset("run.js"), subtitle=subtitle,
                                 links=[("task instance in Airflow", _task_url(entry)), ("all searches", "../")],
                                 attributes={"data-key": entry.key}))

    @app.get("/api/runs")
    def list_runs(user: User) -> list[dict]:
        entries = registry.list_runs(_registry_storage(), registry.registry_uri())
        readable = {dag_id: _may(user, dag_id, "GET") for dag_id in {e.dag_id for e in entries}}
        shown = [e for e in entries if readable[e.dag_id]][:LISTED_RUNS]
        out = []
        for entry in shown:  # (_live turns a search's own problems into its "unreadable" state)
            state = _live(entry)
            statuses = dict(Counter(config["status"] for config in state["configs"]))
            best = state.get("best") or {}
            out.append({**state["run"], "state": state["state"], "statuses": statuses, "metric": state["metric"],
                        "best": best.get("metric"), "cost_total_usd": state["cost_total_usd"]})
        return out

    @app.get("/api/runs/{key}")
    def run_state(key: str, user: User) -> dict:
        entry = _entry(key, user)
        return {**_live(entry), "can_kill": _may(user, entry.dag_id, "PUT")}

    @app.post("/api/runs/{key}/kill", status_code=status.HTTP_202_ACCEPTED)
    def kill(key: str, body: KillRequest, user: User) -> dict:
        entry = _entry(key, user, method="PUT")
        state = _live(entry)
        if state["state"] not in (RUNNING, "starting"):  # (a request before the search starts waits for it)
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"the search is {state['state']}: only a running search can be killed")
        if body.config is not None and body.config not in {c["id"] for c in state["configs"]}:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the search has no configuration {body.config!r}")
        _audit(entry, user, body.config)  # first: a kill that cannot be recorded is not made
        uri = request_kill(_storage(entry.aws_conn_id), entry.output, body.config)
        return {"requested": body.config or "all", "uri": uri}

    return app
