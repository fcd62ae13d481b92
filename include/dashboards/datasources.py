"""Grafana data sources of Sluice: one OpenTSDB, one Elasticsearch per index family.

grafana-foundation-sdk models how panels *refer* to a data source
(``DataSourceRef``: plugin type + uid) but has no model of a data source's
own settings, so :class:`GrafanaDatasource` carries those and renders the body
of Grafana's ``/api/datasources`` API. Panels get their references from
:data:`REFS` through :meth:`GrafanaDatasource.ref`, so a panel can only point
at a data source that this module provisions.

The uids are stable: dashboards refer to them, and provisioning finds the
existing data source by uid to update it in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.models.dashboard import DataSourceRef

from include.contract import ES_INDEX_PREFIX, ES_TIME_FIELD, LAG, RECONCILE, index_pattern
from include.schemas import HOST, SENSOR

OPENTSDB_UID = "sluice-opentsdb"
ES_UIDS = {HOST: "sluice-es-host", SENSOR: "sluice-es-sensor", LAG: "sluice-es-lag",
           RECONCILE: "sluice-es-reconcile"}
#: Grafana's OpenTSDB "Version" setting: 1 <=2.1, 2 ==2.2, 3 ==2.3, 4 ==2.4.
OPENTSDB_VERSION_2_4 = 4
#: Grafana's OpenTSDB "Resolution" setting: 1 second, 2 millisecond.
OPENTSDB_RESOLUTION_SECOND = 1


@dataclass(frozen=True)
class GrafanaDatasource:
    """A data source as Grafana's HTTP API takes it (``POST /api/datasources``).

    ``secure_json_data`` (passwords) is write-only in Grafana: it is sent but
    never read back, so comparisons use :meth:`managed` which leaves it out.
    """

    uid: str
    name: str
    type: str
    url: str
    access: str = "proxy"
    json_data: dict[str, Any] = field(default_factory=dict)
    basic_auth_user: str = ""
    secure_json_data: dict[str, str] = field(default_factory=dict, repr=False)
    is_default: bool = False

    @property
    def ref(self) -> DataSourceRef:
        return DataSourceRef(type_val=self.type, uid=self.uid)

    def managed(self) -> dict[str, Any]:
        """The fields provisioning owns and compares with what Grafana has."""
        return {
            "uid": self.uid,
            "name": self.name,
            "type": self.type,
            "url": self.url,
            "access": self.access,
            "basicAuth": bool(self.basic_auth_user),
            "basicAuthUser": self.basic_auth_user,
            "isDefault": self.is_default,
            "jsonData": dict(self.json_data),
        }

    def body(self) -> dict[str, Any]:
        body = self.managed()
        if self.secure_json_data:
            body["secureJsonData"] = dict(self.secure_json_data)
        return body


def opentsdb_datasource(url: str) -> GrafanaDatasource:
    return GrafanaDatasource(
        uid=OPENTSDB_UID,
        name="Sluice OpenTSDB",
        type="opentsdb",
        url=url,
        json_data={
            "tsdbVersion": OPENTSDB_VERSION_2_4,
            "tsdbResolution": OPENTSDB_RESOLUTION_SECOND,
            "lookupLimit": 1000,
        },
        is_default=True,
    )


def elasticsearch_datasource(
    source: str, url: str, *, user: str = "", password: str = "", prefix: str = ES_INDEX_PREFIX,
    api_key: str = "", ca_cert: str = "",
) -> GrafanaDatasource:
    """The Elasticsearch data source over the daily indices ``{prefix}-{source}-*``.

    ``api_key`` (the encoded key of the read-only dashboards role) goes in an
    ``Authorization: ApiKey`` header Grafana adds to every proxied query;
    ``ca_cert`` (PEM text) is the CA Grafana trusts for an HTTPS node.
    """
    json_data: dict[str, Any] = {"index": index_pattern(source, prefix=prefix), "timeField": ES_TIME_FIELD,
                                 "maxConcurrentShardRequests": 5}
    secure: dict[str, str] = {"basicAuthPassword": password} if user and password else {}
    if api_key:
        json_data["httpHeaderName1"] = "Authorization"
        secure["httpHeaderValue1"] = f"ApiKey {api_key}"
    if ca_cert:
        json_data["tlsAuthWithCACert"] = True
        secure["tlsCACert"] = ca_cert
    return GrafanaDatasource(
        uid=ES_UIDS[source],
        name=f"Sluice Elasticsearch {source}",
        type="elasticsearch",
        url=url,
        json_data=json_data,
        basic_auth_user=user,
        secure_json_data=secure,
    )


def sluice_datasources(
    *,
    opentsdb_url: str,
    elasticsearch_url: str,
    elasticsearch_user: str = "",
    elasticsearch_password: str = "",
    index_prefix: str = ES_INDEX_PREFIX,
    elasticsearch_api_key: str = "",
    elasticsearch_ca_cert: str = "",
) -> list[GrafanaDatasource]:
    """Every data source the Sluice dashboards use, for the given service URLs.

    The URLs are as Grafana's server sees them (Grafana proxies the queries):
    compose service names under docker-compose, loopback on one machine.
    ``index_prefix`` is the loaders' (:func:`include.contract.index_prefix`).
    """
    return [opentsdb_datasource(opentsdb_url)] + [
        elasticsearch_datasource(
            s, elasticsearch_url, user=elasticsearch_user, password=elasticsearch_password, prefix=index_prefix,
            api_key=elasticsearch_api_key, ca_cert=elasticsearch_ca_cert,
        )
        for s in ES_UIDS
    ]


#: References panels use; equal to ``ds.ref`` of the data sources above, whatever their URLs.
REFS = {
    "opentsdb": DataSourceRef(type_val="opentsdb", uid=OPENTSDB_UID),
    **{f"es-{s}": DataSourceRef(type_val="elasticsearch", uid=uid) for s, uid in ES_UIDS.items()},
}
