"""A saga drawn as a swimlane timeline: one self-contained HTML page (inline CSS and SVG, no
script, nothing fetched), what ``understudy show STORE SAGA_ID --html FILE`` writes and
``understudy serve STORE`` shows.

:func:`saga_page` draws one saga from its :class:`~understudy.timeline.Timeline`: a header
(id, definition, status, reason, what it waits on, the work left for a person), the lanes (the
saga's own, then one per participant) with a bar per request and a mark per other event, each
with a tooltip, and a legend. :func:`list_page` lists the store's sagas. Every string that
comes from the store (ids, reasons, details, payloads) is escaped: it is user data.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from understudy import diagnosis, timeline
from understudy.diagnosis import iso
from understudy.graphpicture import draw_graph
from understudy.persistence import redact
from understudy.persistence.base import ALL_STATUSES, SagaStore
from understudy.swimlanes import draw, esc, glyph, printable
from understudy.timeline import Timeline, offset


def saga_url(saga_id: str) -> str:
    """The path of a saga's page on ``understudy serve``."""
    return "/saga/" + quote(saga_id, safe="")


def saga_page(
    store: SagaStore,
    saga_id: str,
    *,
    now: float | None = None,
    home: str | None = None,
    location: str | None = None,
) -> str | None:
    """The page of ``saga_id``, None when ``store`` has no such saga. ``home`` links back to
    a list of sagas; ``location`` (the store, shown redacted) is named at the bottom."""
    now = time.time() if now is None else now
    drawn = timeline.read(store, saga_id, now=now)
    if drawn is None:
        return None
    waits: list[str] = []
    if not drawn.terminal:
        record = store.get(saga_id)
        if record is not None and not record.terminal:
            found = diagnosis.waiting_on(store, record, now=now)
            waits = [diagnosis.describe_stuck(found), *diagnosis.describe(found)]
    body = [
        f'<p class="nav"><a href="{esc(home)}">all sagas</a></p>' if home else "",
        _header(drawn, waits, _family(store, drawn, linked=home is not None)),
        '<section class="picture">',
        draw(drawn),
        "</section>",
        legend(),
        _graph_section(drawn),
        _details(drawn),
        _footer(now, location),
    ]
    return page(f"saga {drawn.saga_id}", "".join(body))


def list_page(
    store: SagaStore,
    *,
    limit: int = 200,
    now: float | None = None,
    link: Callable[[str], str] = saga_url,
    location: str | None = None,
) -> str:
    """Counts by status and the ``limit`` newest sagas, each linking to ``link(saga_id)``;
    an unfinished one says what it waits on."""
    now = time.time() if now is None else now
    counts = store.count_by_status()
    records = store.list_sagas(None, limit)
    waits = {d.saga_id: d for d in diagnosis.diagnose(store, records, now=now)}
    known = [s for s in ALL_STATUSES if s in counts] + sorted(set(counts) - set(ALL_STATUSES))
    badges = " ".join(f'<span class="badge {esc(s)}">{counts[s]} {esc(s)}</span>' for s in known)
    rows = []
    for r in records:
        wait = waits.get(r.saga_id)
        said = "" if wait is None else diagnosis.describe(wait)[0]
        verdict = "" if wait is None else diagnosis.describe_stuck(wait)
        stuck = " stuck" if wait is not None and wait.is_stuck else ""
        rows.append(
            f'<tr class="saga{stuck}" data-saga="{esc(r.saga_id)}">'
            f'<td><a href="{esc(link(r.saga_id))}">{esc(r.saga_id)}</a></td>'
            f'<td><span class="badge {esc(r.status)}">{esc(r.status)}</span></td>'
            f"<td>{esc(r.definition)} v{r.version}</td><td class=at>{esc(iso(r.created_at))}</td>"
            f"<td class=at>{esc(iso(r.updated_at))}</td><td>{r.incarnation}</td>"
            f'<td class="why" title="{esc(said or r.reason or "")}">'
            f"{f'<b>{esc(verdict)}</b> ' if verdict else ''}{esc(said or r.reason or '-')}</td>"
            "</tr>"
        )
    total = sum(counts.values())
    shown = f"the {len(records)} newest" if len(records) < total else "all"
    table = (
        "<table class=sagas><thead><tr><th>id</th><th>status</th><th>definition</th>"
        "<th>created</th><th>updated</th><th>inc</th><th>waits on / reason</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>no sagas</p>"
    )
    body = (
        f"<header><h1>sagas</h1><p class=counts>{total} saga(s): {badges or 'none'}</p>"
        f"<p>{shown}, newest first</p></header>{table}{_footer(now, location)}"
    )
    return page("sagas", body)


