"""Alerting shared by the DAGs: the failure-callback log line, and incidents that alert once.

The callback receives Airflow's context mapping; the incident book decides
what to announce, and the notifiers in ``plugins/sluice_notifiers.py`` send it.
Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import orjson

log = logging.getLogger("sluice.alerts")


def log_failure(context: Mapping[str, Any]) -> None:
    """Log one ERROR line an operator (or a log-based alert rule) can match on."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    log.error(
        "SLUICE ALERT dag=%s task=%s run=%s: %s",
        dag_id,
        task_id,
        context.get("run_id"),
        context.get("exception"),
    )


# --- Incidents: alert once, clear when healed ------------------------------------------------
#
# A check (reconciliation, freshness, lag, heartbeats) reports the problems it sees now
# and the scopes it looked at. An incident opens the first time its key is seen and is
# alerted then; it stays open, silently, while the check keeps seeing it; it is cleared
# (and the clearing announced) the first time a check looks at its scope and no longer
# sees it. The book lives in the landing zone so every run of every DAG shares it.


INCIDENTS_KEY = "state/alerts/incidents.json"
#: Cleared incidents are remembered this long, so a flapping check does not alert again at once.
REMEMBER_CLEARED = timedelta(hours=24)
MISMATCH, SLA, LAG, HEARTBEAT = "mismatch", "sla", "lag", "heartbeat"


@dataclass
class Incident:
    """One problem worth one alert. ``key`` is stable for the problem (``kind:source:minute:hop``)."""

    key: str
    kind: str
    title: str
    text: str
    source: str = ""
    minute: str = ""
    hop: str = ""
    numbers: dict = field(default_factory=dict)
    #: True when the problem is already over as it is found (a minute loaded late): alert, then clear.
    transient: bool = False
    opened_at: str = ""
    cleared_at: str = ""


@dataclass
class Changes:
    opened: list[Incident] = field(default_factory=list)
    cleared: list[Incident] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.opened or self.cleared)


def _now_text(now: datetime) -> str:
    return now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class IncidentBook:
    """Open and recently cleared incidents, as one JSON document in the landing zone."""

    def __init__(self, landing, key: str = INCIDENTS_KEY) -> None:
        self.landing = landing
        self.key = key
        self._pending: tuple[dict[str, Incident], dict[str, Incident]] | None = None

    def load(self) -> tuple[dict[str, Incident], dict[str, Incident]]:
        try:
            data = orjson.loads(self.landing.get(self.key))
        except KeyError:
            return {}, {}
        except orjson.JSONDecodeError as exc:
            # A damaged book loses its memory, not the alerts: every problem alerts again once.
            log.error("%s is not JSON (%s): starting a new incident book", self.key, exc)
            return {}, {}
        return ({k: Incident(**v) for k, v in data.get("open", {}).items()},
                {k: Incident(**v) for k, v in data.get("cleared", {}).items()})

    def save(self, open_: dict[str, Incident], cleared: dict[str, Incident]) -> None:
        body = {"open": {k: asdict(v) for k, v in sorted(open_.items())},
                "cleared": {k: asdict(v) for k, v in sorted(cleared.items())}}
        self.landing.put(self.key, orjson.dumps(body, option=orjson.OPT_INDENT_2), {"kind": "incidents"})

    def observe(self, problems: list[Incident], scopes: list[str], *, now: datetime | None = None) -> Changes:
        """Compare what a check saw (problems now, the key prefixes it looked at) with the book.

        Returns the incidents to announce: newly opened ones, and open ones
        inside ``scopes`` that the check no longer sees (cleared). The book is
        written by :meth:`commit`, after the alert went out, so an alert that
        could not be sent is announced again by the next check.
        """
        now = now or datetime.now(timezone.utc)
        open_, cleared = self.load()
        cutoff = _now_text(now - REMEMBER_CLEARED)
        cleared = {k: v for k, v in cleared.items() if v.cleared_at >= cutoff}
        changes = Changes()
        seen = {p.key: p for p in problems}
        for key, problem in seen.items():
            if key in cleared:
                continue
            if key in open_:
                if problem.transient:  # it was open and is over now (a held minute finally loaded)
                    incident = open_.pop(key)
                    incident.cleared_at = _now_text(now)
                    cleared[key] = incident
                    changes.cleared.append(incident)
                continue
            problem.opened_at = _now_text(now)
            changes.opened.append(problem)
            if problem.transient:
                problem.cleared_at = problem.opened_at
                cleared[key] = problem
            else:
                open_[key] = problem
        for key in list(open_):
            if key not in seen and any(key.startswith(scope) for scope in scopes):
                incident = open_.pop(key)
                incident.cleared_at = _now_text(now)
                cleared[key] = incident
                changes.cleared.append(incident)
        self._pending = (open_, cleared)
        return changes

    def commit(self) -> None:
        """Keep what the last :meth:`observe` found."""
        if self._pending is not None:
            self.save(*self._pending)
            self._pending = None

    def open_incidents(self) -> list[Incident]:
        return list(self.load()[0].values())


