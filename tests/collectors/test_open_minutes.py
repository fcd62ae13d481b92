"""The open minutes in memory close to the same bytes as the journal split, and yield to it when they cannot.

:class:`collectors.mqtt.OpenMinutes` keeps each open minute's rows as CSV lines
beside the journal so a close is a sort and a join. The journal stays the
source of truth, so the two engines must agree: generated messages (repeated
timestamps, redeliveries with other values, readings of two minutes in one
message, rejects and dead letters) go through the handler's own
:func:`collectors.mqtt.journal_message`, and the entries closed from memory
are compared byte for byte with the splitter's entries of the very journal
files that were sealed. The store is the embedded file landing zone (a real
folder).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.journal import CLOSING_SUFFIX, MinuteStore, parse_journal_name
from collectors.mqtt import OpenMinutes, journal_message, sensor_splitter
from include.contract import manifest_key, minute_key, timestamp_text
from include.landing import FileLanding
from include.manifests import MinuteManifest
from include.schemas import SENSOR, SENSOR_SCHEMA
from include.spool import parse_csv

MINUTE = 1_700_000_040  # 2023-11-14T22:14:00Z
BUDGET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
WRITER = "col-1"

# One reading: (millisecond offset into two minutes, device, metric, tag, value).
reading = st.tuples(st.integers(0, 119_999).map(lambda ms: ms - ms % 250), st.sampled_from(["d-1", "d-2", "d-10", "d1"]),
                    st.sampled_from(["mqtt.home.sensor", "m.a", "m"]), st.sampled_from(["", "type=dust", "loc=a type=x"]),
                    st.integers(-3, 3))
message = st.tuples(st.lists(reading, min_size=0, max_size=4), st.lists(st.sampled_from(["bad_value", "bad_json"]),
                                                                         max_size=2))


def journal(store: MinuteStore, minutes: OpenMinutes, messages) -> None:
    """Each message as the handler journals it: rows per minute of their own timestamps, tally in minute 0."""
    for readings, codes in messages:
        by_minute: dict[int, list[list[str]]] = {}
        for ms, device, metric, tags, value in readings:
            epoch = MINUTE + ms / 1000
            row = [timestamp_text(epoch), device, metric, str(value), tags]
            by_minute.setdefault(int(epoch // 60 * 60), []).append(row)
        letter = b'{"reason": "x"}\n' if codes else None
        journal_message(store, minutes, list(by_minute.items()), MINUTE, codes, letter)


def sealed_streams(paths: list[Path]) -> dict[int, dict[str, bytes]]:
    out: dict[int, dict[str, bytes]] = {}
    for path in sorted(paths):
        stream, minute = parse_journal_name(path.name)
        streams = out.setdefault(minute, {})
        streams[stream] = streams.get(stream, b"") + path.read_bytes()
    return out


@BUDGET
@given(st.lists(message, min_size=1, max_size=30))
def test_memory_and_journal_give_the_same_entries(tmp_path_factory, messages):
    state = tmp_path_factory.mktemp("state")
    minutes = OpenMinutes(WRITER)
    store = MinuteStore(state, FileLanding(state / "landing"), sensor_splitter(WRITER), memo=minutes)
    journal(store, minutes, messages)
    names = {}
    for name in store.journal.open_names():
        names.setdefault(parse_journal_name(name)[1], []).append(name)
    split = sensor_splitter(WRITER)
    for minute, minute_names in sorted(names.items()):
        sealed, taken = store.journal.seal_all(minute_names, take=lambda m=minute: minutes.take(m))
        from_journal = split(minute, sealed_streams(sealed)[minute])
        assert minutes.entries(minute, taken) == from_journal
    assert minutes.take(MINUTE) is None and minutes.take(MINUTE + 60) is None  # nothing left behind


def _land(store: MinuteStore) -> None:
    assert store.lander.drain()


def _rows(landing: FileLanding, minute: int) -> list[list[str]]:
    from datetime import datetime, timezone

    return parse_csv(SENSOR_SCHEMA, landing.get(minute_key(SENSOR, datetime.fromtimestamp(minute, timezone.utc), WRITER)))


def _manifest(landing: FileLanding, minute: int) -> MinuteManifest:
    from datetime import datetime, timezone

    return MinuteManifest.from_json(landing.get(manifest_key(SENSOR, datetime.fromtimestamp(minute, timezone.utc), WRITER)))


def test_a_minute_closes_from_memory_and_late_readings_merge(tmp_path):
    landing = FileLanding(tmp_path / "landing")
    minutes = OpenMinutes(WRITER)
    store = MinuteStore(tmp_path / "state", landing, sensor_splitter(WRITER), memo=minutes)
    journal(store, minutes, [([(1000, "d-1", "m", "", 1), (1000, "d-1", "m", "type=x", 2)], [])] * 2)  # a redelivery
    assert store.close_minutes(MINUTE + 60) == 2  # the file and the manifest
    journal(store, minutes, [([(2000, "d-2", "m", "", 3)], ["bad_value"])])  # late, for the closed minute
    store.close_minutes(MINUTE + 60)
    _land(store)
    assert (store.closed_from_memo, store.closed_from_journal) == (2, 0)
    assert [r[1] for r in _rows(landing, MINUTE)] == ["d-1", "d-1", "d-2"]
    manifest = _manifest(landing, MINUTE)
    assert manifest.received == 3 and manifest.deadletters == {"bad_value": 1}
    assert manifest.rows == {"d-1": 2, "d-2": 1}


def test_a_minute_with_older_sealed_files_closes_from_the_journal(tmp_path):
    # A close that failed after sealing (disk full while spooling) leaves .closing files; the
    # memo of the next close holds only the newer records, so the journal must decide.
    landing = FileLanding(tmp_path / "landing")
    minutes = OpenMinutes(WRITER)
    store = MinuteStore(tmp_path / "state", landing, sensor_splitter(WRITER), memo=minutes)
    journal(store, minutes, [([(1000, "d-1", "m", "", 1)], [])])
    sealed, taken = store.journal.seal_all(store.journal.open_names(), take=lambda: minutes.take(MINUTE))
    assert taken is not None and all(p.name.endswith(CLOSING_SUFFIX) for p in sealed)  # as a failed close left it
    journal(store, minutes, [([(2000, "d-2", "m", "", 2)], [])])
    store.close_minutes(MINUTE + 60)
    _land(store)
    assert (store.closed_from_memo, store.closed_from_journal) == (0, 1)
    assert [r[1] for r in _rows(landing, MINUTE)] == ["d-1", "d-2"]
    assert _manifest(landing, MINUTE).received == 2


def test_a_failed_memo_update_costs_time_not_rows(tmp_path):
    landing = FileLanding(tmp_path / "landing")
    minutes = OpenMinutes(WRITER)
    store = MinuteStore(tmp_path / "state", landing, sensor_splitter(WRITER), memo=minutes)
    journal(store, minutes, [([(1000, "d-1", "m", "", 1)], [])])
    # A row the memo cannot take (a field missing): the journal takes it, the memo marks the minute.
    journal_message(store, minutes, [(MINUTE, [["2023-11-14T22:14:03Z", "d-3"]])], MINUTE, [], None)
    store.close_minutes(MINUTE + 60)
    _land(store)
    assert (store.closed_from_memo, store.closed_from_journal) == (0, 1)
    manifest = _manifest(landing, MINUTE)
    assert [r[1] for r in _rows(landing, MINUTE)] == ["d-1"]  # the short record became a dead letter
    assert manifest.received == 2 and manifest.deadletters == {"internal": 1}


def test_a_restart_lands_the_journal_without_a_memo(tmp_path):
    state, landing = tmp_path / "state", FileLanding(tmp_path / "landing")
    minutes = OpenMinutes(WRITER)
    store = MinuteStore(state, landing, sensor_splitter(WRITER), memo=minutes)
    journal(store, minutes, [([(1000, "d-1", "m", "", 1)], [])])
    store.journal.close()  # the process dies here: the journal is on disk, the memo is gone
    again = MinuteStore(state, landing, sensor_splitter(WRITER), memo=OpenMinutes(WRITER))
    again.start()
    again.stop(5)
    assert (again.closed_from_memo, again.closed_from_journal) == (0, 1)
    assert [r[1] for r in _rows(landing, MINUTE)] == ["d-1"]
