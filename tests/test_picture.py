"""The timeline picture: ``understudy show STORE SAGA_ID --html FILE`` and ``understudy serve``
(:mod:`understudy.timeline`, :mod:`understudy.picture`, :mod:`understudy.serve`), and the
examples of docs/timeline.md run as written.

The store is real: sagas run through the real runtime (retried, timed out, compensated, parked,
restarted in their host, recovered after their process was killed with SIGKILL, left waiting
on a participant that never answers), then a few events the runtime writes for operators and
one damaged row. The pages are rendered by a real headless Chromium (Debian's ``chromium``
package, which .ci/run installs): its DOM is checked for the lanes, bars and marks, and its
screenshots are read as PNG, pixel by pixel. Nothing here waits on a clock to pass: every wait
polls for a state with a generous bound.

``UNDERSTUDY_WRITE_DOC_SCREENSHOT=1 python -m pytest tests/test_picture.py -k doc`` writes the
screenshot of the doc's saga to docs/timeline.png.
"""

from __future__ import annotations

import html.parser
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import FAST, order_definition, recorders
from participants import Recorder, Silent
from test_diagnosis import doc_commands

from understudy import RetryPolicy, SagaDefinition, Step, Understudy, picture, timeline
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import Event, Note
from understudy.serve import make_server

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
DOC = ROOT / "docs" / "timeline.md"
SCREENSHOT = ROOT / "docs" / "timeline.png"
CHROMIUM = Path("/usr/bin/chromium")
#: Bound of every wait for a saga to reach a state (a busy two-core machine is slow).
WITHIN = 90.0
NEVER = 600.0
HOSTILE = 'noted <script>alert("id")</script> & co'

#: create (orders), ship (carrier: a reply deadline of 0.5 s, retried), charge (payments).
PARCEL = SagaDefinition(
    "parcel",
    1,
    [
        Step("create", "orders", "create", "cancel", retry=FAST, compensation_retry=FAST),
        Step("ship", "carrier", "ship", "cancel", retry=RetryPolicy(2, 0.05), timeout=0.5),
        Step("charge", "payments", "charge", "refund", retry=FAST, compensation_retry=FAST),
    ],
)
#: create (orders), then ship with a participant that never answers.
WAIT = SagaDefinition(
    "wait",
    1,
    [
        Step("create", "orders", "create", "cancel", retry=FAST),
        Step("ship", "silent", "ship", "cancel", timeout=NEVER),
    ],
)
DEFINITIONS = [order_definition(timeout=5.0), PARCEL, WAIT]


def participants(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        *recorders(tmp_path),
        ("carrier", Recorder, {"database": str(tmp_path / "carrier.db")}),
        ("silent", Silent, {"database": str(tmp_path / "silent.db")}),
    ]