def write_html(store: SagaStore, store_location: str, saga_id: str, path: str | Path) -> int:
    """Write the page of ``saga_id`` to ``path``: 0 when written, 1 (saying why on stderr)
    when the store has no such saga or the file cannot be written."""
    where = redact(store_location)  # a URL's password is never shown
    written = saga_page(store, saga_id, location=store_location)
    if written is None:
        print(
            f"understudy: error: no saga with id {saga_id!r} in {where!r}; "
            f"`understudy list {where}` lists the sagas it holds",
            file=sys.stderr,
        )
        return 1
    try:
        Path(path).write_text(written, encoding="utf-8")
    except OSError as exc:
        print(f"understudy: error: cannot write {str(path)!r}: {exc}", file=sys.stderr)
        return 1
    print(f"understudy: wrote the timeline of saga {saga_id!r} to {path}")
    return 0


# --- the page around the drawing ---------------------------------------------------------------


def _family(store: SagaStore, t: Timeline, *, linked: bool) -> str | None:
    """The parent and the child sagas of ``t``'s saga (``Step.child``), each with its status,
    as links to their pages when ``linked``; None for a saga with neither."""
    children = [child for child, _step in t.children]
    if t.parent is None and not children:
        return None
    found = store.get_many([*([t.parent] if t.parent else []), *children])

    def name(other: str) -> str:
        record = found.get(other)
        status = (
            f' <span class="badge {esc(record.status)}">{esc(record.status)}</span>'
            if record
            else ""
        )
        text = f"<code>{esc(other)}</code>"
        return (f'<a href="{esc(saga_url(other))}">{text}</a>' if linked else text) + status

    parts = []
    if t.parent is not None:
        parts.append(f"child saga of {name(t.parent)}")
    if children:
        parts.append(
            "runs child saga"
            + ("s " if len(children) > 1 else " ")
            + ", ".join(map(name, children))
        )
    return "; ".join(parts)


def _header(t: Timeline, waits: Sequence[str], family: str | None = None) -> str:
    rows = [
        ("definition", f"{esc(t.definition)} v{t.version}"),
        ("status", f'<span class="badge {esc(t.status)}">{esc(t.status)}</span>'),
        ("reason", esc(t.reason or "-")),
        (
            "times",
            f"created {esc(iso(t.created_at))}, updated {esc(iso(t.updated_at))} "
            f"({esc(offset(t.updated_at - t.created_at))} later)",
        ),
        (
            "history",
            f"{t.events} events, incarnation {t.incarnation}, {t.retries} retries, "
            f"{esc(diagnosis.describe_restarts(t.restarts))}",
        ),
    ]
    if family:
        rows.append(("family", family))
    if waits:
        lines = "".join(f"<li>{esc(w)}</li>" for w in waits[1:])
        rows.append(("waiting", f"<b>{esc(waits[0])}</b><ul>{lines}</ul>"))
    if t.outstanding:
        items = "".join(f"<li>{esc(o)}</li>" for o in t.outstanding)
        rows.append(("outstanding", f"left for a person to do:<ul>{items}</ul>"))
    if t.notes:
        rows.append(("damaged", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in t.notes) + "</ul>"))
    cells = "".join(f'<dt>{name}</dt><dd class="{name}">{value}</dd>' for name, value in rows)
    title = f"<h1>saga <code>{esc(t.saga_id)}</code></h1>"
    return f'<header class="saga">{title}<dl>{cells}</dl></header>'


def _graph_section(t: Timeline) -> str:
    """A workflow's graph (its steps, their dependencies and where each got to); nothing for a
    saga, whose steps run in the order the lanes show."""
    svg = draw_graph(t)
    if not svg:
        return ""
    return f'<section class="graph"><h2>graph</h2>{svg}</section>'


def _details(t: Timeline) -> str:
    """The payload and the step results, folded: what an operator looks up next."""
    parts = [f"<details><summary>payload</summary><pre>{esc(_json(t.payload))}</pre></details>"]
    if t.results is not None:
        parts.append(
            f"<details><summary>step results</summary><pre>{esc(_json(t.results))}</pre></details>"
        )
    return f'<section class="data">{"".join(parts)}</section>'


