"""The tuning dashboard: a live page in the Airflow UI and a report that outlives the run."""