#: An application killed (SIGKILL) while its saga host handles the reply to "crashed"'s second
#: step: the host hangs there (a delay fault, which logs when it fires), and the application
#: kills itself, as the machine dying would.
CRASHING = """
import os, signal, sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from test_picture import DEFINITIONS, participants
from understudy import Understudy
from understudy.failpoints import Fault
log = {log!r}
fault = Fault("host.after_reply", "delay", nth=2, saga_id="crashed", delay=60, log_file=log)
us = Understudy.start({store!r}, DEFINITIONS, participants(Path({tmp!r})), faults=[fault])
us.submit_future("crashed", "order", {{}})  # submit would wait on the hung host
deadline = time.monotonic() + 60
while not os.path.exists(log) and time.monotonic() < deadline:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def wait_for_intent(location: str, saga_id: str, step: int) -> None:
    deadline = time.monotonic() + WITHIN
    with closing(open_store(location, read_only=True)) as store:
        while not any(e.kind == "intent" and e.step == step for e in store.events(saga_id)):
            assert time.monotonic() < deadline, f"{saga_id} never sent step {step}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store of real sagas: ok (a retry), comp (compensated), parked (a compensation
    that keeps failing), mixed (a timeout, a retry, a restart in its host, compensated),
    crashed (recovered after its process was killed), waiting and HOSTILE (waiting on a reply
    that never comes; HOSTILE with operators' events and markup in its id and details) and
    damaged (completed, one event damaged on disk)."""
    tmp = tmp_path_factory.mktemp("picture")
    location = str(tmp / "sagas.db")
    log = str(tmp / "hung")
    script = CRASHING.format(paths=[str(TESTS), str(ROOT)], store=location, tmp=str(tmp), log=log)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=WITHIN)
    assert -signal.SIGKILL == crashed.returncode, crashed.stderr
    faults = [  # each fires once: a reply lost (a timeout), then the saga's handling raises
        Fault(
            "participant.before_reply",
            "drop",
            saga_id="mixed",
            participant="carrier",
            once_file=str(tmp / "dropped"),
        ),
        Fault("host.after_reply", "raise", nth=4, saga_id="mixed", once_file=str(tmp / "raised")),
    ]
    with Understudy.start(location, DEFINITIONS, participants(tmp), faults=faults) as us:
        assert "completed" == us.wait("crashed", timeout=WITHIN).status
        assert "completed" == us.run("ok", "order", {"fail": {"charge": 1}}).status
        assert "compensated" == us.run("comp", "order", {"reject": "charge"}).status
        parked = us.run("parked", "order", {"reject": "charge", "fail": {"cancel": -1}})
        assert "failed" == parked.status
        mixed = us.run("mixed", "parcel", {"fail": {"create": 1}, "reject": "charge"})
        assert "compensated" == mixed.status
        assert "completed" == us.run("damaged", "order", {}).status
        us.submit("waiting", "wait", {})
        us.submit(HOSTILE, "wait", {"note": "<b>bold</b> & </script>"})
        wait_for_intent(location, "waiting", 1)
        wait_for_intent(location, HOSTILE, 1)
    with closing(open_store(location)) as opened:
        record = opened.get(HOSTILE)
        assert record is not None
        at = record.updated_at
        events = (
            Event("operator", at + 1, detail={"verb": "pause", "who": "<i>ann</i>", "why": "a&b"}),
            Event("held", at + 2, 1, 1, {"kind": "do", "paused_by": "<i>ann</i>"}),
            Event("debt", at + 3, 0, 1, {"participant": "orders", "compensation": "cancel"}),
            Event("debt-settled", at + 4, 0, None, {"who": "bob", "note": "by hand"}),
            Event("operator-refused", at + 5, detail={"verb": "skip", "who": "eve"}),
            Event("from-the-future", at + 6, detail={"what": "<svg onload=alert(1)>"}),
        )
        assert [True] == opened.note([Note(HOSTILE, record.incarnation, events)])
    with closing(sqlite3.connect(location)) as db:  # a damaged disk: the first answer's checksum
        db.execute(
            "UPDATE understudy_events SET detail_sum = detail_sum + 1 WHERE seq = (SELECT MIN(seq)"
            " FROM understudy_events WHERE saga_id = 'damaged' AND kind = 'done')"
        )
        db.commit()
    return location


def read(location: str, saga_id: str, now: float | None = None) -> timeline.Timeline:
    with closing(open_store(location, read_only=True)) as opened:
        found = timeline.read(opened, saga_id, now=now)
    assert found is not None, saga_id
    return found


def bars(t: timeline.Timeline, lane: str) -> list[tuple[str | None, int | None, str | None]]:
    return [(b.action, b.attempt, b.outcome) for b in t.lane(lane).bars]


def marks(t: timeline.Timeline, lane: str) -> list[tuple[str, str]]:
    return [(m.kind, m.category) for m in t.lane(lane).marks]


# --- the model -------------------------------------------------------------------------------


