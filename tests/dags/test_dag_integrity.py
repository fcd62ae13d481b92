"""Every DAG file imports cleanly, offline, and follows the house rules."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag_bag(monkeypatch_module):
    from airflow.dag_processing.dagbag import DagBag

    def no_network(*args, **kwargs):
        raise RuntimeError("network access at DAG parse time")

    monkeypatch_module.setattr(socket.socket, "connect", no_network)
    monkeypatch_module.setattr(socket, "create_connection", no_network)
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_no_import_errors_and_no_network_at_parse_time(dag_bag):
    assert dag_bag.import_errors == {}


def test_every_dag_file_defines_a_dag(dag_bag):
    files_with_dags = {Path(dag.fileloc).name for dag in dag_bag.dags.values()}
    dag_files = {p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    assert dag_files == files_with_dags


def test_dags_are_documented_and_tagged(dag_bag):
    for dag_id, dag in dag_bag.dags.items():
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert "sluice" in dag.tags, f"{dag_id} is not tagged 'sluice'"
