"""Provider metadata that Airflow reads through the ``apache_airflow_provider`` entry point.

Kept free of imports so that Airflow's provider discovery stays cheap and never fails
because of an optional dependency.
"""

from cirrus_airflow import __version__


def get_provider_info() -> dict:
    return {
        "package-name": "cirrus-airflow",
        "name": "Cirrus serverless ML",
        "description": (
            "Preprocess, train and tune machine-learning models on serverless workers "
            "(AWS Lambda or an embedded local runtime) against a parameter server, "
            "after the Cirrus design (SoCC 2019)."
        ),
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "Cirrus",
                "python-modules": ["operators.preprocess", "operators.train", "operators.tune", "operators.generate"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Cirrus",
                "python-modules": ["operators.triggers"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Cirrus",
                "python-modules": ["cirrus_airflow.hooks"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "cirrus_parameter_server",
                "hook-class-name": "cirrus_airflow.hooks.ParameterServerHook",
            }
        ],
        "extra-links": ["cirrus_airflow.links.CirrusOutputLink", "cirrus_airflow.links.CirrusDashboardLink"],
        "plugins": [{"name": "cirrus", "plugin-class": "cirrus_airflow.plugin.CirrusPlugin"}],
    }