def test_a_completed_saga_has_a_lane_per_participant_and_its_retry_marked(store: str) -> None:
    t = read(store, "ok")
    assert ("ok", "order", 1, "completed", True) == (
        t.saga_id,
        t.definition,
        t.version,
        t.status,
        t.terminal,
    )
    assert ["saga", "orders", "inventory", "payments"] == [lane.name for lane in t.lanes]
    assert ("charge",) == t.lane("payments").actions
    assert [("charge", 1, "failed"), ("charge", 2, "done")] == bars(t, "payments")
    assert [("failed", "failure"), ("retry-scheduled", "retry")] == marks(t, "payments")
    retry = t.lane("payments").marks[1]
    assert (2, "charge", 2) == (retry.step, retry.step_name, retry.attempt)
    assert [("started", "start"), ("completed", "end")] == marks(t, "saga")
    assert not any(b.open for b in t.bars) and (1, 0) == (t.retries, t.restarts.count)
    assert t.start == t.created_at and t.end >= max(b.end for b in t.bars)
    assert all(b.start <= b.end and b.phase == "do" for b in t.bars)


def test_a_timeout_a_restart_and_compensations_are_bars_and_marks(store: str) -> None:
    t = read(store, "mixed")
    assert ["saga", "orders", "carrier", "payments"] == [lane.name for lane in t.lanes]
    assert [("ship", 1, "timeout"), ("ship", 2, "done"), ("cancel", 1, "compensated")] == bars(
        t, "carrier"
    )
    assert ["do", "do", "undo"] == [b.phase for b in t.lane("carrier").bars]
    assert [("timeout", "timeout"), ("retry-scheduled", "retry")] == marks(t, "carrier")
    # The charge out when the saga restarted is cut short; the restart sends it again.
    first, again, refund = t.lane("payments").bars
    assert (timeline.INTERRUPTED, False, 1) == (first.outcome, first.resent, first.incarnation)
    assert ("rejected", True, 2) == (again.outcome, again.resent, again.incarnation)
    assert ("undo", "refund", "compensated") == (refund.phase, refund.action, refund.outcome)
    saga = [kind for kind, _category in marks(t, "saga")]
    assert ["started", "claimed", "resumed", "aborted", "compensated"] == saga
    claimed = next(m for m in t.lane("saga").marks if m.kind == "claimed")
    assert ("restart", 2, False) == (
        claimed.category,
        claimed.incarnation,
        claimed.detail["recovery"],
    )
    assert first.end == claimed.at
    assert t.compensating_from is not None and t.compensating_from <= refund.start
    assert (1, 2) == (t.restarts.count, t.retries)


def test_a_crash_is_marked_recovered_and_its_request_sent_again(store: str) -> None:
    t = read(store, "crashed")
    crash = [m for m in t.lane("saga").marks if m.category == "crash"]
    assert 1 == len(crash) and crash[0].detail["recovery"] is True
    assert "recovered after a crash" in crash[0].label
    assert "resumed" in [m.kind for m in t.lane("saga").marks]
    assert (1, 1) == (t.restarts.count, t.restarts.recoveries)
    assert "completed" == t.status
    # The reserve's reply was being handled when the process died: it is sent again.
    assert [("reserve", 1, timeline.INTERRUPTED), ("reserve", 1, "done")] == bars(t, "inventory")
    assert [False, True] == [b.resent for b in t.lane("inventory").bars]
    assert t.lane("inventory").bars[0].end == crash[0].at


def test_a_parked_saga_lists_its_outstanding_work(store: str) -> None:
    t = read(store, "parked")
    assert "failed" == t.status and t.outstanding
    assert any("cancel" in item for item in t.outstanding)
    cancels = [b for b in t.lane("orders").bars if b.phase == "undo"]
    assert ["failed", "failed", "failed"] == [b.outcome for b in cancels]
    assert [1, 2, 3] == [b.attempt for b in cancels]
    assert ("failed", "end") == marks(t, "saga")[-1]


