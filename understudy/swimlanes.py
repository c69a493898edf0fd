"""The swimlane drawing of a saga's :class:`~understudy.timeline.Timeline`: one inline SVG
element (no script, no fonts or images fetched) that :mod:`understudy.picture` puts in a page.

Time runs left to right. The saga's lane comes first, with its start, restarts, abort,
operators' actions and end as labelled marks; then a lane per participant, with a bar per
request (solid: a step; striped: a compensation; dashed with an arrow: still out) and marks for
its retries, timeouts and failures. Every bar and mark is an SVG group with a ``<title>`` (the
tooltip: kind, step, attempt, time, detail), a CSS class and ``data-kind``, ``data-step``,
``data-lane`` and ``data-attempt`` attributes. Colours live in :data:`CSS`.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any, Final

from understudy import timeline
from understudy.diagnosis import iso
from understudy.timeline import Bar, Lane, Mark, Timeline, offset

WIDTH: Final = 1240  # the drawing's width in CSS pixels (it shrinks with a narrow window)
LEFT: Final = 166  # where time starts: the lane names' column is left of it
RIGHT: Final = WIDTH - 24
AXIS: Final = 50  # the time axis above the lanes
BREAK: Final = 34  # the width of a cut in the time axis
#: The most room an instant between two events gets before time itself is shared out: close
#: events get at least this much (less when there are many: half the width shared evenly).
MIN_GAP: Final = 40
#: A quiet gap is cut when it is longer than this many times everything else drawn: a retry
#: after ten minutes or a reply awaited for an hour, beside steps of milliseconds.
CUT: Final = 20
TRACK: Final = 30  # a row of bars, with their labels under them
ROW: Final = 16  # a row of marks stacked above the bars
CHAR: Final = 6.3  # the width of one character of the drawing's 11 px text, about


def esc(value: object) -> str:
    """``value`` as text safe in HTML and SVG, in element text and in quoted attributes."""
    return escape(str(value), quote=True)


def compact(value: Any) -> str:
    """A detail value on one line: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=printable)


def printable(value: Any) -> str:
    """What JSON cannot hold, printable: bytes as hex, anything else as its repr."""
    return value.hex() if isinstance(value, bytes) else repr(value)


class _Axis:
    """Times to x coordinates, piecewise linear through every time something happened: events
    closer than :data:`MIN_GAP` pixels are spread apart, and a quiet gap longer than :data:`CUT`
    times everything else drawn is cut to :data:`BREAK` pixels, so that a saga of milliseconds that
    waited ten minutes for a retry still shows its milliseconds."""

    def __init__(self, times: Iterable[float], left: float, right: float) -> None:
        knots = sorted({round(at, 6) for at in times})
        if len(knots) == 1:
            knots.append(knots[0] + 0.001)  # a saga of one instant
        gaps = [b - a for a, b in itertools.pairwise(knots)]
        cut: set[int] = set()
        while len(gaps) - len(cut) >= 2 and len(cut) < 8:
            longest, index = max((d, i) for i, d in enumerate(gaps) if i not in cut)
            if longest <= CUT * (sum(d for i, d in enumerate(gaps) if i not in cut) - longest):
                break
            cut.add(index)
        free = right - left - BREAK * len(cut)
        least = min(MIN_GAP, free / max(1, len(gaps) - len(cut)) / 2)
        small: set[int] = set()
        scale = 0.0
        while True:  # gaps drawn narrower than ``least`` get ``least``; the rest share the room
            linear = [i for i in range(len(gaps)) if i not in cut and i not in small]
            total = sum(gaps[i] for i in linear)
            if not linear or total <= 0:
                break
            scale = (free - least * len(small)) / total
            newly = {i for i in linear if gaps[i] * scale < least}
            if not newly:
                break
            small |= newly
        xs = [left]
        for i, gap in enumerate(gaps):
            xs.append(xs[-1] + (BREAK if i in cut else least if i in small else gap * scale))
        self.knots, self.xs = knots, xs
        self.cuts = [(xs[i], xs[i + 1], gaps[i]) for i in sorted(cut)]
        #: The stretches between cuts, as (first knot, last knot) indexes.
        bounds = [0, *(i + 1 for i in sorted(cut))]
        ends = [*(i for i in sorted(cut)), len(knots) - 1]
        self.segments = list(zip(bounds, ends, strict=True))

    def x(self, at: float) -> float:
        knots, xs = self.knots, self.xs
        i = min(max(bisect.bisect_right(knots, at) - 1, 0), len(knots) - 2)
        a, b = knots[i], knots[i + 1]
        fraction = min(max((at - a) / (b - a), 0.0), 1.0)
        return round(xs[i] + (xs[i + 1] - xs[i]) * fraction, 1)


