"""Host sampler: one row a second, one file a minute; restart merge; MinIO down.

Clocks are ScaledClocks (60 clock seconds per real second), so minutes pass in
about a second and no test waits for the wall clock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from collector_helpers import private_service, wait_for

from collectors.common import ScaledClock
from collectors.host import HostConfig, HostSampler
from include.landing import S3Landing, open_landing
from include.schemas import HOST_SCHEMA
from include.spool import MANIFEST, META_ROWS, parse_csv
from stack.config import LANDING_BUCKET
from stack.services.minio import MinIO

T0 = 1_700_000_000 - 20  # 22:12:40 UTC


def config(tmp_path: Path, **kw) -> HostConfig:
    kw.setdefault("landing_url", (tmp_path / "landing").as_uri())
    cfg = HostConfig(state_dir=str(tmp_path / "state"), host="box1", metrics_port=-1, **kw)
    cfg.validate()
    return cfg


def run_for(sampler: HostSampler, clock_seconds: float, factor: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,))
    thread.start()
    time.sleep(clock_seconds / factor)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def landed_rows(landing, prefix="raw/host/") -> dict[str, list[list[str]]]:
    return {info.key: parse_csv(HOST_SCHEMA, landing.get(info.key)) for info in landing.list(prefix)}


def all_timestamps(files) -> list[str]:
    return sorted(row[0] for rows in files.values() for row in rows)


def test_one_row_per_second_one_file_per_minute(tmp_path):
    # 20x, not 60x: a sampled second lasts 50 ms of real time, so a loaded CI machine
    # does not skip a second of the whole minute the test needs.
    sampler = HostSampler(config(tmp_path, heartbeat_interval=0), clock=ScaledClock(20, start=T0))
    run_for(sampler, 150, 20)
    landing = open_landing((tmp_path / "landing").as_uri())
    files = landed_rows(landing)
    stamps = all_timestamps(files)
    assert len(stamps) == sampler.samples == len(set(stamps))  # every sample once, none bunched twice
    assert len(files) >= 3
    for key, rows in files.items():
        assert key.endswith("/box1.csv")
        assert {r[0][:16] for r in rows} == {rows[0][0][:16]}  # a file holds its own minute only
        assert landing.head(key).metadata[META_ROWS] == str(len(rows))
    full = [rows for key, rows in files.items() if len(rows) == 60]
    assert full, "a whole minute in between has all 60 seconds"


def test_restart_in_the_same_minute_merges_and_never_shrinks(tmp_path):
    landing = open_landing((tmp_path / "landing").as_uri())
    first = HostSampler(config(tmp_path), clock=ScaledClock(20, start=T0 - 30))  # 22:12:10
    run_for(first, 15, 20)
    before = landed_rows(landing)
    assert sum(map(len, before.values())) == first.samples
    second = HostSampler(config(tmp_path), clock=ScaledClock(20, start=T0 - 5))  # 22:12:35, same minute
    run_for(second, 10, 20)
    after = landed_rows(landing)
    for key, rows in before.items():
        assert set(map(tuple, rows)) <= set(map(tuple, after[key]))
    assert len(all_timestamps(after)) == len(set(all_timestamps(after))) == first.samples + second.samples


@pytest.mark.integration
def test_minio_down_spools_and_lands_after_recovery(tmp_path, stack_config):
    with private_service(MinIO, stack_config, tmp_path / "minio") as minio:
        landing = S3Landing(minio.client("collector"), LANDING_BUCKET, "host-test")
        clock = ScaledClock(60, start=T0)
        sampler = HostSampler(config(tmp_path, retry_initial=1.0, retry_max=4.0), landing=landing, clock=clock)
        stop = threading.Event()
        thread = threading.Thread(target=sampler.run, args=(stop,))
        thread.start()
        try:
            wait_for(lambda: sampler.metrics and sampler.metrics.files._value.get() >= 1, 10, "a first landed file")
            minio.stop()
            # Three clock minutes and more with the store down (3 real seconds): three data files
            # spooled (each minute's manifest is an entry of its own, so the depth alone is no minute count).
            wait_for(lambda: sum(e.kind != MANIFEST for e in sampler.store.spool.entries()) >= 3, 20,
                     "three spooled minutes")
            assert sampler.metrics.upload_failures._value.get() >= 1
            minio.start()
            wait_for(lambda: sampler.store.spool.depth() == 0, 30, "the spool to drain")
        finally:
            stop.set()
            thread.join(30)
            if minio.pid() is None:
                minio.start()
        files = landed_rows(S3Landing(minio.admin_client(), LANDING_BUCKET, "host-test"))  # root reads back
        stamps = all_timestamps(files)
        assert len(stamps) == len(set(stamps)) == sampler.samples
        assert len(files) >= 4