def test_an_unfinished_request_is_an_open_bar_to_now(store: str) -> None:
    now = time.time() + 30
    t = read(store, "waiting", now=now)
    assert not t.terminal and now == t.end == t.now
    (bar,) = t.lane("silent").bars
    assert bar.open and bar.outcome is None and bar.end == now
    assert ("ship", 1, "do", "silent") == (bar.action, bar.attempt, bar.phase, bar.participant)


def test_operators_debt_and_unknown_kinds_are_marks_that_never_fail(store: str) -> None:
    t = read(store, HOSTILE)
    saga = marks(t, "saga")
    assert ("operator", "operator") in saga and ("operator-refused", "refused") in saga
    assert ("from-the-future", "other") == saga[-1]
    operator = next(m for m in t.lane("saga").marks if m.kind == "operator")
    assert "pause by <i>ann</i>" == operator.label
    assert [("held", "held")] == marks(t, "silent")  # the step it held back goes to silent
    assert [("debt", "debt"), ("debt-settled", "settled")] == marks(t, "orders")
    assert t.lane("silent").bars[0].open  # a pause held the send: the request is still out


def test_a_damaged_event_is_drawn_as_damaged(store: str) -> None:
    t = read(store, "damaged")
    (damaged,) = [m for m in t.marks if m.category == "damaged"]
    assert ("done", "orders", 0) == (damaged.kind, damaged.lane, damaged.step)
    assert damaged.damaged is not None and "checksum" in damaged.damaged
    assert any("checksum" in note for note in t.notes)
    create = t.lane("orders").bars[0]  # its answer is unreadable: never answered, as drawn
    assert timeline.UNANSWERED == create.outcome
    page = page_of(store, "damaged")
    assert 'class="mark damaged"' in page and "checksum" in page


def test_an_unknown_saga_has_no_timeline(store: str) -> None:
    with closing(open_store(store, read_only=True)) as opened:
        assert timeline.read(opened, "no-such-saga") is None
        assert picture.saga_page(opened, "no-such-saga") is None


def page_of(location: str, saga_id: str, **options: Any) -> str:
    with closing(open_store(location, read_only=True)) as opened:
        page = picture.saga_page(opened, saga_id, **options)
    assert page is not None
    return page


def test_every_string_from_the_store_is_escaped(store: str) -> None:
    """The id, the details, the payload and the operator's name are user data: none reaches
    the page as markup."""
    page = page_of(store, HOSTILE)
    with closing(open_store(store, read_only=True)) as opened:
        listing = picture.list_page(opened)
    for text in (page, listing):
        assert "<script" not in text and "<i>" not in text and "<svg onload" not in text
        assert "noted &lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt; &amp; co" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;/script&gt;" in page  # the payload
    assert "pause by &lt;i&gt;ann&lt;/i&gt;" in page
    assert "&lt;svg onload=alert(1)&gt;" in page
    tags = Tags()
    tags.feed(page)
    assert {"html", "head", "style", "body", "svg", "g", "title"} <= {tag for tag, _ in tags.found}
    assert not {"script", "img", "link", "iframe", "i", "object"} & {tag for tag, _ in tags.found}
    assert f"/saga/{quote(HOSTILE, safe='')}" in listing


def test_every_bar_and_mark_carries_its_kind_step_lane_and_a_tooltip(store: str) -> None:
    tags = Tags()
    tags.feed(page_of(store, "mixed"))
    drawn = tags.drawn()
    assert drawn and all(
        {"data-kind", "data-step", "data-lane", "data-attempt"} <= set(a) for a in drawn
    )
    assert tags.titles == len(drawn)  # a tooltip each
    bar = next(a for a in drawn if a.get("data-outcome") == "timeout")
    assert ("intent", "1", "carrier", "1") == (
        bar["data-kind"],
        bar["data-step"],
        bar["data-lane"],
        bar["data-attempt"],
    )
    assert "bar do outcome-timeout" == bar["class"]


# --- the command -----------------------------------------------------------------------------