def _pack(spans: Sequence[tuple[float, float]]) -> list[int]:
    """A row for each (start, end) span, the lowest where it overlaps nothing."""
    rows = [0] * len(spans)
    ends: list[float] = []
    for i in sorted(range(len(spans)), key=lambda i: spans[i][0]):
        start, end = spans[i]
        row = next((r for r, taken in enumerate(ends) if start >= taken + 2), len(ends))
        if row == len(ends):
            ends.append(end)
        ends[row] = end
        rows[i] = row
    return rows


def draw(t: Timeline) -> str:
    """The swimlane drawing of ``t``: one inline SVG element."""
    times = [t.start, t.end, *(m.at for m in t.marks)]
    times += [at for bar in t.bars for at in (bar.start, bar.end)]
    axis = _Axis(times, LEFT, RIGHT)
    parts: list[str] = []
    y: float = AXIS
    below = []  # lane backgrounds, then what is drawn across them under the bars and marks
    for index, lane in enumerate(t.lanes):
        drawn, height = _lane(lane, axis, y, t)
        shade = " shaded" if index % 2 else ""
        below.append(
            f'<rect class="lane-bg{shade}" x="0" y="{y}" width="{WIDTH}" height="{height}"/>'
        )
        parts.append(drawn)
        y += height
    height = y + 6
    below.append(_ticks(axis, t, height))
    if t.compensating_from is not None:
        x0 = axis.x(t.compensating_from)
        below.append(
            f'<rect class="compensating" x="{x0}" y="{AXIS}" width="{max(axis.x(t.end) - x0, 2)}"'
            f' height="{y - AXIS}"/>'
        )
    above = []
    for mark in t.marks:
        if mark.category in ("restart", "crash"):
            x = axis.x(mark.at)
            above.append(
                f'<line class="{mark.category}-line" x1="{x}" x2="{x}" y1="{AXIS}" y2="{y}"/>'
            )
    if not t.terminal:
        x = axis.x(t.end)
        above.append(
            f'<line class="now" x1="{x}" x2="{x}" y1="{AXIS - 22}" y2="{y}"/>'
            f'<text class="now" x="{x}" y="{AXIS - 25}">now</text>'
        )
    for (x0, x1, gap), (left, right) in zip(axis.cuts, _cut_labels(axis), strict=True):
        above.append(
            f'<g class="cut"><title>{esc(offset(gap))} with nothing happening, cut short</title>'
            f'<rect x="{x0 + 5}" y="{AXIS - 6}" width="{x1 - x0 - 10}" height="{y - AXIS + 6}"/>'
            f'<path d="M{x0 + 3} {y} L{x0 + 9} {AXIS - 6} M{x1 - 9} {y} L{x1 - 3} {AXIS - 6}"/>'
            f'<text x="{(left + right) / 2}" y="{AXIS - 10}">gap {esc(offset(gap))}</text></g>'
        )
    label = f"timeline of saga {t.saga_id}: {len(t.lanes)} lanes, {t.events} events"
    return (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{esc(label)}">'
        f"{DEFS}{''.join(below)}{''.join(parts)}{''.join(above)}</svg>"
    )


