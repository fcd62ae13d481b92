"""The MERGE restart rule and the spool, on the file landing zone."""

from __future__ import annotations

import threading

import pytest

from include.landing import FileLanding, open_landing
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.spool import META_ROWS, META_SCHEMA, Lander, Spool, format_csv, merge_csv, merge_into, parse_csv

KEY = "raw/sensor/date=2023-11-14/hour=22/minute=13/pcroom.csv"


def rows(*specs):
    return [[f"2023-11-14T22:13:{s:02d}Z", "pcroom", "mqtt.home.pcroom", str(v), f"loc=pcroom type={t}"]
            for s, v, t in specs]


def test_merge_is_union_by_identity_and_only_grows():
    first = format_csv(SENSOR_SCHEMA, rows((1, 22.5, "temperature"), (1, 18.2, "humidity")))
    body, n = merge_csv(SENSOR_SCHEMA, first, rows((1, 22.5, "temperature"), (2, 22.6, "temperature")))
    assert n == 3
    assert parse_csv(SENSOR_SCHEMA, body) == sorted(
        rows((1, 22.5, "temperature"), (1, 18.2, "humidity"), (2, 22.6, "temperature")),
        key=lambda r: (r[0], r[1], r[2], r[4]))
    # The same rows again, in another order: the same bytes.
    again, _ = merge_csv(SENSOR_SCHEMA, body, reversed(rows((2, 22.6, "temperature"), (1, 18.2, "humidity"))))
    assert again == body


def test_merge_keeps_the_landed_value_on_equal_identity():
    first = format_csv(SENSOR_SCHEMA, rows((1, 22.5, "temperature")))
    body, n = merge_csv(SENSOR_SCHEMA, first, rows((1, 99.0, "temperature")))
    assert n == 1 and b"22.5" in body and b"99.0" not in body


def test_merge_into_writes_metadata(tmp_path):
    landing = open_landing(tmp_path.as_uri())
    merge_into(landing, KEY, SENSOR, format_csv(SENSOR_SCHEMA, rows((1, 1, "dust"))))
    merge_into(landing, KEY, SENSOR, format_csv(SENSOR_SCHEMA, rows((2, 2, "dust"))))
    info = landing.head(KEY)
    assert info.metadata[META_ROWS] == "2" and info.metadata[META_SCHEMA] == SENSOR


def test_spool_is_oldest_first_and_atomic(tmp_path):
    clock = iter([100.0, 50.0, 200.0])
    spool = Spool(tmp_path / "spool", clock=lambda: next(clock))
    for i in range(3):
        spool.add(f"k{i}", SENSOR, b"x")
    (tmp_path / "spool" / ".half-written.spool.tmp").write_bytes(b"junk")
    assert [e.key for e in spool.entries()] == ["k1", "k0", "k2"]
    assert spool.depth() == 3


class _Unwritable(FileLanding):
    """The real file store, pointed at a path that cannot be created until ``fix()``."""

    def __init__(self, root):
        super().__init__(root)
        self.broken = True

    def put(self, key, data, metadata=None):
        if self.broken:
            raise OSError("store unavailable")
        return super().put(key, data, metadata)

    def fix(self):
        self.broken = False


def test_lander_retries_with_backoff_and_lands_everything_once(tmp_path):
    landing = _Unwritable(tmp_path / "landing")
    spool = Spool(tmp_path / "spool")
    for s in range(3):
        spool.add(KEY, SENSOR, format_csv(SENSOR_SCHEMA, rows((s, s, "dust"))))
    waits = []

    def wait(event, seconds):
        waits.append(seconds)
        if len(waits) == 3:
            landing.fix()
        return event.wait(0.001)

    lander = Lander(landing, spool, retry_initial=1.0, retry_max=3.0, wait=wait)
    thread = threading.Thread(target=lander.run)
    thread.start()
    try:
        for _ in range(2000):
            if spool.depth() == 0:
                break
            threading.Event().wait(0.005)
    finally:
        lander.stop()
        thread.join(5)
    assert waits[:3] == [1.0, 2.0, 3.0]
    assert spool.depth() == 0
    assert len(parse_csv(SENSOR_SCHEMA, landing.get(KEY))) == 3


def test_lander_rejects_bad_intervals(tmp_path):
    with pytest.raises(ValueError, match="retry"):
        Lander(FileLanding(tmp_path), Spool(tmp_path / "s"), retry_initial=0)
