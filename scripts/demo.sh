#!/usr/bin/env bash
# Run the example DAG end to end with `airflow dags test` under a throw-away
# AIRFLOW_HOME, on the embedded backends, then print the trained model's figures.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/cirrus-demo-XXXXXX")
trap 'rm -rf "$work/airflow"' EXIT
export AIRFLOW_HOME="$work/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CIRRUS__EXECUTOR=local
export CIRRUS_DEMO_ROOT="${CIRRUS_DEMO_ROOT:-$work/data}"

echo "==> airflow db migrate (AIRFLOW_HOME=$AIRFLOW_HOME)"
airflow db migrate > "$work/migrate.log" 2>&1 || { cat "$work/migrate.log"; exit 1; }

echo "==> airflow dags test cirrus_criteo_pipeline (data under $CIRRUS_DEMO_ROOT)"
airflow dags test cirrus_criteo_pipeline > "$work/dags-test.log" 2>&1 || {
    tail -n 80 "$work/dags-test.log"
    echo "the DAG run failed; the full log is $work/dags-test.log" >&2
    exit 1
}
grep -E "preprocess|train|generate_clicks" "$work/dags-test.log" | grep -E "rows|t=|finished|wrote" | sed 's/^/    /' | tail -n 30 || true

run=$(ls -td "$CIRRUS_DEMO_ROOT"/runs/*/ | head -n 1)
echo
echo "==> result of $run"
cirrus-airflow report "$run"

search=$(ls -td "$CIRRUS_DEMO_ROOT"/tunes/*/ | head -n 1)
echo
echo "==> search of $search (* the best)"
cirrus-airflow report "$search"
