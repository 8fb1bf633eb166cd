"""cirrus-airflow: the Cirrus serverless ML workflow as Apache Airflow 3 operators.

This package must stay importable without Airflow: ``lambda_pkg`` and ``ps_service``
import its pure modules (shard format, hashing, model maths) inside a Lambda bundle.
"""

__version__ = "0.1.0"