def message(changes: Changes) -> tuple[str, str]:
    """``(subject, plain text)`` of one alert about ``changes``."""
    parts = []
    if changes.opened:
        parts.append(f"{len(changes.opened)} new")
    if changes.cleared:
        parts.append(f"{len(changes.cleared)} cleared")
    first = (changes.opened or changes.cleared)[0]
    subject = f"[Sluice] {', '.join(parts)}: {first.title}"
    lines = []
    for incident in changes.opened:
        lines.append(f"OPEN    {incident.title}\n        {incident.text}")
    for incident in changes.cleared:
        lines.append(f"CLEARED {incident.title} (open since {incident.opened_at})")
    return subject, "\n".join(lines) + "\n"


def payload(changes: Changes) -> dict:
    """The JSON body of a webhook alert: subject, text, and each incident with its numbers."""
    subject, text = message(changes)
    return {"subject": subject, "text": text,
            "opened": [asdict(i) for i in changes.opened], "cleared": [asdict(i) for i in changes.cleared]}


# --- What each check sees, as incidents ------------------------------------------------------


def mismatch_incidents(verdicts) -> tuple[list[Incident], list[str]]:
    """One incident per hop of a red minute (:class:`include.reconcile.Verdict`); every checked minute is a scope."""
    problems, scopes = [], []
    for v in verdicts:
        minute = v.minute.strftime("%Y-%m-%dT%H:%MZ")
        scopes.append(f"{MISMATCH}:{v.source}:{minute}:")
        for m in v.mismatches:
            problems.append(Incident(
                key=f"{MISMATCH}:{v.source}:{minute}:{m.hop}", kind=MISMATCH,
                title=f"{v.source} {minute}: {m.hop} {m.difference:+d}",
                text=f"minute {minute}, source {v.source}, hop {m.hop}: {m.describe()}",
                source=v.source, minute=minute, hop=m.hop,
                numbers={"expected": m.expected, "found": m.found, "difference": m.difference},
            ))
    return problems, scopes


def sla_incidents(results) -> tuple[list[Incident], list[str]]:
    """One incident per breached minute (:class:`include.reconcile.Freshness`).

    A minute not queryable yet stays open until it is; one already queryable
    but late is alerted once and closed at once.
    """
    problems, scopes = [], []
    for r in results:
        minute = r.minute.strftime("%Y-%m-%dT%H:%MZ")
        key = f"{SLA}:{r.source}:{minute}"
        scopes.append(key)
        if r.breach:
            problems.append(Incident(
                key=key, kind=SLA, title=f"{r.source} {minute}: freshness SLA {r.sla_s:g} s breached",
                text=f"minute {minute}, source {r.source}, hop sinks: {r.describe()}",
                source=r.source, minute=minute, hop="sinks",
                numbers={"sla_s": r.sla_s, "freshness_s": r.freshness_s},
                transient=r.freshness_s is not None,
            ))
    return problems, scopes


def heartbeat_incidents(heartbeats, now: datetime, *, misses: int) -> tuple[list[Incident], list[str]]:
    """One incident per writer whose heartbeat is older than ``misses`` intervals."""
    problems, scopes = [], []
    for hb in heartbeats:
        key = f"{HEARTBEAT}:{hb.source}:{hb.writer}"
        scopes.append(key)
        if not hb.alive(now, misses=misses):
            age = (now - hb.at).total_seconds()
            problems.append(Incident(
                key=key, kind=HEARTBEAT, title=f"{hb.source} collector {hb.writer} stopped reporting",
                text=(f"source {hb.source}, hop collector: writer {hb.writer} last beat at {_now_text(hb.at)}, "
                      f"{age:.0f} s ago ({misses} beats of {hb.interval_s:g} s missed)"),
                source=hb.source, minute=_now_text(hb.at), hop="collector",
                numbers={"age_s": round(age, 1), "interval_s": hb.interval_s},
            ))
    return problems, scopes


def lag_incidents(partitions: list[dict]) -> tuple[list[Incident], list[str]]:
    """One incident per partition whose newest lag document says STOP or STALL."""
    problems, scopes = [], []
    for p in partitions:
        key = f"{LAG}:{p['group']}:{p['topic']}:{p['partition']}"
        scopes.append(key)
        if p.get("status") in ("STOP", "STALL"):
            problems.append(Incident(
                key=key, kind=LAG, title=f"consumer group {p['group']} {p['status']} on {p['topic']}[{p['partition']}]",
                text=(f"group {p['group']}, topic {p['topic']}, partition {p['partition']}, hop kafka: "
                      f"{p['status']} at {p.get('@timestamp')}, lag {p.get('lag')} (committed {p.get('committed')}, "
                      f"log end {p.get('log_end')})"),
                source=p["topic"], minute=str(p.get("@timestamp", "")), hop="kafka",
                numbers={"lag": p.get("lag"), "committed": p.get("committed"), "log_end": p.get("log_end")},
            ))
    return problems, scopes
