"""A workflow's graph drawn as SVG for its timeline page: one box per step, in columns by how
deep it sits in the graph (the steps nothing waits for first), an arrow from each step to the
steps that depend on it, each box coloured by where its step got to (done, compensated,
failed, running, not started), read from the timeline's requests.
"""

from __future__ import annotations

from typing import Final

from understudy.swimlanes import esc
from understudy.timeline import DO, Bar, Timeline

WIDTH: Final = 150
HEIGHT: Final = 34
GAP_X: Final = 56
GAP_Y: Final = 14
MARGIN: Final = 8


def state_of(bars: list[Bar]) -> str:
    """Where a step got to, from its requests in order: the last one says."""
    if not bars:
        return "not-started"
    last = bars[-1]
    if last.phase == DO:
        if last.outcome == "done":
            return "done"
        return "running" if last.outcome is None else "failed"
    if last.outcome == "compensated":
        return "compensated"
    return "compensating" if last.outcome is None else "failed"


def draw_graph(t: Timeline) -> str:
    """The SVG of ``t``'s workflow graph ("" for a saga)."""
    if not t.graph:
        return ""
    names = [name for name, _deps in t.graph]
    deps = {name: [d for d in after if d in names] for name, after in t.graph}
    depth: dict[str, int] = {}

    def depth_of(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            # A cycle cannot be recorded (definitions refuse one); guard anyway.
            ups = [d for d in deps[name] if d not in seen]
            depth[name] = 1 + max((depth_of(d, seen | {name}) for d in ups), default=-1)
        return depth[name]

    columns: dict[int, list[str]] = {}
    for name in names:
        columns.setdefault(depth_of(name), []).append(name)
    where: dict[str, tuple[float, float]] = {}
    for column, members in columns.items():
        for row, name in enumerate(members):
            where[name] = (
                MARGIN + column * (WIDTH + GAP_X),
                MARGIN + row * (HEIGHT + GAP_Y),
            )
    bars: dict[str, list[Bar]] = {name: [] for name in names}
    for bar in sorted(t.bars, key=lambda b: b.start):
        if bar.step_name in bars:
            bars[bar.step_name].append(bar)
        elif 0 <= bar.step < len(names):
            bars[names[bar.step]].append(bar)
    width = MARGIN * 2 + len(columns) * WIDTH + (len(columns) - 1) * GAP_X
    height = MARGIN * 2 + max(len(m) for m in columns.values()) * (HEIGHT + GAP_Y) - GAP_Y
    parts = [
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="workflow graph">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>',
    ]
    for name in names:
        x, y = where[name]
        for dep in deps[name]:
            dx, dy = where[dep]
            parts.append(
                f'<line class="edge" x1="{dx + WIDTH:.0f}" y1="{dy + HEIGHT / 2:.0f}" '
                f'x2="{x:.0f}" y2="{y + HEIGHT / 2:.0f}" marker-end="url(#arrow)" '
                f'data-from="{esc(dep)}" data-to="{esc(name)}"/>'
            )
    for name in names:
        x, y = where[name]
        state = state_of(bars[name])
        parts.append(
            f'<g class="node st-{state}" data-step="{esc(name)}" data-state="{state}">'
            f"<title>{esc(name)}: {state.replace('-', ' ')}"
            f"{' (after ' + esc(', '.join(deps[name])) + ')' if deps[name] else ''}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{WIDTH}" height="{HEIGHT}" rx="5"/>'
            f'<text x="{x + 8:.0f}" y="{y + 14:.0f}">{esc(name[:22])}</text>'
            f'<text class="state" x="{x + 8:.0f}" y="{y + 27:.0f}">'
            f"{state.replace('-', ' ')}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
