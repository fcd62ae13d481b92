"""One collector, 5,000 devices at 1 message/s (3 readings each), landing into the real MinIO.

Drives the collector's landing path in real time (tests/benchmarks/landing_bench.py
explains what runs) for 150 s: two or three minute files, one per minute for
this writer. Asserts correctness only: every minute lands with exactly the
rows sent, every device in the one file, and the spool stays flat (a minute's
entries are gone before the next minute closes). Lateness and throughput are
printed, not asserted: they are figures of this machine (the benchmark
prints them beside their reference).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import pytest
from collector_helpers import REPO, new_run_id

from include.contract import minute_key
from include.landing import S3Landing
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.spool import parse_csv
from stack.config import LANDING_BUCKET

sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
from landing_bench import report, run_load  # noqa: E402

pytestmark = pytest.mark.integration
DEVICES = 5000


@pytest.mark.timeout(600)
def test_one_collector_lands_5000_devices_every_minute_and_the_spool_stays_flat(tmp_path, minio, capsys):
    run = new_run_id()
    # Root's client: run_load reads each minute's manifest back to time it (the collector user cannot read).
    landing = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-{run}")
    result = run_load(landing, tmp_path / "state", devices=DEVICES, seconds=150, writer=f"col-{run}",
                      progress=lambda line: None)
    with capsys.disabled():
        print()
        report(result)
    assert len(result.minutes) >= 3
    for m in result.minutes:
        assert m.landed_at, f"minute {m.minute} never landed"
        assert m.landed_rows == m.sent, (m.minute, m.landed_rows, m.sent)  # exactly the rows sent
        assert len(m.rows) == DEVICES  # every device, in the writer's one file
    # One full minute read back row by row: 60 s x 5,000 devices x 3 readings, each once.
    full = next(m for m in result.minutes if m.sent == 60 * 3 * DEVICES)
    key = minute_key(SENSOR, datetime.fromtimestamp(full.minute, timezone.utc), f"col-{run}")
    rows = parse_csv(SENSOR_SCHEMA, landing.get(key))
    assert len({(r[0], r[1], r[2], r[4]) for r in rows}) == len(rows) == full.sent
    # Flat: at most one minute's entries (its file and its manifest) ever waited in the spool.
    # Flat: never more than two minutes in the spool at once (each minute is its file and its
    # manifest, and the test's own last close can queue a minute while the one before still lands).
    assert result.max_spool_depth <= 4, result.max_spool_depth
    assert [info.key for info in landing.list("raw/sensor/")] == sorted(
        minute_key(SENSOR, datetime.fromtimestamp(m.minute, timezone.utc), f"col-{run}") for m in result.minutes)
