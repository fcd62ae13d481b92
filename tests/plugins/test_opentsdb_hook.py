"""The OpenTSDB hook: Connection fields -> client options, and the stack's own Connection."""

from __future__ import annotations

import pytest

from plugins.opentsdb_hook import OpenTSDBHook, client_kwargs


def _kwargs(**fields):
    base = {"conn_id": "c", "host": "tsd.example", "port": 4242, "schema": None, "login": None,
            "password": None, "extra": {}}
    return client_kwargs(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, {"url": "http://tsd.example:4242"}, id="plain-http"),
        pytest.param({"schema": "https", "port": None, "extra": {"verify": "/etc/ca.pem"}},
                     {"url": "https://tsd.example", "verify": "/etc/ca.pem"}, id="tls-with-ca-bundle"),
        pytest.param({"login": "loader", "password": "pw"},
                     {"url": "http://tsd.example:4242", "auth": ("loader", "pw")}, id="basic-auth"),
        pytest.param({"host": "https://proxy.example/tsdb/", "extra": {"batch_size": 200, "verify": False}},
                     {"url": "https://proxy.example/tsdb", "batch_size": 200, "verify": False}, id="host-is-url"),
    ],
)
def test_connection_fields_become_client_options(fields, expected):
    assert _kwargs(**fields) == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"host": None}, "connection 'c' has no host", id="no-host"),
        pytest.param({"schema": "ftp"}, "schema 'ftp' is neither http nor https", id="bad-schema"),
        pytest.param({"extra": {"batchsize": 5}}, "unknown extra 'batchsize'", id="unknown-extra"),
        pytest.param({"extra": {"batch_size": "5"}}, "extra batch_size='5' is not a int", id="extra-wrong-type"),
    ],
)
def test_bad_connection_names_the_bad_field(fields, message):
    with pytest.raises(ValueError, match=message):
        _kwargs(**fields)


def test_hook_builds_a_working_client_from_opentsdb_default(opentsdb):
    # conftest exports the local stack's AIRFLOW_CONN_OPENTSDB_DEFAULT.
    with OpenTSDBHook(batch_size=50).get_conn() as client:
        assert client.batch_size == 50
        assert client.version()["short_revision"] == "eb125a342"