def understudy(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``understudy ARGV`` as a user runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "understudy.cli", *argv],
        capture_output=True,
        text=True,
        env=env(),
        cwd=cwd,
        timeout=WITHIN,
    )


def test_show_html_writes_the_page_and_an_unknown_id_is_status_1(
    store: str, tmp_path: Path
) -> None:
    out = tmp_path / "mixed.html"
    done = understudy("show", store, "mixed", "--html", str(out))
    assert (0, "") == (done.returncode, done.stderr)
    assert f"understudy: wrote the timeline of saga 'mixed' to {out}\n" == done.stdout
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>saga <code>mixed</code></h1>" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    missing = tmp_path / "missing.html"
    done = understudy("show", store, "no-such-saga", "--html", str(missing))
    assert (1, "") == (done.returncode, done.stdout)
    assert "understudy: error: no saga with id 'no-such-saga' in " in done.stderr
    assert "understudy list" in done.stderr and not missing.exists()


# --- Chromium --------------------------------------------------------------------------------


def chromium(tmp_path: Path, *argv: str) -> str:
    """Run Debian's Chromium headless with a fresh profile; its standard output."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install "
            "chromium), as .ci/run does; the picture is checked in a real browser"
        )
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=WITHIN,
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert 0 == done.returncode, done.stderr[-2000:]
    return done.stdout


class Tags(html.parser.HTMLParser):
    """Every start tag of a page with its attributes, and how many ``<title>`` there are
    inside bars and marks."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.titles = 0
        self.inside: list[bool] = []

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attributes}
        self.found.append((tag, values))
        if tag == "title" and self.inside and self.inside[-1]:
            self.titles += 1
        if tag == "g":
            self.inside.append("data-kind" in values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self.inside:
            self.inside.pop()

    def drawn(self) -> list[dict[str, str]]:
        """The bars and marks: groups with a data-kind."""
        return [a for tag, a in self.found if tag == "g" and "data-kind" in a]

    def lanes(self) -> list[str]:
        return [
            a["data-lane"]
            for tag, a in self.found
            if tag == "g" and "lane" in a.get("class", "").split()
        ]


def dom(tmp_path: Path, url: str) -> Tags:
    tags = Tags()
    tags.feed(chromium(tmp_path, "--dump-dom", url))
    return tags


def png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and unfiltered rows of an 8-bit RGB(A) PNG, every
    chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, color, _compression, _filter, interlace = header
    assert (8, 0) == (depth, interlace) and color in (2, 6), header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prior = [], bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride) if kind else ():
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prior[i], (prior[i - bpp] if i >= bpp else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 255
            else:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (
                    line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)
                ) & 255
        rows.append(bytes(line))
        prior = line
    return width, height, bpp, rows


def check_screenshot(path: Path) -> None:
    """A real picture of a timeline: a valid 1400x900 PNG, not of one colour, with the blue of
    the forward bars and the violet of the compensation bars in it."""
    width, height, bpp, rows = png_rows(path.read_bytes())
    assert (1400, 900) == (width, height)
    colours: dict[tuple[int, ...], int] = {}
    for row in rows:
        for x in range(0, width * bpp, bpp):
            pixel = tuple(row[x : x + 3])
            colours[pixel] = colours.get(pixel, 0) + 1
    background = max(colours.values())
    assert background < 0.97 * width * height, "the screenshot is blank"
    assert len(colours) > 50, "too few colours for text and a drawing"
    assert colours.get((0x3F, 0x6F, 0xB5), 0) > 200, "no forward bar drawn"
    assert colours.get((0x7E, 0x57, 0xC2), 0) > 20, "no compensation bar drawn"