def _cut_labels(axis: _Axis) -> list[tuple[float, float]]:
    """Where each cut's label goes along the axis: centred on it, kept inside the drawing."""
    spans = []
    for x0, x1, gap in axis.cuts:
        half = (len(f"gap {offset(gap)}") * CHAR * 0.9) / 2  # its text is a little smaller
        middle = min(max((x0 + x1) / 2, half + 2), WIDTH - half - 2)
        spans.append((middle - half, middle + half))
    return spans


def _ticks(axis: _Axis, t: Timeline, height: float) -> str:
    """Times since the saga was created along the top, on a "nice" step in each stretch."""
    out, last = [], -math.inf
    cuts = [(left - 12, right + 12) for left, right in _cut_labels(axis)]
    for first, final in axis.segments:
        a, b = axis.knots[first], axis.knots[final]
        width = axis.xs[final] - axis.xs[first]
        raw = (b - a) / max(1.0, width / 110)
        step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
        step = next(s * step for s in (1, 2, 5, 10) if s * step >= raw)
        values = [a - t.start]
        value = math.ceil((a - t.start) / step) * step
        while value <= b - t.start + 1e-9:
            values.append(value)
            value += step
        for value in values:
            x = axis.x(t.start + value)
            if x - last < 70 or any(c0 < x < c1 for c0, c1 in cuts):
                continue
            last = x
            text = "0" if abs(value) < 5e-7 else "+" + offset(value)
            out.append(
                f'<line class="tick" x1="{x}" x2="{x}" y1="{AXIS - 4}" y2="{height - 6}"/>'
                f'<text class="tick" x="{x}" y="{AXIS - 10}">{esc(text)}</text>'
            )
    return "".join(out)


def _lane(lane: Lane, axis: _Axis, top: float, t: Timeline) -> tuple[str, float]:
    """A lane's background, name, bars and marks, from ``top`` down; and its height."""
    marks = lane.marks
    spans: list[tuple[float, float] | None] = [None] * len(marks)
    if lane.is_saga:  # labelled marks, stacked when they would overlap
        spans = []
        for m in marks:
            x, w = axis.x(m.at), len(m.label) * CHAR + 12
            spans.append((x - 8, x + w) if x + w < WIDTH else (x - w, x + 8))
        rows = _pack([span for span in spans if span is not None])
        height = 12 + (max(rows, default=0) + 1) * (ROW + 4)
        centers = [top + 6 + (ROW + 4) * (r + 0.5) for r in rows]
        tracks: list[int] = []
        center = top + height / 2
    else:
        bars = lane.bars
        tracks = _pack([(axis.x(b.start), axis.x(b.end) + 4) for b in bars])
        rows = _pack([(axis.x(m.at) - 7, axis.x(m.at) + 7) for m in marks])
        stacked = max(rows, default=0)
        center = top + 8 + stacked * ROW + TRACK / 2
        centers = [center - r * ROW for r in rows]
        height = 8 + stacked * ROW + (max(tracks, default=0) + 1) * TRACK + 16
    actions = ", ".join(lane.actions)
    name_y = top + height / 2 + (0 if lane.is_saga or not actions else -4)
    out = [
        f'<g class="lane{" saga" if lane.is_saga else ""}" data-lane="{esc(lane.name)}">',
        f'<text class="lane-name" x="10" y="{name_y + 4}"><title>{esc(lane.name)}</title>'
        f"{esc(_cut(lane.name, 22))}</text>",
    ]
    if actions and not lane.is_saga:
        out.append(
            f'<text class="lane-actions" x="10" y="{name_y + 18}"><title>{esc(actions)}</title>'
            f"{esc(_cut(actions, 26))}</text>"
        )
    labels_end: dict[int, float] = {}
    for bar, track in zip(lane.bars if not lane.is_saga else (), tracks, strict=False):
        y = center + track * TRACK
        out.append(_bar(bar, axis, y, t))
        text = f"{bar.action or bar.step_name or bar.step} #{bar.attempt}"
        x = axis.x(bar.start)
        if x >= labels_end.get(track, -math.inf) and x + len(text) * CHAR < WIDTH:
            labels_end[track] = x + len(text) * CHAR + 8
            out.append(f'<text class="bar-label" x="{x}" y="{y + 19}">{esc(text)}</text>')
    for mark, y, span in zip(marks, centers, spans, strict=True):
        out.append(_mark(mark, axis.x(mark.at), y, t, span))
    out.append("</g>")
    return "".join(out), height


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(at: float, t: Timeline) -> str:
    return f"{iso(at, 'milliseconds')} (+{offset(at - t.start)})"


