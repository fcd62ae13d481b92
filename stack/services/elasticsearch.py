"""Elasticsearch from Maven Central's distribution zip, single node, security on: TLS on HTTP, API keys.

``org.elasticsearch.distribution.integ-test-zip:elasticsearch`` is the
distribution Elastic publishes to Maven Central. 9.x needs Java 21 or newer
(the zip bundles no JDK), so the newest installed JDK of at least 21 runs it.
Elasticsearch refuses to run as root; started by root it runs as the system
user ``sluice`` (created when missing) and its home is unpacked into the
runtime folder, which that user can read.

Security (the zip ships ``x-pack-security``):

* HTTP is TLS only, with the certificate the stack's CA signs
  (:func:`stack.tls.server_cert`); the key and chain are copied into the
  config folder, which the service user owns. Transport stays plaintext on
  loopback: a single-node cluster has no peer to talk to, and Elasticsearch
  only insists on transport TLS for multi-node discovery.
* The ``elastic`` password is generated once (``runtime/elasticsearch/elastic.json``,
  mode 0600) and reaches the node through the keystore's ``bootstrap.password``,
  written through the keystore tool's stdin: never on a command line. Only the
  stack uses it: to install the index templates and to make the API keys.
* The ``.security`` system index (where API keys live) is created with an
  analyzer of the ``analysis-common`` module, which the Maven Central zip lacks;
  :data:`ANALYSIS_SOURCE` provides its four components as a stable analysis
  plugin, compiled here with the JDK's ``javac``.
* Every client gets an API key of one role (:mod:`include.elasticsearch_security`)
  for one index prefix, kept in ``runtime/elasticsearch/api-keys-<prefix>.json``
  (0600). After each start the stack checks the keys it keeps and makes again
  those the cluster no longer knows (a wiped data folder).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
import zipfile
from base64 import b64encode
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.contract import ES_INDEX_PREFIX, check_index_prefix
from stack.config import REPO_ROOT, StackError
from stack.secrets import new_password, secret_json, write_private
from stack.service import Service
from stack.tls import ca_cert_path, server_cert
from stack.toolchain import find_jdk, maven_artifact

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch as Client

VERSION = "9.5.4"
MIN_JAVA = 21
ADMIN_USER = "elastic"
#: Source of the stable analysis plugin the .security index needs (see the module doc).
ANALYSIS_SOURCE = REPO_ROOT / "stack" / "java" / "es-security-analysis" / "sluice" / "analysis" / "SecurityIndexAnalysis.java"
ANALYSIS_PLUGIN = "sluice-security-analysis"
_ANALYSIS_CLASS = "sluice.analysis.SecurityIndexAnalysis"


class Elasticsearch(Service):
    name = "elasticsearch"
    port_names = ("elasticsearch", "elasticsearch_transport")
    # A busy 2-core machine (several stacks, CI) has taken over two minutes to boot the node.
    start_timeout = 300.0
    drop_root = True

    @property
    def home(self) -> Path:
        return self.dir / f"elasticsearch-{VERSION}"

    @property
    def conf_dir(self) -> Path:
        return self.dir / "config"

    @property
    def url(self) -> str:
        """Where clients reach the node: HTTPS, the stack's CA signs its certificate."""
        return self.config.url("elasticsearch", scheme="https")

    @property
    def ca_certs(self) -> Path:
        return ca_cert_path(self.config)

    # -- secrets -----------------------------------------------------------
    def admin_password(self) -> str:
        """The ``elastic`` bootstrap password, made on first use."""
        return secret_json(self.dir / "elastic.json", lambda: {"password": new_password()})["password"]

    def keys_file(self, prefix: str) -> Path:
        return self.dir / f"api-keys-{check_index_prefix(prefix)}.json"

    def stored_api_keys(self, prefix: str = ES_INDEX_PREFIX) -> dict[str, dict[str, str]]:
        """The keys kept for ``prefix`` (no request; ``{}`` before the stack made them)."""
        path = self.keys_file(prefix)
        return json.loads(path.read_text()) if path.exists() else {}

    def api_keys(self, prefix: str = ES_INDEX_PREFIX, *, verify: bool = False) -> dict[str, dict[str, str]]:
        """Role -> API key (``id``, ``name``, ``encoded``) of every role for ``prefix``; made when missing.

        ``verify`` asks the cluster whether each kept key is still valid and
        replaces those it lost (a wiped data folder). The node must run.
        """
        from include import elasticsearch_security as sec

        keys = self.stored_api_keys(prefix)
        with self.admin() as admin:
            lost = [r for r in sec.ROLES if r not in keys or (verify and not sec.key_is_valid(admin, keys[r]))]
        return self._make_keys(prefix, lost) if lost else keys

    def api_key(self, role: str, prefix: str = ES_INDEX_PREFIX) -> str:
        """The encoded API key (the ``Authorization: ApiKey`` value) of ``role`` for ``prefix``; made when missing."""
        keys = self.stored_api_keys(prefix)
        if role not in keys:
            keys = self._make_keys(prefix, [role])
        return keys[role]["encoded"]

    def _make_keys(self, prefix: str, roles: list[str]) -> dict[str, dict[str, str]]:
        """New keys of ``roles`` for ``prefix``, kept with the others; the prefix's templates first when it is new.

        Writers may not install templates (see :mod:`include.elasticsearch_security`),
        so whoever makes keys for a prefix installs its templates.
        """
        from include import elasticsearch_security as sec

        path = self.keys_file(prefix)
        with self.admin() as admin:
            if not path.exists():
                self.install_templates(admin, prefix)
            keys = self.stored_api_keys(prefix)
            keys.update({r: sec.create_api_key(admin, r, prefix=prefix) for r in roles})
        write_private(path, json.dumps(keys) + "\n", replace=True)
        return keys

    @staticmethod
    def install_templates(admin: Client, prefix: str) -> None:
        """Every Sluice index template of ``prefix`` (sources, lag, anomaly, reconcile), written as admin when changed."""
        from include.contract import RECONCILE, template_name
        from include.dashboards.index_templates import apply_index_templates
        from include.reconcile import reconcile_template

        apply_index_templates(admin, prefix=prefix)
        apply_index_templates(admin, {template_name(RECONCILE, prefix=prefix): reconcile_template(prefix)})

    def rotate_api_keys(self, prefix: str = ES_INDEX_PREFIX) -> list[str]:
        """New keys for every role of ``prefix``; the old ones are invalidated. Returns the roles rotated.

        Clients read their key when they start: restart the platform
        (``python -m stack run``) so the stream loader and Airflow take the new ones.
        """
        from include import elasticsearch_security as sec

        path = self.keys_file(prefix)
        old = json.loads(path.read_text()) if path.exists() else {}
        with self.admin() as admin:
            keys = {r: sec.create_api_key(admin, r, prefix=prefix) for r in sec.ROLES}
            write_private(path, json.dumps(keys) + "\n", replace=True)
            sec.invalidate_api_keys(admin, [k["id"] for k in old.values()])
        return list(keys)

    # -- clients -----------------------------------------------------------
    def client(self, role: str, *, prefix: str = ES_INDEX_PREFIX, **kwargs: Any) -> Client:
        """A client with ``role``'s key for ``prefix`` (:func:`include.elasticsearch.connect`)."""
        from include.elasticsearch import connect

        return connect(self.url, api_key=self.api_key(role, prefix), ca_certs=str(self.ca_certs), **kwargs)

    def admin(self, **kwargs: Any) -> Client:
        """The ``elastic`` superuser: for the stack's set-up and for tests' clean-up, never for a pipeline client."""
        from include.elasticsearch import connect

        return connect(self.url, basic_auth=(ADMIN_USER, self.admin_password()), ca_certs=str(self.ca_certs),
                       **kwargs)

    # -- life cycle --------------------------------------------------------
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
        self._install_analysis_plugin()
        # Our own config folder: the distribution's defaults plus our settings.
        if self.conf_dir.exists():
            shutil.rmtree(self.conf_dir)
        shutil.copytree(self.home / "config", self.conf_dir)
        # Elasticsearch reads key material only from inside its config folder, which the service user owns.
        tls = server_cert(self.config, self.name)
        certs = self.conf_dir / "certs"
        certs.mkdir()
        shutil.copyfile(tls.cert, certs / "http.crt")
        write_private(certs / "http.key", tls.key.read_bytes())
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
            "xpack.security.enabled: true\n"
            "xpack.security.http.ssl.enabled: true\n"
            "xpack.security.http.ssl.certificate: certs/http.crt\n"
            "xpack.security.http.ssl.key: certs/http.key\n"
            # The chain's CA, so the node presents leaf + CA; clients trust only ca.crt.
            "xpack.security.http.ssl.certificate_authorities: certs/http.crt\n"
            # API keys are how every client authenticates.
            "xpack.security.authc.api_key.enabled: true\n"
            # A development machine's disk is often fuller than the production
            # watermarks allow; do not turn indices read-only for it.
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
            "action.destructive_requires_name: false\n"
        )
        self._write_keystore()
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)

    def _install_analysis_plugin(self) -> None:
        """Compile :data:`ANALYSIS_SOURCE` and lay it out as a stable plugin in ``plugins/`` (when changed)."""
        import hashlib

        target = self.home / "plugins" / ANALYSIS_PLUGIN
        digest = hashlib.sha256(ANALYSIS_SOURCE.read_bytes()).hexdigest()[:16]
        stamp = target / "source.sha256"
        if stamp.exists() and stamp.read_text() == digest:
            return
        if target.exists():
            shutil.rmtree(target)
        classes = self.dir / "tmp" / "analysis-classes"
        if classes.exists():
            shutil.rmtree(classes)
        classes.mkdir(parents=True)
        lib = self.home / "lib"
        classpath = ":".join(str(p) for p in [
            *lib.glob("elasticsearch-plugin-*api-*.jar"), *lib.glob("lucene-core-*.jar"),
            *lib.glob("lucene-analysis-common-*.jar")])
        jdk = find_jdk(self.name, MIN_JAVA)
        self.run_checked([str(jdk / "bin" / "javac"), "--release", str(MIN_JAVA), "-d", str(classes),
                          "-cp", classpath, str(ANALYSIS_SOURCE)], "compiling the .security index's analysis plugin")
        target.mkdir(parents=True)
        with zipfile.ZipFile(target / f"{ANALYSIS_PLUGIN}.jar", "w") as jar:
            for path in sorted(classes.rglob("*.class")):
                jar.write(path, path.relative_to(classes).as_posix())
        components = {
            "org.elasticsearch.plugin.analysis.TokenFilterFactory": {
                name: f"{_ANALYSIS_CLASS}${cls}" for name, cls in
                (("pattern_capture", "PatternCapture"), ("lowercase", "Lowercase"), ("unique", "Unique"))},
            "org.elasticsearch.plugin.analysis.TokenizerFactory": {"uax_url_email": f"{_ANALYSIS_CLASS}$UaxUrlEmail"},
        }
        (target / "named_components.json").write_text(json.dumps(components, indent=1) + "\n")
        (target / "stable-plugin-descriptor.properties").write_text(
            "description=Analysis components of the .security index (written by python -m stack)\n"
            f"version={VERSION}\nname={ANALYSIS_PLUGIN}\njava.version={MIN_JAVA}\nelasticsearch.version={VERSION}\n"
        )
        stamp.write_text(digest)

    def _write_keystore(self) -> None:
        """A fresh keystore with ``bootstrap.password``, given on stdin (``add -x``), never as an argument.

        It sets the ``elastic`` password only while the security index has none;
        the generated password never changes, so every start agrees with it.
        """
        tool = str(self.home / "bin" / "elasticsearch-keystore")
        env = self.env()
        self.run_checked([tool, "create"], "creating the Elasticsearch keystore", env=env)
        try:
            subprocess.run([tool, "add", "-x", "-f", "bootstrap.password"], input=self.admin_password(), text=True,
                           env=env, check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            raise StackError(self.name, f"elasticsearch-keystore add bootstrap.password failed (exit {exc.returncode})",
                             (exc.stdout or "") + (exc.stderr or "")) from None

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
        request = urllib.request.Request(f"{self.url}/_cluster/health?timeout=2s")
        token = b64encode(f"{ADMIN_USER}:{self.admin_password()}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.ca_certs))
        with urllib.request.urlopen(request, timeout=4, context=context) as resp:
            health = json.load(resp)
        if health["status"] not in ("green", "yellow"):
            raise RuntimeError(f"cluster status {health['status']}")
        return f"cluster {health['cluster_name']} {health['status']}, Elasticsearch {VERSION}, HTTPS + API keys"

    def after_start(self) -> None:
        """Install the default prefix's templates and check (or make) its API keys.

        Keys made for other prefixes (tests and benchmarks make them for their own)
        are left as they are: Elasticsearch keeps them across a restart, and a client
        holding one (a test that stops and restores the node mid-run) keeps working.
        """
        self.install_templates_as_admin(ES_INDEX_PREFIX)
        self.api_keys(ES_INDEX_PREFIX, verify=True)

    def install_templates_as_admin(self, prefix: str) -> None:
        with self.admin() as admin:
            self.install_templates(admin, prefix)
