"""The collectors' input boundaries are total: journal split, spool lander, Kafka backlog, short writes.

Property-based tests (hypothesis, fixed budget) generate rows and devices with
any text, newlines and control characters included, and check the journal
split and the spool merge never raise and lose nothing. The store is the
embedded file landing zone (a real folder); short writes are real ones from
the kernel (a file-size limit, RLIMIT_FSIZE, in a child process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.journal import CLOSING_SUFFIX, MinuteStore, decode_rows, encode_record, row_problem
from collectors.mqtt import TALLY, sensor_splitter
from include.contract import manifest_key, minute_key, payload_deadletter_key
from include.landing import FileLanding
from include.manifests import MinuteManifest
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.spool import DEADLETTER, MANIFEST, BadEntry, Lander, Spool, format_csv, merge_into, parse_csv

MINUTE = 1_700_000_040  # 2023-11-14T22:14:00Z
AT = datetime.fromtimestamp(MINUTE, timezone.utc)
WIDTH = len(SENSOR_SCHEMA.names)
BUDGET = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text, with the characters that break CSV rows and file names made likely.
# Lone surrogates have no UTF-8 form: the handler's row check refuses them before any record is written.
hostile_text = st.text(alphabet=st.one_of(st.sampled_from(list("\n\r\x00\x1f\",= .-_aZ9é")),
                                          st.characters(blacklist_categories=("Cs",))), min_size=0, max_size=12)
safe_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True)


def row(ts: int, device: str, metric: str, value: str = "1", tags: str = "") -> list[str]:
    return [f"2023-11-14T22:14:{ts:02d}Z", device, metric, value, tags]


# -- journal split ---------------------------------------------------------------------
@BUDGET
@given(st.lists(st.lists(hostile_text, min_size=WIDTH, max_size=WIDTH), max_size=30), st.binary(max_size=200))
def test_journal_split_never_raises_and_accounts_for_every_record(records, junk):
    data = b"".join(encode_record(r) for r in records) + junk
    rows, bad = decode_rows(data, WIDTH, device_column=1)
    lines = [line for line in data.split(b"\n") if line.strip()]
    assert len(rows) + len(bad) == len(lines)  # nothing silently dropped
    for r in rows:  # every accepted row is one safe CSV row that parses back to itself
        assert row_problem(r) is None
        assert parse_csv(SENSOR_SCHEMA, format_csv(SENSOR_SCHEMA, [r])) == [r]
    entries = sensor_splitter("col-1")(MINUTE, {SENSOR: data})
    kinds = [kind for _, kind, _ in entries]
    assert kinds == sorted(kinds, key=[SENSOR, DEADLETTER, MANIFEST].index)  # data, dead letters, manifest
    if bad:
        letters = dict((k, d) for k, kind, d in entries if kind == DEADLETTER)[payload_deadletter_key(AT, "col-1")]
        assert len(letters.splitlines()) == len(bad)
        assert all(json.loads(x)["reason"].startswith("internal: ") for x in letters.splitlines())


@BUDGET
@given(st.lists(st.tuples(st.integers(0, 59), safe_name, safe_name, safe_name), min_size=1, max_size=40))
def test_journal_split_lands_all_devices_in_one_writer_file(readings):
    records = [row(ts, dev, metric, "1", f"k={tag}") for ts, dev, metric, tag in readings]
    data = b"".join(encode_record(r) for r in records)
    entries = sensor_splitter("col-1")(MINUTE, {SENSOR: data, TALLY: b"[]\n" * len(records)})
    (key, kind, body), manifest = entries
    assert key == minute_key(SENSOR, AT, "col-1") and kind == SENSOR
    assert sorted(map(tuple, parse_csv(SENSOR_SCHEMA, body))) == sorted(set(map(tuple, records)))  # each identity once
    assert manifest[1] == MANIFEST and json.loads(manifest[2])["received"] == len(records)


def test_a_name_ending_in_newline_is_a_dead_letter_not_another_device():
    # The reproduction: the old CSV journal split this row and read "evil" as a device.
    records = [row(1, "dev-1", "temp\n2023-11-14T22:14:01Z,evil,m,1,"), row(2, "dev-2", "temp")]
    rows, bad = decode_rows(b"".join(encode_record(r) for r in records), WIDTH, device_column=1)
    assert rows == [records[1]]
    assert len(bad) == 1 and "control character" in bad[0][1]
    rows, bad = decode_rows(encode_record(row(1, "dev\n", "m")), WIDTH, device_column=1)
    assert rows == [] and bad[0][1].startswith("internal: ")


# -- spool merge -----------------------------------------------------------------------
@BUDGET
@given(st.lists(st.tuples(st.integers(0, 59), safe_name, safe_name, st.integers(-5, 5)), max_size=40),
       st.lists(st.tuples(st.integers(0, 59), safe_name, safe_name, st.integers(-5, 5)), max_size=40))
def test_spool_merge_never_loses_a_row_identity(tmp_path_factory, first, second):
    landing = FileLanding(tmp_path_factory.mktemp("landing"))
    key = minute_key(SENSOR, AT, "col-1")
    a = [row(ts, d, m, str(v)) for ts, d, m, v in first]
    b = [row(ts, d, m, str(v)) for ts, d, m, v in second]
    merge_into(landing, key, SENSOR, format_csv(SENSOR_SCHEMA, a))
    merge_into(landing, key, SENSOR, format_csv(SENSOR_SCHEMA, b))
    landed = parse_csv(SENSOR_SCHEMA, landing.get(key))
    ident = {(r[0], r[1], r[2], r[4]) for r in a + b}
    assert {(r[0], r[1], r[2], r[4]) for r in landed} == ident  # union by identity
    assert len(landed) == len(ident)  # each once
    merge_into(landing, key, SENSOR, format_csv(SENSOR_SCHEMA, b))
    assert parse_csv(SENSOR_SCHEMA, landing.get(key)) == landed  # landing again changes nothing


@BUDGET
@given(st.binary(max_size=300))
def test_spool_merge_of_any_bytes_lands_or_names_a_bad_entry(tmp_path_factory, data):
    landing = FileLanding(tmp_path_factory.mktemp("landing"))
    try:
        merge_into(landing, minute_key(SENSOR, AT, "col-1"), SENSOR, data)
    except BadEntry as exc:
        assert "cannot be read" in str(exc)


# -- a poisoned journal and bad spool entries at start -----------------------------------
def test_poisoned_closing_journal_and_bad_spool_entries_are_quarantined_at_start(tmp_path):
    state, landing = tmp_path / "state", FileLanding(tmp_path / "landing")
    journal = state / "journal"
    journal.mkdir(parents=True)
    good = [row(5, "dev-1", "temp"), row(6, "dev-2", "temp")]
    # A sealed journal of the old CSV format with a row split by a newline, then good records.
    (journal / f"sensor.{MINUTE}.jrnl.1-0{CLOSING_SUFFIX}").write_bytes(
        b"2023-11-14T22:14:01Z,dev-1,temp\n,1,\n" + b"".join(encode_record(r) for r in good))
    # A sealed file whose name is not a journal name: the splitter never sees it.
    (journal / f"sensor.not-a-minute.jrnl.1-1{CLOSING_SUFFIX}").write_bytes(b"whatever\n")
    spool = Spool(state / "spool")
    spool.add("raw/sensor/x.csv", SENSOR, b"not,the,header\n1,2,3\n")  # data that is not a sensor file
    (state / "spool" / "00000000000000000001-1-000000000.spool").write_bytes(b"{not json\n")  # bad header
    bad_existing = minute_key(SENSOR, AT, "other")
    landing.put(bad_existing, b"garbage that is no CSV header\n")
    spool.add(bad_existing, SENSOR, format_csv(SENSOR_SCHEMA, good))
    store = MinuteStore(state, landing, sensor_splitter("col-1"), retry_initial=0.01, retry_max=0.01)
    assert store.start() == 3  # the data file, the dead letters and the manifest of the poisoned minute
    try:
        assert store.lander.drain()
    finally:
        store.stop(5)
    # The good rows landed; the torn CSV lines are dead letters with their reason.
    assert parse_csv(SENSOR_SCHEMA, landing.get(minute_key(SENSOR, AT, "col-1"))) == good
    letters = [json.loads(x) for x in landing.get(payload_deadletter_key(AT, "col-1")).splitlines()]
    assert len(letters) == 2 and all(x["reason"].startswith("internal: journal line is not a JSON") for x in letters)
    manifest = MinuteManifest.from_json(landing.get(manifest_key(SENSOR, AT, "col-1")))
    assert manifest.rows == {"dev-1": 1, "dev-2": 1} and manifest.deadletters == {"internal": 2}
    # The unreadable journal file and the three bad spool entries are set aside with their reasons.
    reasons = sorted(p.read_text() for p in (journal / "quarantine").glob("*.reason"))
    assert len(reasons) == 1 and "not a journal file name" in reasons[0]
    quarantined = dict(Spool(state / "spool").quarantined())
    assert len(quarantined) == 3, quarantined
    text = " | ".join(quarantined.values())
    assert "header" in text and "not valid" in text and "is not a sensor file" in text
    assert store.spool.depth() == 0 and not list(journal.glob(f"*{CLOSING_SUFFIX}"))


def test_oldest_is_not_a_scan_and_sizes_follow_the_index(tmp_path):
    spool = Spool(tmp_path / "spool")
    for i in range(300):
        spool.add(f"k{i}", SENSOR, b"x" * 10)
    listed = []
    real_listdir = os.listdir
    os.listdir = lambda *a: listed.append(a) or real_listdir(*a)
    try:
        for i in range(300):
            entry = spool.oldest()
            assert entry.key == f"k{i}"
            spool.remove(entry)
    finally:
        os.listdir = real_listdir
    assert listed == [] and spool.depth() == 0 and spool.size() == 0
    fresh = Spool(tmp_path / "spool")  # a new process lists the folder once
    spool.add("a", SENSOR, b"y")
    assert Spool(tmp_path / "spool").size() == spool.size() > 0 and fresh.depth() == 1


def test_manifest_counts_a_tally_once_even_when_landed_twice(tmp_path):
    landing = FileLanding(tmp_path / "landing")
    spool = Spool(tmp_path / "spool")
    rows = [row(1, "dev-1", "m"), row(2, "dev-1", "m"), row(3, "dev-2", "m")]
    for key, kind, data in sensor_splitter("col-1")(MINUTE, {SENSOR: b"".join(map(encode_record, rows)),
                                                            TALLY: b'[]\n["not_json"]\n'}):
        spool.add(key, kind, data)
    entry = spool.entries()[-1]
    assert entry.kind == MANIFEST
    saved = entry.path.read_bytes()
    assert Lander(landing, spool).drain()
    first = MinuteManifest.from_json(landing.get(manifest_key(SENSOR, AT, "col-1")))
    # A crash between the put and the removal lands the same entry again: its tally counts once.
    entry.path.write_bytes(saved)
    assert Lander(landing, Spool(tmp_path / "spool")).drain()
    again = MinuteManifest.from_json(landing.get(manifest_key(SENSOR, AT, "col-1")))
    assert first.rows == again.rows == {"dev-1": 2, "dev-2": 1}
    assert first.received == again.received == 2 and again.deadletters == {"not_json": 1}
    # A later entry of the same minute (a restart, late readings) adds its tally.
    for key, kind, data in sensor_splitter("col-1")(MINUTE, {SENSOR: encode_record(row(4, "dev-3", "m")),
                                                            TALLY: b"[]\n"}):
        spool.add(key, kind, data)
    assert Lander(landing, spool).drain()
    last = MinuteManifest.from_json(landing.get(manifest_key(SENSOR, AT, "col-1")))
    assert last.rows == {"dev-1": 2, "dev-2": 1, "dev-3": 1} and last.received == 3


# -- short writes never leave a torn line -------------------------------------------------
SHORT_WRITE = textwrap.dedent('''
    import os, resource, signal, sys
    from pathlib import Path
    from collectors.journal import Journal
    from collectors.kafka_bridge import encode_record as kafka_record, decode_records
    from include.spool import Spool
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
    folder = Path(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
    results = {}
    for name, record in (("journal", lambda i: b'["%05d","' % i + b"x" * 40 + b'"]\\n'),
                         ("backlog", lambda i: kafka_record("t", b"k", b"v" * 90, []))):
        j = Journal(folder / name, fsync_interval=0)
        sent, error = 0, None
        for i in range(200):
            j.append(name + ".1.jrnl", record(i))
            try:
                j.flush()
                sent = i + 1
            except OSError as exc:
                error = exc.errno
                break
        data = (folder / name / (name + ".1.jrnl")).read_bytes()
        whole = data.count(b"\\n") if name == "journal" else len(list(decode_records(data)))
        results[name] = {"error": error, "flushed": sent, "on_disk": whole, "size": len(data),
                         "torn": (not data.endswith(b"\\n")) if name == "journal" else len(data) % len(record(0)) != 0}
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        j.flush()  # room again: the buffered records follow, whole
        after = (folder / name / (name + ".1.jrnl")).read_bytes()
        results[name]["after"] = after.count(b"\\n") if name == "journal" else len(list(decode_records(after)))
        resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
    spool = Spool(folder / "spool")
    try:
        spool.add("k", "sensor", b"z" * 20000)
        results["spool"] = "written"
    except OSError as exc:
        results["spool"] = sorted(os.listdir(folder / "spool"))
    print(__import__("json").dumps(results))
''')


def test_a_short_write_never_leaves_a_torn_line(tmp_path):
    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(tmp_path)], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), check=True).stdout
    results = json.loads(out)
    for name in ("journal", "backlog"):
        r = results[name]
        assert r["error"] is not None, r  # the kernel refused a write
        assert not r["torn"] and r["on_disk"] == r["flushed"], r  # cut back to whole records
        assert r["after"] == r["flushed"] + 1, r  # the refused record was kept and written once
    assert results["spool"] == [], results  # no half-written entry or temporary file left


def test_row_problem_names_the_field():
    assert row_problem(row(1, "dev", "m")) is None
    assert "control character" in row_problem(row(1, "dev", "m\n"))
    assert "comma" in row_problem(row(1, "dev", "m", tags="a=b,c"))
    assert "surrogate" in row_problem(row(1, "dev", "m\ud800"))
    assert orjson.loads(encode_record(["a\nb"])) == ["a\nb"]  # a record is one line whatever it holds
