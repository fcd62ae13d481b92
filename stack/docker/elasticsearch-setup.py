"""docker-compose's elasticsearch-setup: what the local stack does after it starts Elasticsearch.

Run once per ``docker compose up`` in the Sluice Airflow image (include/ mounted):

1. waits for the node (HTTPS, the CA that ``elasticsearch-certs`` made);
2. gives Kibana's built-in ``kibana_system`` user its password;
3. installs every Sluice index template as ``elastic`` (writers may only read them);
4. keeps one API key per role (include/elasticsearch_security.py), made again when the
   cluster no longer knows it, in ``$OUT/keys.json``; writes ``$OUT/<role>.key`` for the
   stream loader and ``$OUT/connections.json``, the Airflow Connections of every role
   (Airflow reads it through its LocalFilesystemBackend).

Secrets come from files (Docker secrets: ``ELASTIC_PASSWORD_FILE``, ``KIBANA_SYSTEM_PASSWORD_FILE``)
or, failing that, the variables themselves; none is printed or put on a command line. Exits 0 when done, non-zero naming what failed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from include import elasticsearch as es_mod
from include import elasticsearch_security as sec
from include.contract import RECONCILE, index_prefix, template_name
from include.dashboards.index_templates import apply_index_templates
from include.reconcile import reconcile_template

URL = os.environ.get("SLUICE_ELASTICSEARCH_URL", "https://elasticsearch:9200")
KIBANA_URL = os.environ.get("SLUICE_KIBANA_URL", "http://kibana:5601")
CA = os.environ.get("SLUICE_ELASTICSEARCH_CA_CERTS", "/certs/ca/ca.crt")
OUT = Path(os.environ.get("SLUICE_ES_KEYS_DIR", "/run/sluice-es"))


def secret(name: str) -> str:
    """``{name}_FILE``'s content (a Docker secret), else ``{name}`` itself."""
    path = os.environ.get(f"{name}_FILE")
    if not path:
        if os.environ.get(name):
            return os.environ[name]
        sys.exit(f"elasticsearch-setup: set {name}_FILE (a Docker secret's path) or {name}")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        sys.exit(f"elasticsearch-setup: cannot read {name}_FILE={path}: {exc.strerror}")


def write(path: Path, text: str) -> None:
    """Readable by the owner and group 0 (Airflow and the collectors run with gid 0), nobody else."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o640)
    tmp.replace(path)


def main() -> int:
    prefix = index_prefix()
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CA, OUT / "ca.crt")
    admin = es_mod.connect(URL, basic_auth=("elastic", secret("ELASTIC_PASSWORD")), ca_certs=CA)
    for attempt in range(60):
        try:
            admin.cluster.health(wait_for_status="yellow", timeout="5s")
            break
        except Exception as exc:  # not up yet: any failure means "wait"
            print(f"waiting for {URL} ({type(exc).__name__}), attempt {attempt + 1}/60", flush=True)
            time.sleep(5)
    else:
        sys.exit(f"elasticsearch-setup: {URL} did not become healthy")
    admin.security.change_password(username="kibana_system", password=secret("KIBANA_SYSTEM_PASSWORD"))
    apply_index_templates(admin, prefix=prefix)
    apply_index_templates(admin, {template_name(RECONCILE, prefix=prefix): reconcile_template(prefix)})
    stored = json.loads((OUT / "keys.json").read_text()) if (OUT / "keys.json").exists() else {}
    keys = {r: k for r, k in stored.items() if r in sec.ROLES and sec.key_is_valid(admin, k)}
    keys.update({r: sec.create_api_key(admin, r, prefix=prefix) for r in sec.ROLES if r not in keys})
    write(OUT / "keys.json", json.dumps(keys) + "\n")
    for role, key in keys.items():
        write(OUT / f"{role}.key", key["encoded"] + "\n")
    connections = sec.airflow_connections("elasticsearch", 9200, str(OUT / "ca.crt"), keys)
    # provision_dashboards' Kibana API calls: the kibana role's key (Kibana accepts Elasticsearch API keys).
    kibana = KIBANA_URL.removeprefix("http://").split(":")
    connections["kibana_default"] = {"conn_type": "http", "host": kibana[0], "port": int(kibana[1]), "schema": "http",
                                     "extra": {"api_key": keys[sec.KIBANA]["encoded"]}}
    write(OUT / "connections.json", json.dumps(connections, indent=1) + "\n")
    print(f"elasticsearch-setup: templates of {prefix}-*, {len(keys)} API keys "
          f"({', '.join(sorted(keys))}) and the Airflow connections in {OUT}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