def _footer(now: float, location: str | None) -> str:
    where = f" from {esc(redact(location))}" if location else ""
    return f"<footer>read{where} at {esc(iso(now))} by understudy (read-only)</footer>"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=printable)


def page(title: str, body: str) -> str:
    """A whole HTML page: ``body`` under ``title``, with the style every page shares."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} - understudy</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


# --- the legend and the style ----------------------------------------------------------------


#: What the legend explains: (category, event kind, caption); bars are drawn apart.
LEGEND: Final = (
    ("start", "started", "started"),
    ("retry", "retry-scheduled", "retry scheduled"),
    ("timeout", "timeout", "no reply in time"),
    ("failure", "failed", "failed"),
    ("rejection", "rejected", "rejected"),
    ("abort", "aborted", "aborted: compensating"),
    ("restart", "claimed", "restart (new incarnation)"),
    ("crash", "claimed", "recovered after a crash"),
    ("resume", "resumed", "resumed"),
    ("operator", "operator", "operator's action"),
    ("refused", "operator-refused", "operator's action refused"),
    ("held", "held", "held: paused"),
    ("debt", "debt", "compensation owed (debt)"),
    ("settled", "debt-settled", "debt settled"),
    ("skip", "compensation-skipped", "compensation skipped"),
    ("end", "completed", "completed"),
    ("end", "compensated", "compensated"),
    ("end", "failed", "failed: needs a person"),
    ("damaged", "damaged", "damaged event"),
    ("other", "other", "other event"),
)
_BARS: Final = (
    ("do", "done", "a step's request, sent to its answer"),
    ("undo", "compensated", "a compensation's request"),
    ("do", "open", "still out: no answer yet"),
    ("do", "interrupted", "cut short by a restart"),
)


def legend() -> str:
    """What every bar and mark means, each with its own sample."""
    items = []
    for phase, outcome, caption in _BARS:
        sample = (
            f'<svg width="44" height="18" class="bar {phase} outcome-{outcome}">'
            f'<rect class="body" x="2" y="3" width="34" height="12" rx="2"/>'
            + (
                '<path class="arrow" d="M36 3 L42 9 L36 15 Z"/>'
                if outcome == "open"
                else '<rect class="cap" x="33" y="3" width="3" height="12"/>'
            )
            + "</svg>"
        )
        items.append(f"<li>{sample}{esc(caption)}</li>")
    for category, kind, caption in LEGEND:
        sample = (
            f'<svg width="24" height="18" class="mark {category}" data-kind="{kind}">'
            f"{glyph(category, kind, 12, 9)}</svg>"
        )
        items.append(f"<li>{sample}{esc(caption)}</li>")
    return (
        '<section class="legend"><h2>legend</h2><ul>' + "".join(items) + "</ul><p>Time runs "
        "left to right from the saga's start. Events close together are spread apart and long "
        "quiet gaps are cut short (between two slanted lines, under their length), so distances "
        "are not to scale: "
        "hover over a bar or a mark for its exact times and details. A shaded band is the "
        "saga compensating; a dashed line across the lanes, a restart.</p></section>"
    )


CSS: Final = """
:root{--ok:#2e7d32;--bad:#c62828;--warn:#ef6c00;--undo:#7e57c2;--do:#3f6fb5;--muted:#6b7280}
body{font:14px/1.4 "DejaVu Sans","Liberation Sans",system-ui,sans-serif;margin:16px 22px;
color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 6px}h2{font-size:14px;margin:10px 0 4px}
code,pre{font-family:"DejaVu Sans Mono","Liberation Mono",monospace}
a{color:#1554a8}.nav{margin:0 0 6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 14px;margin:0 0 10px}
dt{color:var(--muted)}dd{margin:0}dd ul{margin:0;padding-left:18px}
dd.damaged,dd.outstanding{color:var(--bad)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-weight:bold;
background:var(--muted)}
.badge.completed{background:var(--ok)}.badge.compensated{background:#a15c00}
.badge.failed{background:var(--bad)}.badge.running{background:var(--do)}
.badge.compensating{background:var(--warn)}
.picture{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px}
svg.graph{display:block;font-size:11px}svg.graph .edge{stroke:#57606a;stroke-width:1.3}
.node rect{fill:#eef2f7;stroke:#8b949e}.node text{font-weight:bold}
.node text.state{font-weight:normal;fill:var(--muted)}
.node.st-done rect{fill:#dff3e2;stroke:var(--ok)}
.node.st-compensated rect{fill:#f6e7d2;stroke:#a15c00}
.node.st-failed rect{fill:#fbe0e0;stroke:var(--bad)}
.node.st-running rect{fill:#dde7f6;stroke:var(--do)}
.node.st-compensating rect{fill:#ffe8cc;stroke:var(--warn)}
svg.timeline{display:block;max-width:100%;height:auto;font-size:11px}
svg text{fill:#1f2328}
.lane-bg{fill:#fff}.lane-bg.shaded{fill:#f6f8fa}
.lane-name{font-weight:bold;font-size:12px}.lane-actions{fill:var(--muted);font-size:10px}
.tick{stroke:#e5e7eb}text.tick{fill:var(--muted);stroke:none;text-anchor:middle}
.compensating{fill:#ffe0b2;opacity:.45}
.restart-line,.crash-line{stroke:#1565c0;stroke-dasharray:4 3;stroke-width:1.2}
.crash-line{stroke:var(--bad)}
line.now{stroke:#111;stroke-dasharray:2 3}text.now{text-anchor:middle;font-weight:bold}
.cut rect{fill:#fff;opacity:.85}.cut path{stroke:var(--muted);fill:none}
.cut text{fill:var(--muted);text-anchor:middle;font-size:10px;font-style:italic}
.bar .body{fill:var(--do)}.bar.undo .body{fill:url(#undo-stripes);stroke:var(--undo)}
.bar .cap{fill:var(--ok)}.bar.outcome-failed .cap,.bar.outcome-rejected .cap{fill:var(--bad)}
.bar.outcome-timeout .cap{fill:var(--warn)}
.bar.outcome-interrupted .body,.bar.outcome-unanswered .body{fill:#b0bec5;stroke:none}
.bar.outcome-interrupted .cap,.bar.outcome-unanswered .cap{fill:var(--muted)}
.bar.outcome-open .body{fill:#dbe7f7;stroke:var(--do);stroke-dasharray:4 2}
.bar.undo.outcome-open .body{fill:#ede7f6;stroke:var(--undo)}
.bar .arrow{fill:var(--do)}.bar.undo .arrow{fill:var(--undo)}
.bar-label{font-size:10px;fill:#374151}
.mark text{font-size:11px}.mark text.in{fill:#fff;stroke:none;font-size:9px;
font-weight:bold;text-anchor:middle}
.mark .g{fill:var(--muted);stroke:none}.mark .in{stroke:#fff;stroke-width:1.8;fill:none}
.mark.start .g{fill:var(--ok)}.mark.resume .g{fill:#1565c0}.mark.restart .g{fill:#1565c0}
.mark.crash .g{fill:var(--bad)}.mark.abort .g{fill:var(--warn)}
.mark.end .g{fill:var(--ok)}.mark.end[data-kind=compensated] .g{fill:#a15c00}
.mark.end[data-kind=failed] .g{fill:var(--bad)}
.mark.failure .g{stroke:var(--bad);stroke-width:2.6;fill:none}
.mark.rejection .g{stroke:var(--bad);stroke-width:2;fill:#fff}
.mark.timeout .g{stroke:var(--warn);stroke-width:2;fill:#fff}
.mark.retry .g{stroke:var(--warn);stroke-width:2;fill:none}.mark.retry .head{fill:var(--warn)}
.mark.held .g,.mark.pause .g{fill:#6a1b9a}.mark.suspended .g{fill:var(--muted)}
.mark.operator .g{fill:#6a1b9a}.mark.refused .g{fill:#9e9e9e}
.mark.debt .g{fill:var(--bad)}.mark.settled .g{fill:var(--ok)}
.mark.skip .g{fill:#fff;stroke:var(--muted);stroke-width:1.5}
.mark.damaged .g{fill:#fdd835;stroke:#111}.mark.damaged text.in{fill:#111}
.legend ul{display:flex;flex-wrap:wrap;gap:2px 16px;list-style:none;padding:0;margin:0}
.legend li{display:flex;align-items:center;gap:4px;font-size:12px}
.legend p{color:var(--muted);font-size:12px;margin:6px 0}
table.sagas{border-collapse:collapse;width:100%}
table.sagas th,table.sagas td{text-align:left;padding:3px 8px;border-bottom:1px solid #e5e7eb;
vertical-align:top}
table.sagas td.at{white-space:nowrap}
tr.stuck td.why b{color:var(--bad)}
.data pre{background:#f6f8fa;padding:8px;max-height:300px;overflow:auto}
footer{color:var(--muted);font-size:12px;margin-top:12px}
"""
