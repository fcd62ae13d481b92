"""OpenTSDB 2.4.1 on HBase in standalone mode, both from Maven Central's jars.

One service, two JVMs, one process group:

* **HBase** (``org.apache.hbase:hbase-server``, stack/maven/hbase-pom.xml) runs
  as ``HMaster start`` with ``hbase.cluster.distributed=false``: master, region
  server and the embedded ZooKeeper in one JVM, data on the local filesystem
  under ``runtime/opentsdb/hbase``.
* The four OpenTSDB tables are created the way OpenTSDB's ``create_table.sh``
  creates them (same column families and options, ``COMPRESSION=NONE`` as in
  ``seeds/000_…``) by stack/java/CreateOpenTSDBTables.java through HBase's Admin
  API, run with the JDK's source launcher. Existing tables are kept.
* The **TSD** (``net.opentsdb:opentsdb``, stack/maven/opentsdb-pom.xml) runs as
  ``net.opentsdb.tools.TSDMain`` once the tables exist.

The recorded pid is a small supervisor (``python -m stack.services.opentsdb
<plan>``) that starts the three steps in order and, when either JVM exits, stops
the other and exits itself, so the service is either whole or gone. Everything
runs in the session the stack's Service base class creates; the JVMs get
process groups of their own (and die with the supervisor), so the SIGTERM of
``down`` reaches the supervisor alone, which stops the TSD first and HBase
last: a TSD whose HBase vanished under it hangs in its shutdown flush.

Heaps: HBase 768 MiB plus 256 MiB direct memory, the TSD 512 MiB plus 128 MiB
direct memory, the one-off table step 128 MiB: under 2 GiB together.
HBase 2.6 supports Java 8, 11 and 17, so the newest JDK of 11..17 runs both.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

from stack.config import REPO_ROOT
from stack.service import Service, tail
from stack.toolchain import find_jdk, maven_classpath

log = logging.getLogger(__name__)

OPENTSDB_VERSION = "2.4.1"
HBASE_VERSION = "2.6.4-hadoop3"
OPENTSDB_POM = REPO_ROOT / "stack" / "maven" / "opentsdb-pom.xml"
HBASE_POM = REPO_ROOT / "stack" / "maven" / "hbase-pom.xml"
TABLES_SOURCE = REPO_ROOT / "stack" / "java" / "CreateOpenTSDBTables.java"
#: create_table.sh's COMPRESSION; the seed ran it with NONE (no LZO on a laptop).
COMPRESSION = "NONE"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: Seconds the supervisor gives each JVM to stop after SIGTERM (within stop_timeout).
STOP_WAIT = {"tsd": 20.0, "tables": 10.0, "hbase": 50.0}
#: Java versions HBase 2.6 supports.
JAVA_RANGE = (11, 17)

#: What HBase's own bin/hbase adds on Java 11+: its off-heap code reaches into
#: java.nio and jdk.internal, which the module system closes by default.
HBASE_JAVA_OPENS = (
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
)


def _site_xml(properties: dict[str, str]) -> str:
    rows = "".join(
        f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>\n"
        for k, v in properties.items()
    )
    return (
        '<?xml version="1.0"?>\n<!-- Written by `python -m stack`; edits are replaced at the next start. -->\n'
        f"<configuration>\n{rows}</configuration>\n"
    )


class OpenTSDB(Service):
    name = "opentsdb"
    port_names = ("opentsdb", "hbase_zookeeper", "hbase_master", "hbase_regionserver")
    # Cold: HBase ~20 s, the table step ~10 s, the TSD ~5 s on an idle machine;
    # two busy cores can triple that.
    start_timeout = 300.0
    # HBase flushes its memstores and closes regions on SIGTERM (~20 s).
    stop_timeout = 90.0

    # -- paths -------------------------------------------------------------
    @property
    def hbase_dir(self) -> Path:
        return self.dir / "hbase"

    @property
    def tsd_dir(self) -> Path:
        return self.dir / "tsd"

    @property
    def hbase_log(self) -> Path:
        return self.dir / "hbase.log"

    @property
    def plan_file(self) -> Path:
        return self.dir / "plan.json"

    def _classpath_file(self, which: str) -> Path:
        return self.config.cache / "opentsdb" / f"{which}-classpath.txt"

    # -- hooks ---------------------------------------------------------------
    def install(self) -> None:
        find_jdk(self.name, *JAVA_RANGE)
        maven_classpath(self.name, HBASE_POM, self._classpath_file("hbase"))
        maven_classpath(self.name, OPENTSDB_POM, self._classpath_file("tsd"))

    def prepare(self) -> None:
        host, ports = self.config.host, self.config.ports
        java = str(find_jdk(self.name, *JAVA_RANGE) / "bin" / "java")
        hbase_cp = maven_classpath(self.name, HBASE_POM, self._classpath_file("hbase"))
        tsd_cp = maven_classpath(self.name, OPENTSDB_POM, self._classpath_file("tsd"))
        conf = self.hbase_dir / "conf"
        for path in (conf, self.hbase_dir / "data", self.tsd_dir / "static", self.tsd_dir / "cache"):
            path.mkdir(parents=True, exist_ok=True)
        data = self.hbase_dir / "data"
        (conf / "hbase-site.xml").write_text(_site_xml({
            "hbase.cluster.distributed": "false",
            "hbase.rootdir": (data / "hbase").as_uri(),
            "hbase.zookeeper.property.dataDir": str(data / "zookeeper"),
            "hbase.tmp.dir": str(data / "tmp"),
            # The local filesystem has no hflush/hsync; HBase must not insist.
            "hbase.unsafe.stream.capability.enforce": "false",
            "hbase.wal.provider": "filesystem",
            # Fixed ports (standalone mode picks random ones otherwise), loopback only.
            "hbase.localcluster.assign.random.ports": "false",
            "hbase.zookeeper.quorum": host,
            "hbase.zookeeper.property.clientPort": str(ports["hbase_zookeeper"]),
            "hbase.master.port": str(ports["hbase_master"]),
            "hbase.regionserver.port": str(ports["hbase_regionserver"]),
            "hbase.master.ipc.address": host,
            "hbase.regionserver.ipc.address": host,
            "hbase.master.hostname": host,
            "hbase.unsafe.regionserver.hostname": host,
            # At shutdown the embedded ZooKeeper stops before the region server,
            # which then retries it for ~20 s; a shorter retry keeps `down` quick.
            "zookeeper.recovery.retry": "1",
            "zookeeper.recovery.retry.intervalmill": "200",
            # No web UIs: two fewer ports, less memory.
            "hbase.master.info.port": "-1",
            "hbase.regionserver.info.port": "-1",
            # No "responseTooSlow/TooLarge" logging: it renders the request as protobuf text, and a TSD's
            # multi-put of thousands of cells that took over 10 s (an HBase flush under a sustained put)
            # made a string larger than the heap: the region server died of OutOfMemoryError (seen
            # 2026-12-02 under the stream benchmark). Slow puts still show in the TSD's own log.
            "hbase.ipc.warn.response.time": "-1",
            "hbase.ipc.warn.response.size": "-1",
        }))
        (conf / "log4j2.properties").write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = %d{ISO8601} %p [%t] %c{1}: %m%n\n"
            "rootLogger.level = warn\n"
            "rootLogger.appenderRef.out.ref = out\n"
            # The lines that say how far start-up got.
            "logger.master.name = org.apache.hadoop.hbase.master.HMaster\nlogger.master.level = info\n"
            "logger.rs.name = org.apache.hadoop.hbase.regionserver.HRegionServer\nlogger.rs.level = info\n"
        )
        (self.tsd_dir / "opentsdb.conf").write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            f"tsd.network.port = {ports['opentsdb']}\n"
            f"tsd.network.bind = {host}\n"
            f"tsd.http.staticroot = {self.tsd_dir / 'static'}\n"
            f"tsd.http.cachedir = {self.tsd_dir / 'cache'}\n"
            f"tsd.storage.hbase.zk_quorum = {host}:{ports['hbase_zookeeper']}\n"
            "tsd.core.auto_create_metrics = true\n"
            # Two writes of one datapoint with different values: the last wins on read.
            "tsd.storage.fix_duplicates = true\n"
            # Batches larger than one Netty chunk (8 KiB) arrive chunked.
            "tsd.http.request.enable_chunked = true\n"
            "tsd.http.request.max_chunk = 16777216\n"
            # With ?sync a put answers after HBase acknowledged it. asynchbase (which
            # reads its own settings from this file) sends buffered puts every
            # buffered_flush_interval ms, 1000 by default: a second per sync put.
            "hbase.rpcs.buffered_flush_interval = 20\n"
        )
        (self.tsd_dir / "logback.xml").write_text(
            "<!-- Written by `python -m stack`; edits are replaced at the next start. -->\n"
            "<configuration>\n"
            '  <appender name="out" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{ISO8601} %-5level [%thread] %logger{0}: %msg%n</pattern></encoder>\n"
            "  </appender>\n"
            '  <logger name="org.apache.zookeeper" level="WARN"/>\n'
            '  <logger name="org.hbase.async" level="WARN"/>\n'
            '  <root level="INFO"><appender-ref ref="out"/></root>\n'
            "</configuration>\n"
        )
        hbase_java = [
            java, "-XX:+UseG1GC", "-Djava.awt.headless=true", *HBASE_JAVA_OPENS,
            f"-Dlog4j2.configurationFile={conf / 'log4j2.properties'}",
            "-cp", f"{conf}:{hbase_cp}",
        ]
        plan = {
            "hbase": [*hbase_java[:1], "-Xms256m", "-Xmx768m", "-XX:MaxDirectMemorySize=256m",
                      *hbase_java[1:], "org.apache.hadoop.hbase.master.HMaster", "start"],
            "hbase_log": str(self.hbase_log),
            "tables_log": str(self.dir / "tables.log"),
            "tables": [*hbase_java[:1], "-Xmx128m", *hbase_java[1:], str(TABLES_SOURCE), COMPRESSION],
            "tsd": [
                java, "-Xms128m", "-Xmx512m", "-XX:MaxDirectMemorySize=128m", "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlogback.configurationFile={self.tsd_dir / 'logback.xml'}",
                "-cp", tsd_cp, "net.opentsdb.tools.TSDMain",
                f"--config={self.tsd_dir / 'opentsdb.conf'}",
            ],
        }
        self.plan_file.write_text(json.dumps(plan, indent=1))

    def env(self) -> dict[str, str]:
        pythonpath = os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
        return dict(os.environ, PYTHONPATH=pythonpath)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stack.services.opentsdb", str(self.plan_file)]

    def check_health(self) -> str:
        with urllib.request.urlopen(f"{self.config.url('opentsdb')}/api/version", timeout=4) as resp:
            info = json.load(resp)
        # The Maven Central jar reports "BuildData" as its version; the revision is right.
        return f"OpenTSDB {OPENTSDB_VERSION} (rev {info.get('short_revision', '?')}) on HBase {HBASE_VERSION}"


# -- the supervisor ------------------------------------------------------------

def _say(message: str) -> None:
    """One line to the service log (the supervisor's stdout)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} sluice-supervisor: {message}", flush=True)


def _own_group_dying_with_parent() -> None:
    """Run in each JVM between fork and exec: its own process group, killed with us.

    The JVMs must not get the SIGTERM that ``down`` sends to the supervisor's
    group: the supervisor stops them in order (the TSD flushes to HBase, so
    HBase goes last). If the supervisor itself is killed, the kernel kills them
    (PR_SET_PDEATHSIG), so no JVM outlives it.
    """
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_own_group_dying_with_parent, **kwargs)


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def supervise(plan_file: Path) -> int:
    """Run HBase, then the table step, then the TSD; return an exit status.

    Returns 0 after a SIGTERM/SIGINT stopped both JVMs, 1 when a step failed or
    either JVM exited by itself (the other is stopped first, so nothing is left
    half-running).
    """
    plan = json.loads(plan_file.read_text())
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children: list[tuple[str, subprocess.Popen]] = []

    def stop_all() -> None:
        # TSD first so its last writes reach a running HBase.
        for name, proc in reversed(children):
            _terminate(proc, STOP_WAIT[name])

    try:
        with open(plan["hbase_log"], "ab") as hbase_out:
            _say("starting HBase (log: hbase.log)")
            children.append(("hbase", _spawn(plan["hbase"], stdout=hbase_out, stderr=subprocess.STDOUT)))
        _say("creating the OpenTSDB tables when missing")
        tables_log = Path(plan["tables_log"])
        with tables_log.open("wb") as tables_out:
            tables = _spawn(plan["tables"], stdout=tables_out, stderr=subprocess.STDOUT)
        children.append(("tables", tables))
        while tables.poll() is None and not stopping:
            if children[0][1].poll() is not None:
                _say(f"HBase exited with code {children[0][1].returncode} during start-up; "
                     f"last lines of hbase.log:\n{tail(Path(plan['hbase_log']), 30)}")
                stop_all()
                return 1
            time.sleep(0.5)
        if stopping:
            stop_all()
            return 0
        children.pop()
        output = tables_log.read_text(errors="replace")
        _say("table step: " + "; ".join(ln.split(":")[0] for ln in output.splitlines() if ln.startswith("table ")))
        if tables.returncode != 0:
            _say(f"creating the tables failed (exit {tables.returncode}):\n" + "\n".join(output.splitlines()[-30:]))
            stop_all()
            return 1
        _say("starting the TSD")
        children.append(("tsd", _spawn(plan["tsd"])))
        while not stopping:
            for name, proc in children:
                if proc.poll() is not None:
                    _say(f"{name} exited with code {proc.returncode}; stopping the rest")
                    if name == "hbase":
                        _say(f"last lines of hbase.log:\n{tail(Path(plan['hbase_log']), 30)}")
                    stop_all()
                    return 1
            time.sleep(1)
        _say("stopping")
        stop_all()
        return 0
    except BaseException:
        stop_all()
        raise


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
