"""A workflow's page draws its graph: a box per step coloured by where it got to, an arrow
from each step to the steps that depend on it, read from the timeline alone and rendered by a
real headless Chromium. A saga's page has no graph."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from test_picture import dom
from test_workflow import echoes, flow

from understudy import Understudy, picture
from understudy.persistence import open_store


def _page(tmp_path: Path, saga_id: str) -> str:
    out = tmp_path / f"{saga_id}.html"
    with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
        assert picture.write_html(store, str(tmp_path / "sagas.db"), saga_id, out) == 0
    return out.as_uri()


def test_a_workflow_page_draws_its_graph_and_where_each_step_got_to(tmp_path: Path) -> None:
    with Understudy.start(tmp_path / "sagas.db", [flow()], echoes(tmp_path)) as us:
        assert us.run("ok", "order-flow", {}).status == "completed"
        assert us.run("no", "order-flow", {"reject": "charge"}).status == "compensated"
    edges = {("create", "reserve"), ("create", "charge"), ("reserve", "ship"), ("charge", "ship")}
    for saga_id, states in (
        ("ok", {"create": "done", "reserve": "done", "charge": "done", "ship": "done"}),
        (
            "no",
            {
                "create": "compensated",
                "reserve": "compensated",
                "charge": "compensated",
                "ship": "not-started",
            },
        ),
    ):
        tags = dom(tmp_path, _page(tmp_path, saga_id))
        graphs = [a for tag, a in tags.found if tag == "svg" and a.get("class") == "graph"]
        assert len(graphs) == 1, saga_id
        nodes = {
            a["data-step"]: a["data-state"]
            for tag, a in tags.found
            if tag == "g" and "node" in a.get("class", "").split()
        }
        assert nodes == states
        drawn = {
            (a["data-from"], a["data-to"])
            for tag, a in tags.found
            if tag == "line" and "data-from" in a
        }
        assert drawn == edges


def test_a_saga_page_has_no_graph(tmp_path: Path) -> None:
    from conftest import order_definition, recorders

    with Understudy.start(tmp_path / "sagas.db", [order_definition()], recorders(tmp_path)) as us:
        assert us.run("s", "order", {}).status == "completed"
    tags = dom(tmp_path, _page(tmp_path, "s"))
    assert not [a for tag, a in tags.found if tag == "svg" and a.get("class") == "graph"]
    assert [a for tag, a in tags.found if tag == "svg" and a.get("class") == "timeline"]
