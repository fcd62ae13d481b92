"""Elasticsearch from Maven Central's distribution zip, single node, no security.

``org.elasticsearch.distribution.integ-test-zip:elasticsearch`` is the
distribution Elastic publishes to Maven Central. 9.x needs Java 21 or newer
(the zip bundles no JDK), so the newest installed JDK of at least 21 runs it.
Elasticsearch refuses to run as root; started by root it runs as the system
user ``sluice`` (created when missing) and its home is unpacked into the
runtime folder, which that user can read.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import zipfile

from stack.service import Service
from stack.toolchain import find_jdk, maven_artifact

VERSION = "9.5.4"
MIN_JAVA = 21


class Elasticsearch(Service):
    name = "elasticsearch"
    port_names = ("elasticsearch", "elasticsearch_transport")
    start_timeout = 120.0
    drop_root = True

    @property
    def home(self):
        return self.dir / f"elasticsearch-{VERSION}"

    @property
    def conf_dir(self):
        return self.dir / "config"

    def install(self) -> None:
        find_jdk(self.name, MIN_JAVA)
        maven_artifact(self.name, "org.elasticsearch.distribution.integ-test-zip", "elasticsearch", VERSION, "zip")

    def prepare(self) -> None:
        if not (self.home / "bin" / "elasticsearch").exists():
            archive = maven_artifact(
                self.name, "org.elasticsearch.distribution.integ-test-zip", "elasticsearch", VERSION, "zip"
            )
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(self.dir)
            for path in (self.home / "bin").iterdir():
                path.chmod(0o755)
        # Our own config folder: the distribution's defaults plus our settings.
        if self.conf_dir.exists():
            shutil.rmtree(self.conf_dir)
        shutil.copytree(self.home / "config", self.conf_dir)
        (self.conf_dir / "elasticsearch.yml").write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            "cluster.name: sluice-local\n"
            "node.name: sluice-local-1\n"
            "discovery.type: single-node\n"
            f"network.host: {self.config.host}\n"
            f"http.port: {self.port}\n"
            f"transport.port: {self.config.ports['elasticsearch_transport']}\n"
            f"path.data: {self.data_dir}\n"
            f"path.logs: {self.dir / 'logs'}\n"
            "xpack.security.enabled: false\n"
            # A development machine's disk is often fuller than the production
            # watermarks allow; do not turn indices read-only for it.
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
            "action.destructive_requires_name: false\n"
        )
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            ES_JAVA_HOME=str(find_jdk(self.name, MIN_JAVA)),
            ES_PATH_CONF=str(self.conf_dir),
            ES_TMPDIR=str(self.dir / "tmp"),
            ES_JAVA_OPTS="-Xms512m -Xmx1g",
        )

    def command(self) -> list[str]:
        return [str(self.home / "bin" / "elasticsearch")]

    def check_health(self) -> str:
        url = f"{self.config.url('elasticsearch')}/_cluster/health?timeout=2s"
        with urllib.request.urlopen(url, timeout=4) as resp:
            health = json.load(resp)
        if health["status"] not in ("green", "yellow"):
            raise RuntimeError(f"cluster status {health['status']}")
        return f"cluster {health['cluster_name']} {health['status']}, Elasticsearch {VERSION}"

