"""The Airflow plugin: the operators' extra links, and the tuning dashboard in the API server
with its entry in the UI's navigation."""

from airflow.plugins_manager import AirflowPlugin

from cirrus_airflow.dashboard.app import create_app
from cirrus_airflow.dashboard.registry import URL_PREFIX
from cirrus_airflow.links import CirrusDashboardLink, CirrusOutputLink


class CirrusPlugin(AirflowPlugin):
    name = "cirrus"
    operator_extra_links = [CirrusOutputLink(), CirrusDashboardLink()]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Cirrus tuning dashboard"}]
    external_views = [{
        "name": "Tuning",
        "href": URL_PREFIX.lstrip("/") + "/",
        "url_route": "cirrus-tuning",
        "destination": "nav",
        "category": "browse",
    }]
