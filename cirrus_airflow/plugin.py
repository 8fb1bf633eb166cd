"""The Airflow plugin: registers the operators' extra links with the API server."""

from airflow.plugins_manager import AirflowPlugin

from cirrus_airflow.links import CirrusOutputLink


class CirrusPlugin(AirflowPlugin):
    name = "cirrus"
    operator_extra_links = [CirrusOutputLink()]