def _attrs(kind: str, step: int | None, lane: str, attempt: int | None) -> str:
    """The attributes every bar and mark carries, for tests and for styling."""
    return (
        f'data-kind="{esc(kind)}" data-step="{"" if step is None else step}" '
        f'data-lane="{esc(lane)}" data-attempt="{"" if attempt is None else attempt}"'
    )


def _bar(bar: Bar, axis: _Axis, y: float, t: Timeline) -> str:
    x0 = axis.x(bar.start)
    x1 = max(axis.x(bar.end), x0 + 4)
    outcome = bar.outcome or "open"
    what = "step" if bar.phase == timeline.DO else "compensation of step"
    lines = [
        f"{bar.kind}: {what} {bar.step}{f' {bar.step_name}' if bar.step_name else ''}, "
        f"attempt {bar.attempt}",
        f"{bar.participant or '?'}.{bar.action or '?'}  key {bar.key or '-'}",
        f"sent {_when(bar.start, t)}, incarnation {bar.incarnation}"
        + (" (sent again after a restart)" if bar.resent else ""),
    ]
    took = offset(bar.end - bar.start)
    if bar.outcome is None:
        lines.append(f"no answer yet: out for {took}")
    elif bar.outcome == timeline.INTERRUPTED:
        lines.append(f"no answer in {took}: a restart ended the incarnation that sent it")
    elif bar.outcome == timeline.UNANSWERED:
        lines.append(f"never answered: the saga ended {took} later")
    else:
        lines.append(f"{bar.outcome} {_when(bar.end, t)}, {took} after it was sent")
    lines += [f"{k}: {compact(v)}" for k, v in bar.answer.items()]
    cap = "" if bar.open else f'<rect class="cap" x="{x1 - 3}" y="{y - 7}" width="3" height="14"/>'
    arrow = (
        f'<path class="arrow" d="M{x1} {y - 7} L{x1 + 7} {y} L{x1} {y + 7} Z"/>' if bar.open else ""
    )
    return (
        f'<g class="bar {bar.phase} outcome-{esc(outcome)}" '
        f"{_attrs(bar.kind, bar.step, bar.lane, bar.attempt)} "
        f'data-outcome="{esc(outcome)}"><title>{esc(chr(10).join(lines))}</title>'
        f'<rect class="body" x="{x0}" y="{y - 7}" width="{x1 - x0}" height="14" rx="2"/>'
        f"{cap}{arrow}</g>"
    )


def _mark(mark: Mark, x: float, y: float, t: Timeline, span: tuple[float, float] | None) -> str:
    step = ""
    if mark.step is not None:
        step = f" step {mark.step}{f' {mark.step_name}' if mark.step_name else ''}"
    attempt = f", attempt {mark.attempt}" if mark.attempt is not None else ""
    lines = [f"{mark.kind}{step}{attempt}", f"{_when(mark.at, t)}, incarnation {mark.incarnation}"]
    lines += [mark.label] + [f"{k}: {compact(v)}" for k, v in mark.detail.items()]
    if mark.damaged:
        lines.append(f"DAMAGED: {mark.damaged}")
    text = ""
    if span is not None:  # the saga's lane writes what happened beside the mark
        leftward = span[0] < x - 8  # near the right edge: the words go before the mark
        anchor = ' text-anchor="end"' if leftward else ""
        where = x - 12 if leftward else x + 12
        text = f'<text x="{where}" y="{y + 4}"{anchor}>{esc(mark.label)}</text>'
    data = _attrs(mark.kind, mark.step, mark.lane, mark.attempt)
    return (
        f'<g class="mark {esc(mark.category)}" {data} data-category="{esc(mark.category)}">'
        f"<title>{esc(chr(10).join(lines))}</title>"
        f"{glyph(mark.category, mark.kind, x, y)}{text}</g>"
    )


