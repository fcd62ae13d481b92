"""The HTML and SVG of the Sluice page (the Airflow UI plugin in ``plugins/sluice_ui.py`` serves it).

Pictures, not tables: the reconciliation grid (minutes × sources, one cell
per minute coloured by its verdict, each a link to that minute), the
freshness chart (seconds from a minute's end until it was queryable, per
source, against the SLA line), consumer-lag status per group and partition,
and per minute a bar per hop. The dead letters are a filterable list. All
of it is server-rendered HTML with inline SVG, no script and no external
asset, so it works wherever the api-server does (no Grafana, no Kibana, no
internet). Every element a test or a person looks for carries a ``data-``
attribute or an ``id``. Pure functions of plain dicts; nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from urllib.parse import urlencode

COLOURS = {"green": "#2e9e4f", "amber": "#e6a23c", "red": "#d9423a", "none": "#d5d9de"}
LAG_COLOURS = {"OK": "#2e9e4f", "WARN": "#e6a23c", "REWIND": "#e6a23c", "STALL": "#d9423a", "STOP": "#8f1d17",
               "ERR": "#d9423a"}
SOURCE_COLOURS = ("#3366cc", "#9b59b6", "#16a085", "#e67e22")


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _a(text: object) -> str:
    return escape(str(text), quote=True)


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 24px;color:#1f2937;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.sub{color:#6b7280;font-size:13px}.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
table{border-collapse:collapse;font-size:12px}td,th{padding:3px 8px;border-bottom:1px solid #e5e7eb;text-align:left}
th{background:#f3f4f6}form{margin:6px 0 10px;font-size:13px}select,input,button{font-size:13px;margin-right:8px}
code{font-size:12px;background:#f3f4f6;padding:1px 4px;border-radius:3px}a{color:#2563eb}
.bad{color:#b91c1c}.ok{color:#15803d}
"""


