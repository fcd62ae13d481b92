"""The OpenTSDB sink of the batch pipeline against the real OpenTSDB."""

from __future__ import annotations

import uuid

from include.opentsdb import OpenTSDBClient
from include.sinks import OpenTSDBSink
from include.schemas import HOST_SCHEMA
from include.transform import transform_file

T0 = "2023-11-14T22:13"  # 1_699_999_980 is 22:13:00Z
EPOCH0 = 1_699_999_980


def test_sensor_file_lands_with_device_tag_and_a_bad_tag_key_is_refused_before_the_sink(opentsdb):
    metric = f"sluice.test.sink.{uuid.uuid4().hex[:8]}"
    csv = (
        "timestamp,device,metric,value,tags\n"
        f"{T0}:00Z,arduino-1,{metric},22.5,loc=pcroom type=temperature\n"
        f"{T0}:00Z,arduino-1,{metric},18.2,loc=pcroom type=humidity\n"
        f"{T0}:20Z,arduino-2,{metric},30,loc=kitchen type=dust\n"
        # A tag key outside the reading contract's names (OpenTSDB would refuse it too): the
        # contract rejects its row with the reason, and the sink never sees it.
        f"{T0}:40Z,arduino-2,{metric},31,bad@key=x type=dust\n"
    ).encode()
    docs = transform_file("sensor", csv)
    assert (docs.accepted, docs.rejected) == (3, 1)
    (error,) = docs.row_errors
    assert error.line == 5 and "bad@key" in error.row and "letters, digits" in error.reason
    with OpenTSDBClient(opentsdb.config.url("opentsdb")) as client:
        result = OpenTSDBSink(client).load("sensor", [("raw/sensor/x.csv", docs)])["raw/sensor/x.csv"]
        assert result.accepted == 3 and not result.failed

        series = client.query(metric, start=EPOCH0, end=EPOCH0 + 59)
        got = {(s["tags"]["device"], s["tags"]["type"]): s["dps"] for s in series}
        assert got == {
            ("arduino-1", "temperature"): {str(EPOCH0): 22.5},
            ("arduino-1", "humidity"): {str(EPOCH0): 18.2},
            ("arduino-2", "dust"): {str(EPOCH0 + 20): 30},
        }


def test_host_row_becomes_one_datapoint_per_numeric_field(opentsdb):
    host = f"h{uuid.uuid4().hex[:8]}"
    values = ["1.5", "10", "20", "30", "0", "1000", "600", "40.0", "400", "200"]
    csv = (",".join(HOST_SCHEMA.names[:12]) + "\n" + f"{T0}:05Z,{host}," + ",".join(values) + "\n").encode()
    docs = transform_file("host", csv)
    with OpenTSDBClient(opentsdb.config.url("opentsdb")) as client:
        result = OpenTSDBSink(client).load("host", [("k", docs)])["k"]
        assert (result.accepted, result.failed) == (1, {})
        (mem,) = client.query("host.mem_available", start=EPOCH0, end=EPOCH0 + 59, tags={"host": host})
        assert mem["dps"] == {str(EPOCH0 + 5): 600}
        (cpu,) = client.query("host.cpu_usage_percent", start=EPOCH0, end=EPOCH0 + 59, tags={"host": host})
        assert cpu["dps"] == {str(EPOCH0 + 5): 1.5}
