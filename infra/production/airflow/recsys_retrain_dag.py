"""Airflow form of the nightly retrain: ``recsys retrain`` daily at 03:00 UTC.

Copy into the DAGs folder of an Airflow (2.4+ or 3) whose workers have the engine installed.
Settings: RECSYS_CONFIG names the YAML file, RECSYS_* env vars override it (``__`` nests). Not
imported by the tests (Airflow is not a dependency of the engine).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow import DAG

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2
    from airflow.operators.bash import BashOperator

with DAG(
    dag_id="recsys_retrain",
    description="Nightly TorchRec retrain from the Delta lake",
    schedule="0 3 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,  # a missed night is not worth several back-to-back retrains
    max_active_runs=1,  # two retrains never overlap
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(hours=6),
    },
    tags=["recsys"],
) as dag:
    BashOperator(
        task_id="retrain",
        bash_command="recsys retrain",
        env={"RECSYS_CONFIG": "/etc/recsys/recsys.yaml"},
        append_env=True,  # keep PATH and any RECSYS_* overrides of the worker
    )