def glyph(category: str, kind: str, x: float, y: float) -> str:
    """The shapes of a mark of ``category`` (and event ``kind``) centred on (x, y); colours
    come from the CSS, by class."""

    def path(d: str, cls: str = "g") -> str:
        return f'<path class="{cls}" d="{d}"/>'

    def letter(text: str, dy: float = 4) -> str:
        return f'<text class="in" x="{x}" y="{y + dy}">{text}</text>'

    if category in ("start", "resume"):
        return path(f"M{x - 5} {y - 6} L{x + 6} {y} L{x - 5} {y + 6} Z")
    if category in ("restart", "crash"):
        return path(f"M{x} {y - 7} L{x + 7} {y} L{x} {y + 7} L{x - 7} {y} Z")
    if category == "abort":
        return path(f"M{x + 5} {y - 6} L{x - 6} {y} L{x + 5} {y + 6} Z")
    if category == "end":  # a check, a level line (undone) or a cross, in a disc
        inner = {
            "completed": f"M{x - 3.5} {y} L{x - 1} {y + 3} L{x + 4} {y - 3}",
            "failed": f"M{x - 3} {y - 3} L{x + 3} {y + 3} M{x + 3} {y - 3} L{x - 3} {y + 3}",
        }.get(kind, f"M{x - 3.5} {y} L{x + 3.5} {y}")
        return f'<circle class="g" cx="{x}" cy="{y}" r="7.5"/>' + path(inner, "in")
    if category == "failure":
        return path(f"M{x - 5} {y - 5} L{x + 5} {y + 5} M{x + 5} {y - 5} L{x - 5} {y + 5}")
    if category == "rejection":
        return f'<circle class="g" cx="{x}" cy="{y}" r="6"/>' + path(
            f"M{x - 4} {y + 4} L{x + 4} {y - 4}"
        )
    if category == "timeout":  # a clock
        return f'<circle class="g" cx="{x}" cy="{y}" r="6.5"/>' + path(
            f"M{x} {y - 4} L{x} {y} L{x + 3} {y + 2}"
        )
    if category == "retry":  # a circling arrow
        return path(f"M{x + 5} {y + 2} A5.5 5.5 0 1 1 {x + 1} {y - 5.5}") + path(
            f"M{x - 1} {y - 9} L{x + 4} {y - 5.5} L{x - 1} {y - 2} Z", "head"
        )
    if category in ("held", "pause", "suspended"):  # two upright bars
        return (
            f'<rect class="g" x="{x - 5}" y="{y - 6}" width="3.5" height="12"/>'
            f'<rect class="g" x="{x + 1.5}" y="{y - 6}" width="3.5" height="12"/>'
        )
    if category in ("operator", "refused", "debt", "settled"):
        text = {"operator": "op", "refused": "no"}.get(category, "$")
        return f'<rect class="g" x="{x - 9}" y="{y - 7}" width="18" height="14" rx="3"/>' + letter(
            text, 3.5
        )
    if category == "skip":
        return f'<rect class="g" x="{x - 5}" y="{y - 5}" width="10" height="10"/>'
    if category == "damaged":
        return path(f"M{x} {y - 8} L{x + 8} {y + 6} L{x - 8} {y + 6} Z") + letter("!", 4.5)
    return f'<circle class="g" cx="{x}" cy="{y}" r="5"/>'


#: The stripes of compensation bars.
DEFS: Final = (
    '<defs><pattern id="undo-stripes" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#b39ddb"/>'
    '<rect width="3" height="6" fill="#7e57c2"/></pattern></defs>'
)