def test_the_written_page_renders_in_chromium(store: str, tmp_path: Path) -> None:
    out = tmp_path / "mixed.html"
    assert 0 == understudy("show", store, "mixed", "--html", str(out)).returncode
    tags = dom(tmp_path, out.as_uri())
    assert ["saga", "orders", "carrier", "payments"] == tags.lanes()
    drawn = tags.drawn()
    kinds = {(a["data-kind"], a["data-lane"]) for a in drawn}
    assert {
        ("intent", "carrier"),
        ("compensation-intent", "carrier"),
        ("timeout", "carrier"),
    } <= kinds
    assert {("retry-scheduled", "orders"), ("claimed", "saga"), ("compensated", "saga")} <= kinds
    assert any(tag == "h1" for tag, _ in tags.found)
    assert {"definition", "status", "reason"} <= {
        a.get("class") for tag, a in tags.found if tag == "dd"
    }
    shot = tmp_path / "mixed.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", out.as_uri())
    check_screenshot(shot)


@pytest.fixture
def server(store: str) -> Iterator[str]:
    """The pages of ``store`` served on loopback, on a free port; their base URL."""
    served = make_server(store, port=0)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = served.server_address[:2]
        assert "127.0.0.1" == host
        yield f"http://127.0.0.1:{port}"
    finally:
        served.shutdown()
        served.server_close()
        thread.join(WITHIN)


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=WITHIN) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_served_pages_render_in_chromium_and_link_to_each_other(
    server: str, tmp_path: Path
) -> None:
    listing = dom(tmp_path, server + "/")
    links = [a["href"] for tag, a in listing.found if tag == "a"]
    sagas = [HOSTILE, "waiting", "damaged", "mixed", "parked", "comp", "ok", "crashed"]
    assert [f"/saga/{quote(s, safe='')}" for s in sagas] == links  # newest first
    rows = [a for tag, a in listing.found if tag == "tr" and "data-saga" in a]
    assert {"saga stuck"} == {a["class"] for a in rows if a["data-saga"] in ("waiting", HOSTILE)}
    page = dom(tmp_path, server + links[0])
    assert ["saga", "orders", "silent"] == page.lanes()
    kinds = {a["data-kind"] for a in page.drawn()}
    assert {"operator", "held", "debt", "from-the-future", "intent"} <= kinds
    assert any(a.get("data-outcome") == "open" for a in page.drawn())
    assert "/" == next(a["href"] for tag, a in page.found if tag == "a")  # back to the list


def test_the_server_answers_only_what_it_should(server: str, store: str) -> None:
    assert 200 == fetch(server + "/saga/ok")[0]
    status, page = fetch(server + "/saga/no-such-saga")
    assert 404 == status and "no saga with id &#x27;no-such-saga&#x27;" in page
    assert 404 == fetch(server + "/favicon.ico")[0]
    assert (405, 405) == (fetch(server + "/", "POST")[0], fetch(server + "/saga/ok", "DELETE")[0])
    assert (200, "") == fetch(server + "/", "HEAD")
    # A page of another site reaching this port (DNS rebinding) names its own host: refused.
    assert 421 == fetch(server + "/", headers={"Host": "attacker.example:80"})[0]
    assert 200 == fetch(server + "/", headers={"Host": "localhost"})[0]


def test_a_store_that_cannot_be_read_is_a_500_page_without_its_password(tmp_path: Path) -> None:
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("this is not SQLite\n" * 200)
    for location, named in (
        (str(not_a_store), str(not_a_store)),
        ("postgresql://ann:s3cret-pw@127.0.0.1:1/sagas", "127.0.0.1"),
    ):
        served = make_server(location, port=0)
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        try:
            status, page = fetch(f"http://127.0.0.1:{served.server_address[1]}/")
        finally:
            served.shutdown()
            served.server_close()
            thread.join(WITHIN)
        assert 500 == status and named in page and "s3cret-pw" not in page