def _document(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_a(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


# --- Pictures ---------------------------------------------------------------------------------


def grid_svg(cells: Mapping[tuple[str, str], Mapping], minutes: Sequence[datetime], sources: Sequence[str],
             link: Callable[[str, datetime], str]) -> str:
    """One row per source, one cell per minute: green, amber, red, or grey (not reconciled yet)."""
    label_w, top, cell_h = 70, 22, 26
    cell_w = max(4, min(18, 1100 // max(len(minutes), 1)))
    width = label_w + cell_w * len(minutes) + 10
    height = top + cell_h * len(sources) + 6
    out = [f"<svg id='reconcile-grid' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"role='img' aria-label='reconciliation per minute and source'>"]
    # Hour and ten-minute ticks, so a cell can be placed in time.
    for i, m in enumerate(minutes):
        if m.minute % 10 == 0:
            x = label_w + i * cell_w
            out.append(f"<line x1='{x}' y1='{top - 4}' x2='{x}' y2='{height - 4}' stroke='#e5e7eb'/>")
            out.append(f"<text x='{x + 1}' y='{top - 8}' font-size='10' fill='#6b7280'>{m:%H:%M}</text>")
    for row, source in enumerate(sources):
        y = top + row * cell_h
        out.append(f"<text x='0' y='{y + cell_h / 2 + 4}' font-size='12'>{_a(source)}</text>")
        for i, m in enumerate(minutes):
            doc = cells.get((source, _iso(m)))
            status = doc.get("status", "none") if doc else "none"
            healed = bool(doc and doc.get("healed"))
            title = doc.get("summary", "") if doc else f"{source} {_iso(m)}: not reconciled"
            if healed:
                title += " (healed)"
            x = label_w + i * cell_w
            rect = (f"<rect class='cell' data-source='{_a(source)}' data-minute='{_iso(m)}' data-status='{status}' "
                    f"data-healed='{str(healed).lower()}' x='{x}' y='{y}' width='{cell_w - 1}' height='{cell_h - 3}' "
                    f"rx='2' fill='{COLOURS.get(status, COLOURS['none'])}'"
                    + (" stroke='#1f2937' stroke-width='1'" if healed else "") + f"><title>{_a(title)}</title></rect>")
            out.append(f"<a href='{_a(link(source, m))}'>{rect}</a>" if doc else rect)
    out.append("</svg>")
    return "".join(out)


def freshness_svg(series: Mapping[str, Sequence[Mapping]], start: datetime, end: datetime, sla_s: float) -> str:
    """Seconds from each minute's end to queryable, per source, a dashed SLA line; breaches as red rings."""
    w, h, left, bottom, top = 900, 240, 48, 28, 12
    values = [d["freshness_s"] for docs in series.values() for d in docs if d.get("freshness_s") is not None]
    y_max = max([sla_s * 2, *values]) * 1.1 if values else sla_s * 2
    span = max((end - start).total_seconds(), 60.0)

    def x(t: datetime) -> float:
        return left + (t - start).total_seconds() / span * (w - left - 10)

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - min(v, y_max) / y_max)

    out = [f"<svg id='freshness-chart' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' "
           f"aria-label='freshness per source'>",
           f"<rect x='{left}' y='{top}' width='{w - left - 10}' height='{h - top - bottom}' fill='#fafafa' stroke='#e5e7eb'/>"]
    for frac in (0, 0.25, 0.5, 0.75, 1):
        v = y_max * frac
        out.append(f"<text x='{left - 6}' y='{y(v) + 4}' font-size='10' text-anchor='end' fill='#6b7280'>{v:.0f}s</text>")
    for frac in (0, 0.25, 0.5, 0.75, 1):
        t = start + (end - start) * frac
        out.append(f"<text x='{x(t)}' y='{h - 10}' font-size='10' text-anchor='middle' fill='#6b7280'>{t:%H:%M}</text>")
    out.append(f"<line id='sla-line' x1='{left}' x2='{w - 10}' y1='{y(sla_s)}' y2='{y(sla_s)}' stroke='#d9423a' "
               f"stroke-dasharray='6 4'/><text x='{w - 14}' y='{y(sla_s) - 4}' font-size='10' text-anchor='end' "
               f"fill='#d9423a'>SLA {sla_s:g} s</text>")
    for n, (source, docs) in enumerate(sorted(series.items())):
        colour = SOURCE_COLOURS[n % len(SOURCE_COLOURS)]
        points = []
        for d in docs:
            t = datetime.fromisoformat(d["@timestamp"].replace("Z", "+00:00"))
            v = d.get("freshness_s")
            shown = y_max if v is None else v  # not queryable yet: pinned to the top
            points.append((x(t), y(shown), d, v))
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            out.append(f"<polyline class='freshness-line' data-source='{_a(source)}' points='{path}' fill='none' "
                       f"stroke='{colour}' stroke-width='1.6'/>")
        for px, py, d, _v in points:
            label = d.get("summary", "")
            if d.get("breach"):
                out.append(f"<circle class='breach' data-source='{_a(source)}' data-minute='{_a(d['@timestamp'])}' "
                           f"cx='{px:.1f}' cy='{py:.1f}' r='4.5' fill='none' stroke='#d9423a' stroke-width='2'>"
                           f"<title>{_a(label)}</title></circle>")
            out.append(f"<circle class='freshness-point' data-source='{_a(source)}' cx='{px:.1f}' cy='{py:.1f}' r='2' "
                       f"fill='{colour}'><title>{_a(label)}</title></circle>")
        out.append(f"<rect x='{left + 10 + n * 90}' y='{top + 6}' width='10' height='10' fill='{colour}'/>"
                   f"<text x='{left + 24 + n * 90}' y='{top + 15}' font-size='11'>{_a(source)}</text>")
    if not values and not any(series.values()):
        out.append(f"<text x='{w / 2}' y='{h / 2}' text-anchor='middle' fill='#6b7280'>no freshness checked yet</text>")
    out.append("</svg>")
    return "".join(out)


def lag_svg(partitions: Sequence[Mapping]) -> str:
    """One tile per (group, topic, partition): colour = status, bar = lag relative to the largest."""
    if not partitions:
        return "<p id='lag-status' class='sub'>no consumer-lag check in the last 10 minutes (is sluice_kafka_lag on?)</p>"
    tile_w, tile_h, per_row = 210, 46, 4
    rows = (len(partitions) + per_row - 1) // per_row
    biggest = max(int(p.get("lag") or 0) for p in partitions) or 1
    out = [f"<svg id='lag-status' xmlns='http://www.w3.org/2000/svg' width='{per_row * tile_w}' "
           f"height='{rows * tile_h + 4}' role='img' aria-label='consumer lag per partition'>"]
    for i, p in enumerate(partitions):
        x, y = (i % per_row) * tile_w, (i // per_row) * tile_h
        status = str(p.get("status", "?"))
        lag = int(p.get("lag") or 0)
        colour = LAG_COLOURS.get(status, "#9ca3af")
        out.append(
            f"<g class='lag-tile' data-group='{_a(p.get('group'))}' data-topic='{_a(p.get('topic'))}' "
            f"data-partition='{_a(p.get('partition'))}' data-status='{_a(status)}'>"
            f"<rect x='{x + 2}' y='{y + 2}' width='{tile_w - 6}' height='{tile_h - 6}' rx='4' fill='{colour}' "
            f"opacity='0.15' stroke='{colour}'/>"
            f"<text x='{x + 8}' y='{y + 17}' font-size='11'>{_a(p.get('group'))}</text>"
            f"<text x='{x + 8}' y='{y + 31}' font-size='10' fill='#374151'>{_a(p.get('topic'))}[{_a(p.get('partition'))}] "
            f"{_a(status)} lag {lag}</text>"
            f"<rect x='{x + 8}' y='{y + 34}' width='{(tile_w - 22) * lag / biggest:.1f}' height='3' fill='{colour}'/>"
            f"<title>{_a(p.get('group'))} {_a(p.get('topic'))}[{_a(p.get('partition'))}]: {_a(status)}, lag {lag}, "
            f"checked {_a(p.get('@timestamp'))}</title></g>")
    out.append("</svg>")
    return "".join(out)


def hops_svg(doc: Mapping) -> str:
    """One bar per hop of one minute; a hop that disagrees is red, one not measured is grey."""
    hops = doc.get("hops") or {}
    failed = doc.get("unmeasured") or {}
    wrong = {m["hop"] for m in doc.get("mismatches") or []}
    biggest = max([v for v in hops.values() if isinstance(v, int)] + [1])
    w, bar_h = 620, 22
    out = [f"<svg id='hops-chart' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{bar_h * len(hops) + 8}' "
           f"role='img' aria-label='count per hop'>"]
    for i, (hop, value) in enumerate(hops.items()):
        y = i * bar_h + 4
        colour = "#9ca3af" if value is None else ("#d9423a" if hop in wrong else "#2e9e4f")
        width = 0 if value is None else (w - 230) * value / biggest
        out.append(f"<g class='hop' data-hop='{_a(hop)}' data-count='{'' if value is None else value}'>"
                   f"<text x='0' y='{y + 15}' font-size='12'>{_a(hop)}</text>"
                   f"<rect x='110' y='{y + 3}' width='{width:.1f}' height='{bar_h - 8}' fill='{colour}'/>"
                   f"<text x='{116 + width:.1f}' y='{y + 15}' font-size='12'>"
                   f"{value if value is not None else ('not measured' if hop in failed else 'not configured')}"
                   f"</text></g>")
    out.append("</svg>")
    return "".join(out)


# --- Pages ------------------------------------------------------------------------------------


def _legend() -> str:
    parts = [("green", "every hop agrees"), ("amber", "a hop not measured"), ("red", "hops disagree"),
             ("none", "not reconciled yet")]
    items = "".join(f"<span><i style='background:{COLOURS[k]}'></i>{text}</span>" for k, text in parts)
    return f"<div class='legend'>{items}<span>outlined: healed</span></div>"


def deadletters_html(entries: Sequence[Mapping], *, devices: Sequence[str], reasons: Sequence[str],
                     device: str, reason: str, hours: float, action: str) -> str:
    def options(values: Sequence[str], chosen: str, everything: str) -> str:
        opts = [f"<option value=''>{everything}</option>"]
        opts += [f"<option value='{_a(v)}'{' selected' if v == chosen else ''}>{_a(v)}</option>" for v in values]
        return "".join(opts)

    form = (f"<form id='deadletter-filter' method='get' action='{_a(action)}'>"
            f"<input type='hidden' name='hours' value='{hours:g}'>"
            f"device <select name='device' id='filter-device'>{options(devices, device, 'every device')}</select>"
            f"reason <select name='reason' id='filter-reason'>{options(reasons, reason, 'every reason')}</select>"
            f"<button type='submit' id='filter-apply'>Filter</button></form>")
    if not entries:
        return form + "<p id='deadletters-empty' class='sub'>no dead letters in this window</p>"
    rows = "".join(
        f"<tr class='deadletter' data-device='{_a(e['device'])}' data-reason='{_a(e['code'])}'>"
        f"<td>{_a(e['minute'])}</td><td>{_a(e['source'])}</td><td>{_a(e['device'])}</td><td><code>{_a(e['code'])}</code></td>"
        f"<td>{_a(e['reason'])}</td><td><code>{_a(e.get('row', ''))}</code></td></tr>"
        for e in entries
    )
    return (form + "<table id='deadletters'><tr><th>minute</th><th>source</th><th>device</th><th>reason</th>"
            f"<th>why</th><th>row</th></tr>{rows}</table>")


def overview_page(*, start: datetime, end: datetime, grid: str, freshness: str, lag: str, deadletters: str,
                  counts: Mapping[str, int], sla_s: float) -> str:
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing reconciled yet"
    body = (
        f"<h1>Sluice — pipeline health</h1><div class='sub'>{_iso(start)} to {_iso(end)} (UTC) · {_a(summary)} · "
        f"<a href='?hours=1'>1 h</a> · <a href='?hours=3'>3 h</a> · <a href='?hours=12'>12 h</a></div>"
        f"<h2>Reconciliation per minute</h2>{_legend()}{grid}"
        f"<h2>Freshness: seconds from a minute's end until queryable in every sink (SLA {sla_s:g} s)</h2>{freshness}"
        f"<h2>Consumer lag per group and partition</h2>{lag}"
        f"<h2>Latest dead letters</h2>{deadletters}"
    )
    return _document("Sluice", body)


def minute_page(source: str, minute: datetime, doc: Mapping | None, *, dag_runs: str, run: str,
                files: Mapping[str, str], back: str) -> str:
    if doc is None:
        verdict = "<p class='sub'>This minute has not been reconciled.</p>"
        chart = ""
    else:
        cls = "bad" if doc.get("status") == "red" else "ok"
        mismatches = "".join(f"<li class='mismatch' data-hop='{_a(m['hop'])}'>{_a(m['text'])}</li>"
                             for m in doc.get("mismatches") or [])
        unmeasured = "".join(f"<li>{_a(k)}: {_a(v)}</li>" for k, v in (doc.get("unmeasured") or {}).items())
        dead = "".join(f"<li>{_a(stage)} <code>{_a(code)}</code>: {n}</li>"
                       for stage, reasons in (doc.get("deadletters") or {}).items() for code, n in reasons.items())
        verdict = (f"<p id='verdict' class='{cls}' data-status='{_a(doc.get('status'))}'>{_a(doc.get('summary'))}"
                   f"{' — healed at ' + _a(doc.get('healed_at')) if doc.get('healed') else ''}</p>"
                   + (f"<ul>{mismatches}</ul>" if mismatches else "")
                   + (f"<p>Not measured:</p><ul>{unmeasured}</ul>" if unmeasured else "")
                   + (f"<p>Dead letters by reason:</p><ul>{dead}</ul>" if dead else "")
                   + f"<p class='sub'>checked {_a(doc.get('checked_at'))}; writers {_a(', '.join(doc.get('writers') or []) or '-')}</p>")
        chart = hops_svg(doc)
    file_links = "".join(f"<li><a class='files' href='{_a(url)}'>{_a(name)}</a></li>" for name, url in files.items())
    body = (f"<p><a href='{_a(back)}'>← Sluice</a></p><h1>{_a(source)} {_iso(minute)}</h1>{verdict}{chart}"
            f"<h2>DAG runs</h2><ul><li><a id='dag-runs' href='{_a(dag_runs)}' target='_top'>runs of sluice_{_a(source)}_minute</a>"
            f"</li><li><a id='dag-run' href='{_a(run)}' target='_top'>the run of this minute</a></li></ul>"
            f"<h2>Files of this minute</h2><ul>{file_links}</ul>")
    return _document(f"Sluice {source} {_iso(minute)}", body)


def listing_page(prefix: str, objects: Sequence[Mapping], *, file_url: Callable[[str], str], back: str) -> str:
    rows = "".join(f"<tr><td><a href='{_a(file_url(o['key']))}'>{_a(o['key'])}</a></td><td>{o['size']}</td>"
                   f"<td><code>{_a(o['etag'])}</code></td></tr>" for o in objects)
    body = (f"<p><a href='{_a(back)}'>← back</a></p><h1><code>{_a(prefix)}</code></h1>"
            + (f"<table id='listing'><tr><th>key</th><th>bytes</th><th>etag</th></tr>{rows}</table>" if objects
               else "<p class='sub'>nothing under this prefix</p>"))
    return _document(prefix, body)


def query(**params: object) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})
