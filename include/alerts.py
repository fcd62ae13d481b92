"""Alerting hooks shared by the DAGs (Airflow failure callbacks call these).

The callback receives Airflow's context mapping; nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import logging

log = logging.getLogger("sluice.alerts")


def log_failure(context: Mapping[str, Any]) -> None:
    """Log one ERROR line an operator (or a log-based alert rule) can match on."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    log.error(
        "SLUICE ALERT dag=%s task=%s run=%s: %s",
        dag_id,
        task_id,
        context.get("run_id"),
        context.get("exception"),
    )