def start_serving(store: str, *options: str, cwd: Path = ROOT) -> tuple[subprocess.Popen[str], str]:
    """``understudy serve STORE OPTIONS --port 0`` in a process of its own; and the line it
    prints first, saying where it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "understudy.cli", "serve", store, *options, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=cwd,
    )
    assert process.stdout is not None
    return process, process.stdout.readline()


def url_in(line: str) -> str:
    found = re.search(r" on (http://\S+/) \(Ctrl-C stops\)$", line.strip())
    assert found is not None, line
    return found.group(1)


def stop(process: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send ``signum`` to ``process``; what it printed on stdout and stderr after."""
    try:
        process.send_signal(signum)
        return process.communicate(timeout=WITHIN)
    finally:
        process.kill()
        process.communicate()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_and_warns_off_loopback(store: str, signum: int) -> None:
    """On loopback it says where it serves, and nothing else; on every address it warns
    that anyone who can reach the port reads every saga. Ctrl-C and SIGTERM stop it: 0."""
    host = "127.0.0.1" if signum == signal.SIGINT else "0.0.0.0"
    process, line = start_serving(store, "--host", host)
    url = url_in(line)
    assert url.startswith(f"http://{host}:")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    assert 200 == fetch(f"http://127.0.0.1:{port}/")[0]
    out, err = stop(process, signum)
    assert 0 == process.returncode
    assert "understudy: stopped serving\n" == out
    if host == "127.0.0.1":
        assert "" == err  # requests go to the log, not to stderr
    else:
        assert "warning: listening on 0.0.0.0, not on loopback" in err
        assert "can read every saga's payloads and results" in err


def test_the_default_server_cannot_be_reached_from_another_address(store: str) -> None:
    served = make_server(store)
    try:
        assert "127.0.0.1" == served.server_address[0]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks a route
            own = probe.getsockname()[0]
        except OSError:
            own = "127.0.0.1"
        finally:
            probe.close()
        if not own.startswith("127."):
            with (
                pytest.raises(OSError),
                socket.create_connection((own, served.server_address[1]), 5),
            ):
                pass
    finally:
        served.server_close()


# --- docs/timeline.md ------------------------------------------------------------------------


def doc_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_timeline_doc_runs_as_written(tmp_path: Path) -> None:
    """Every file of docs/timeline.md saved as shown and every command run in order in an
    empty directory, as a user would (``understudy`` is ``python -m understudy.cli``), prints
    what the doc shows. ``understudy serve`` runs on a free port instead of 8765, is asked for
    its list and stopped. The page it wrote renders in Chromium as the doc's screenshot."""
    commands = 0
    for language, text in doc_blocks():
        if language == "python":
            first, _, code = text.partition("\n")
            (tmp_path / first.removeprefix("# ").strip()).write_text(code)
            continue
        for command, output in doc_commands(text):
            commands += 1
            argv = shlex.split(command)
            if argv[:2] == ["understudy", "serve"]:
                process, line = start_serving(*argv[2:], cwd=tmp_path)
                assert 200 == fetch(url_in(line))[0]
                assert ("understudy: stopped serving\n", "") == stop(process, signal.SIGINT)
                printed = [re.sub(r":\d+/", ":8765/", line.strip())]
            elif argv[0] == "understudy":
                printed = understudy(*argv[1:], cwd=tmp_path).stdout.splitlines()
            else:
                assert "python" == argv[0], command
                done = subprocess.run(
                    [sys.executable, *argv[1:]],
                    cwd=tmp_path,
                    env=env(),
                    capture_output=True,
                    text=True,
                    timeout=WITHIN,
                )
                printed = done.stdout.splitlines()
            assert output == printed, command
    assert sum(line.startswith("$ ") for line in DOC.read_text().splitlines()) == commands
    assert 5 == commands and 4 == sum(language == "python" for language, _ in doc_blocks())
    shot = tmp_path / "timeline.png"
    page = (tmp_path / "order-7.html").as_uri()
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", page)
    check_screenshot(shot)
    if os.environ.get("UNDERSTUDY_WRITE_DOC_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


def test_the_doc_screenshot_is_a_real_picture_small_enough_to_commit() -> None:
    assert SCREENSHOT.stat().st_size < 200_000
    check_screenshot(SCREENSHOT)
    assert "](timeline.png)" in DOC.read_text()
