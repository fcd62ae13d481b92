"""The CSV schemas of Sluice's minute files, and the metric names derived from them.

Both collectors write these columns, the DAGs and the stream loader read them,
and the dashboards query the metric names derived from them. Columns are only
ever appended: a reader accepts a file whose header is a prefix-compatible
version of the schema (see :meth:`CsvSchema.check_header`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Values of the ``source`` path segment of the landing zone.
HOST = "host"
SENSOR = "sensor"
SOURCES = (HOST, SENSOR)


@dataclass(frozen=True)
class Column:
    name: str
    #: "timestamp" (ISO-8601 UTC with Z), "str", "int", "float" or "tags".
    kind: str
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class CsvSchema:
    name: str
    version: int
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def numeric(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind in ("int", "float"))

    def check_header(self, header: list[str]) -> None:
        """Raise ValueError naming what is wrong with a file's header row.

        The header must start with every column of version 1 in order; columns
        this version knows may follow in order. Unknown columns are an error
        (a newer writer than this reader, or a corrupt file).
        """
        expected = list(self.names)
        if header[: len(REQUIRED[self.name])] != list(REQUIRED[self.name]):
            raise ValueError(
                f"header of a {self.name} file must start with {','.join(REQUIRED[self.name])}; "
                f"got {','.join(header[:len(REQUIRED[self.name])])}"
            )
        if header != expected[: len(header)]:
            unknown = [h for h in header if h not in expected]
            if unknown:
                raise ValueError(f"unknown column(s) {','.join(unknown)} in a {self.name} file (schema v{self.version})")
            raise ValueError(f"columns of a {self.name} file out of order: {','.join(header)}")


def _c(name: str, kind: str, unit: str = "", description: str = "") -> Column:
    return Column(name, kind, unit, description)


#: One row per second per host: the psutil fields of seeds/003 first, then more.
HOST_SCHEMA = CsvSchema(
    name=HOST,
    version=1,
    columns=(
        _c("timestamp", "timestamp", "", "second of the sample, UTC"),
        _c("host", "str", "", "host name"),
        _c("cpu_usage_percent", "float", "percent", "CPU use over the last second, all cores"),
        _c("cpu_ctx_switches", "int", "count", "context switches since boot"),
        _c("cpu_interrupts", "int", "count", "interrupts since boot"),
        _c("cpu_soft_interrupts", "int", "count", "soft interrupts since boot"),
        _c("cpu_syscalls", "int", "count", "system calls since boot (0 on Linux)"),
        _c("mem_total", "int", "bytes"),
        _c("mem_available", "int", "bytes"),
        _c("mem_percent", "float", "percent"),
        _c("mem_used", "int", "bytes"),
        _c("mem_free", "int", "bytes"),
        _c("load_1m", "float", "", "load average over 1 minute"),
        _c("load_5m", "float"),
        _c("load_15m", "float"),
        _c("swap_total", "int", "bytes"),
        _c("swap_used", "int", "bytes"),
        _c("swap_percent", "float", "percent"),
        _c("disk_read_bytes", "int", "bytes", "since boot, all disks"),
        _c("disk_write_bytes", "int", "bytes", "since boot, all disks"),
        _c("disk_read_count", "int", "count"),
        _c("disk_write_count", "int", "count"),
        _c("net_bytes_sent", "int", "bytes", "since boot, all interfaces"),
        _c("net_bytes_recv", "int", "bytes"),
        _c("net_packets_sent", "int", "count"),
        _c("net_packets_recv", "int", "count"),
        _c("net_errin", "int", "count"),
        _c("net_errout", "int", "count"),
        _c("net_dropin", "int", "count"),
        _c("net_dropout", "int", "count"),
    ),
)

#: Long format, one row per reading: an Arduino payload of three readings is three rows.
SENSOR_SCHEMA = CsvSchema(
    name=SENSOR,
    version=1,
    columns=(
        _c("timestamp", "timestamp", "", "time of the reading, UTC"),
        _c("device", "str", "", "device id (from the MQTT topic)"),
        _c("metric", "str", "", "metric name as sent, e.g. mqtt.home.pcroom"),
        _c("value", "float"),
        _c("tags", "tags", "", "OpenTSDB style k=v pairs separated by spaces, sorted by key"),
    ),
)

SCHEMAS = {HOST: HOST_SCHEMA, SENSOR: SENSOR_SCHEMA}

#: The columns every file of a source must start with (version 1 of each schema
#: up to its first appended column: the seed's fields for host files).
REQUIRED = {HOST: HOST_SCHEMA.names[:12], SENSOR: SENSOR_SCHEMA.names}

#: Host field -> OpenTSDB metric name (``host.<field>``, tagged ``host=<name>``).
HOST_METRICS = {c.name: f"host.{c.name}" for c in HOST_SCHEMA.numeric}

#: The sensor quantities the Arduino meters of seeds/000 send, as ``type`` tags.
SENSOR_TYPES = ("temperature", "humidity", "dust")

#: The metric the seed's Arduino meter sends its readings under (told apart by
#: ``type=``). The simulator uses it, and the dashboards query it by default.
SENSOR_METRIC = "mqtt.home.pcroom"


# Names of the lag checks and the freshness metric (index names are in include/contract.py).

#: OpenTSDB: consumer lag in messages, tagged group, topic, partition.
LAG_METRIC = "kafka.consumer.lag"
#: OpenTSDB: lag status of a partition as a numeric code (:data:`LAG_STATUS_CODES`), same tags.
LAG_STATUS_METRIC = "kafka.consumer.lag_status"
LAG_TAGS = ("group", "topic", "partition")
#: Lag status -> the code written under :data:`LAG_STATUS_METRIC` (higher is worse).
#: Partition statuses are OK, WARN, REWIND, STALL, STOP; a group's is OK, WARN or ERR
#: (include/kafka_lag.py has the rules).
LAG_STATUS_CODES = {"OK": 0, "WARN": 1, "REWIND": 2, "STALL": 3, "STOP": 4, "ERR": 5}

#: OpenTSDB: epoch seconds of the last minute loaded, tagged ``source=<host|sensor>``,
#: written at that minute's own timestamp (the freshness dashboard shows the time of
#: the newest point as "last minute loaded").
FRESHNESS_METRIC = "sluice.pipeline.last_loaded_minute"
