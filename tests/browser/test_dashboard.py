"""The dashboard as a person uses it, in headless Chromium against the real service, one
view a test: the key the page asks for, the new-run form (a bad value first: the server's
422 shows by its field), a run's live chart and its end, a sample streamed into the page, a
cancel, a diverging run, the compare chart and the runs list. Each test makes the runs it
needs and opens its own page; the service and the browser are shared by the module.
No console error and no uncaught exception in any page: the page asks for the key before it
needs one and checks the form with POST /config/validate, so no request here is refused
(Chromium would log each refused fetch as a console error)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.harness import TINY, Stack, wait_for

# TINY as the form's fields take it (the dataset and compile are chosen, not typed): a model
# that trains at ~100 iterations a second on one CPU thread.
SMALL = {k: str(v) for k, v in TINY.items() if k not in ("dataset", "compile")} | {"warmup_iters": "10", "dropout": "0"}
LONG = {"max_iters": "1500", "lr_decay_iters": "1500", "eval_interval": "500"}
RUN_URL = re.compile(r"#/runs/[0-9a-f]+$")


@pytest.fixture(scope="module", autouse=True)
def trained_run(site: Stack) -> str:
    """A run like the form's, queued as the module starts: it trains while the first tests
    need no worker. `finished` waits for its end."""
    config = {"warmup_iters": 10, "dropout": 0.0, "max_iters": 1500, "lr_decay_iters": 1500, "eval_interval": 500}
    return site.submit(config, name="trained")["id"]


@pytest.fixture
def finished(site: Stack, trained_run: str) -> str:
    done = site.wait_status(trained_run, {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", (done, site.log_tail("train"))
    return trained_run


def open_page(browser: Any, key: str | None) -> Any:
    """A page in a fresh browser context (with key already in localStorage, as after a first
    visit); page.problems collects console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if key:
        context.add_init_script(f"localStorage.setItem('gptjobs.apiKey', {json.dumps(key)})")
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    problems: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        problems.append(f"console error: {msg.text} ({(msg.location or {}).get('url', '')})")

    pg.on("console", on_console)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.problems = problems
    return pg


@pytest.fixture
def page(browser: Any, site: Stack) -> Iterator[Any]:
    """A page that holds the site's key."""
    pg = open_page(browser, site.key)
    yield pg
    pg.context.close()


def view(page: Any, attr: str) -> str | None:
    return page.get_attribute("#view", f"data-{attr}")


def points(page: Any) -> int:
    return int(view(page, "points") or 0)


def fill_form(page: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        page.fill(f"#field-{key}", value)


def create_from_form(page: Any) -> str:
    """Submit the form; the page moves to the new run's. Returns its id."""
    page.click("#create-run")
    page.wait_for_url(RUN_URL)
    return str(page.url.rsplit("/", 1)[1])


def new_run_form(page: Any, site: Stack) -> None:
    page.goto(site.url + "/#/new")
    page.wait_for_selector("#field-n_layer")


def test_page_and_defaults_need_no_key(site: Stack) -> None:
    bare = httpx.Client(base_url=site.url, timeout=30)
    index = bare.get("/")
    assert index.status_code == 200 and '<script type="module" src="/static/app.js">' in index.text
    for path in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.esm.js"):
        assert bare.get(path).status_code == 200, path
    assert bare.get("/runs").status_code == 401  # the data does need one
    spec = bare.get("/config/defaults").json()
    assert spec["auth_required"] is True
    checked = bare.post("/config/validate", json={"config": {"n_embd": 30, "n_head": 4}, "name": "a\x07"}).json()
    assert checked["ok"] is False and checked["config"] is None
    assert {tuple(e["loc"]) for e in checked["errors"]} == {("body", "name")}  # the body's shape first
    checked = bare.post("/config/validate", json={"config": {"n_embd": 30, "n_head": 4}}).json()
    assert [e["loc"] for e in checked["errors"]] == [["body", "config", "n_embd"]]
    assert "divisible by n_head" in checked["errors"][0]["msg"]
    good = bare.post("/config/validate", json={"config": {"dataset": "shakespeare_char"}}).json()
    assert good["ok"] and good["config"]["n_layer"] == 6 and good["errors"] == []
    fields = {f["name"]: f for f in spec["fields"]}
    assert fields["n_layer"]["default"] == 12 and fields["n_layer"]["type"] == "int"
    assert fields["compile"]["type"] == "bool | None" and fields["out_dir"]["server_set"]
    assert spec["datasets"]["shakespeare_char"]["recipe"]["n_layer"] == 6
    # Not in the API's schema: the page, the static files.
    paths = bare.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    bare.close()


def test_the_page_asks_for_the_key_then_shows_the_runs(browser: Any, site: Stack) -> None:
    key = site.create_key("newcomer")  # an owner of their own: no runs yet, whatever the other tests made
    page = open_page(browser, None)
    try:
        page.goto(site.url + "/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-dialog input[name=key]", key)
        page.click("#key-save")
        page.wait_for_selector("#runs")
        page.wait_for_selector("text=No runs yet")
        assert page.evaluate("localStorage.getItem('gptjobs.apiKey')") == key
        assert not page.problems, "\n".join(page.problems)
    finally:
        page.context.close()


def test_the_form_shows_a_bad_value_then_the_run_trains_live_to_its_end(
    page: Any, site: Stack, artifacts: Path
) -> None:
    # The form: the dataset recipe's defaults filled in; a bad value's 422 shown by its field.
    new_run_form(page, site)
    assert page.input_value("#field-n_layer") == "6"  # shakespeare_char's recipe, not train.py's 12
    assert page.input_value("#field-eval_interval") == "250"
    fill_form(page, {**SMALL, **LONG})
    page.fill("#field-name", "browser run")
    page.select_option("#field-compile", "false")
    page.fill("#field-n_embd", "33")
    page.click("#create-run")
    page.wait_for_selector("#error-n_embd:has-text('divisible by n_head')")
    assert page.get_attribute("#field-n_embd", "aria-invalid") == "true"
    page.screenshot(path=str(artifacts / "dashboard-form-error.png"), full_page=True)
    page.fill("#field-n_embd", "32")
    run_id = create_from_form(page)
    config = site.run(run_id)["config"]
    assert (config["n_embd"], config["max_iters"], config["compile"]) == (32, 1500, False)

    # The chart gains points while the run trains, over the WebSocket.
    def while_running() -> int:
        # The final status event comes after the last iter: a page that still says
        # `running` got these points while the run trained.
        return points(page) if view(page, "status") == "running" else 0

    first = wait_for(while_running, 90, "the first points on the chart while the run trains")
    wait_for(lambda: while_running() > first, 60, "the chart to gain points while the run trains")
    page.wait_for_selector(".live-state:has-text('live')")
    page.click("text=log scale")  # the loss chart is redrawn on a log scale

    page.wait_for_selector("#view[data-status=succeeded]", timeout=120_000)
    wait_for(lambda: points(page) >= 1500, 10, "every iteration on the chart")
    assert view(page, "evals") == "4"  # at iters 0, 500, 1000 and 1500
    page.wait_for_selector("#log:has-text('run succeeded')")
    page.wait_for_selector(".summary li:not(.muted)")
    assert "Cancel run" not in page.inner_text(".run-head")
    assert not page.problems, "\n".join(page.problems)


def test_a_sample_streams_into_the_page(page: Any, site: Stack, finished: str, artifacts: Path) -> None:
    page.goto(f"{site.url}/#/runs/{finished}")
    page.wait_for_selector("#view[data-status=succeeded]")
    page.fill("textarea[name=prompt]", "ROMEO:")
    page.fill("input[name=max_new_tokens]", "300")
    page.click("#sample-go")
    page.wait_for_selector("#sample-out[data-state=done]", timeout=60_000)
    text = page.inner_text("#sample-out > span")
    assert len(text) >= 100, text
    assert page.inner_text("#sample-out > b") == "ROMEO:"
    assert "checkpoint at iter 1500" in page.inner_text("#sample-meta")
    chunks = int(page.get_attribute("#sample-out", "data-chunks") or 0)
    assert chunks >= 1
    page.screenshot(path=str(artifacts / "dashboard-run.png"), full_page=True)
    assert not page.problems, "\n".join(page.problems)


def test_a_run_from_another_runs_config_is_cancelled_while_it_trains(page: Any, site: Stack) -> None:
    source = site.submit({"max_iters": 10}, name="source")["id"]
    site.http.post(f"/runs/{source}/cancel")  # only its config is wanted, not the worker's time
    page.goto(f"{site.url}/#/runs/{source}")
    page.click("text=New run from this config")
    page.wait_for_selector("#field-n_layer")
    assert page.input_value("#field-n_layer") == "1"
    fill_form(page, {"max_iters": "200000", "lr_decay_iters": "200000"})
    page.fill("#field-name", "to cancel")
    second = create_from_form(page)
    assert second != source
    page.wait_for_selector("#view[data-status=running]", timeout=90_000)
    wait_for(lambda: points(page) > 0, 60, "the second run's points")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_selector("#view[data-status=cancelled]", timeout=60_000)
    page.wait_for_selector("#log:has-text('run cancelled')")
    assert site.run(second)["status"] == "cancelled"
    assert not page.problems, "\n".join(page.problems)


def test_a_diverging_run_shows_the_nan_warning_and_fails(page: Any, site: Stack, artifacts: Path) -> None:
    new_run_form(page, site)
    blowup = {"learning_rate": "1e30", "min_lr": "0", "grad_clip": "0", "warmup_iters": "0"}
    fill_form(page, {**SMALL, **blowup, "max_iters": "100", "lr_decay_iters": "100"})
    page.select_option("#field-compile", "false")
    create_from_form(page)
    page.wait_for_selector("#view[data-status=failed]", timeout=90_000)
    page.wait_for_selector(".warnings li:has-text('iter 1 · nan_loss')")
    page.wait_for_selector("#reason:has-text('diverged')")
    page.screenshot(path=str(artifacts / "dashboard-diverged.png"), full_page=True)
    assert not page.problems, "\n".join(page.problems)


def test_the_runs_list_and_the_compare_chart(page: Any, site: Stack, finished: str, artifacts: Path) -> None:
    cancelled = [site.submit({"max_iters": 200_000}, name=f"to compare {i}")["id"] for i in (1, 2)]
    for run_id in cancelled:
        assert site.http.post(f"/runs/{run_id}/cancel").status_code in (200, 202)
        site.wait_status(run_id, {"cancelled"})
    second = cancelled[0]

    # The compare page on its own lists the runs to pick from.
    page.goto(site.url + "/")
    page.click("a[data-nav=compare]")
    page.wait_for_selector(".picker .chip >> nth=2")
    page.wait_for_selector("#compare-chart canvas")

    # The runs list shows both, and compares them.
    page.click("a[data-nav=runs]")
    page.wait_for_selector(f"#run-{finished}[data-status=succeeded]")
    page.wait_for_selector(f"#run-{second}[data-status=cancelled]")
    assert "1,500 / 1,500" in page.inner_text(f"#run-{finished}")
    page.check(f"#run-{finished} input[type=checkbox]")
    page.check(f"#run-{second} input[type=checkbox]")
    page.screenshot(path=str(artifacts / "dashboard-runs.png"), full_page=True)
    page.click("#compare-selected")
    page.wait_for_selector("#view[data-series='2']")
    page.wait_for_selector("#compare-chart canvas")
    page.screenshot(path=str(artifacts / "dashboard-compare.png"), full_page=True)
    assert not page.problems, "\n".join(page.problems)


def test_resume_cuts_the_chart_and_a_dropped_socket_reconnects(page: Any, site: Stack) -> None:
    """What a real run shows only when a worker dies, played by a stand-in server (Playwright
    answers the page's requests for this run): the socket drops mid-run, the page reconnects
    with the last seq it saw, and a `status` with `from_iter` 50 removes the iterations from
    50 on (evals after 50, the warning at 70) before the resumed attempt's points arrive."""
    run_id = "feedc0de00000001"
    detail: dict[str, Any] = {
        "id": run_id,
        "name": "resumed",
        "status": "running",
        "reason": None,
        "config": {"max_iters": 60, "eval_interval": 50},
        "attempt": 1,
        "restarts": 0,
        "max_restarts": None,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:01Z",
        "finished_at": None,
        "progress": {"iter": None, "max_iters": 60, "last_seq": 0, "warnings": []},
        "diagnostics": {"summary": []},
    }
    seq = 0

    def ev(type_: str, **fields: Any) -> str:
        nonlocal seq
        seq += 1
        return json.dumps({"run_id": run_id, "seq": seq, "type": type_, "ts": 0, **fields})

    def it(i: int) -> str:
        return ev("iter", iter=i, loss=4.0 - i / 100, lr=1e-3, step_ms=10.0, tokens_per_s=1e4, mfu=None, mfu_avg=None)

    def evaluation(i: int) -> str:
        return ev("eval", iter=i, train_loss=4.0 - i / 100, val_loss=4.1 - i / 100, eval_ms=5.0)

    first = [ev("status", status="running", iter=0, attempt=1)]
    for i in range(100):
        if i in (0, 50):
            first.append(evaluation(i))
        if i == 50:
            first.append(ev("checkpoint", iter=50, val_loss=3.6, best=True, ckpt_ms=3.0, bytes=1000))
        if i == 70:
            first.append(ev("warning", code="overfitting", iter=70, message="val loss rising"))
        first.append(it(i))
    first.append(evaluation(100))
    last_seq_of_first = seq

    connections: list[int] = []
    resumed: list[Any] = []

    def on_socket(ws: Any) -> None:
        connections.append(int(parse_qs(urlparse(ws.url).query)["after"][0]))
        if len(connections) == 1:
            for message in first:
                ws.send(message)
            ws.close(code=1011, reason="the API restarted")  # not a normal close: the page must come back
            return
        ws.send(ev("status", status="running", iter=50, from_iter=50, reason="resumed from iter 50"))
        resumed.append(ws)  # the rest once the page has shown the cut

    def finish(ws: Any) -> None:
        for i in range(50, 60):
            ws.send(it(i))
        ws.send(evaluation(60))
        detail.update(status="succeeded", reason="trained 60 iterations")
        ws.send(ev("status", status="succeeded", iter=60, reason="trained 60 iterations"))
        ws.close(code=1000, reason="run ended")

    def on_request(route: Any) -> None:
        if "/events" in route.request.url:
            route.fulfill(json={"events": [], "next_after": 0, "has_more": False})
        else:
            route.fulfill(json=detail)

    page.route(re.compile(rf"/runs/{run_id}(/events[^/]*)?$"), on_request)
    page.route_web_socket(re.compile(rf"/runs/{run_id}/stream"), on_socket)
    page.goto(f"{site.url}/#/runs/{run_id}")
    page.wait_for_selector("#log:has-text('resuming from iter 50')", timeout=20_000)
    assert connections == [0, last_seq_of_first]
    # Cut at once, before any new point: iters 0-49, evals at 0 and 50, no warning at 70.
    wait_for(lambda: view(page, "points") == "50", 5, "the chart to be cut back to iters 0 to 49")
    assert view(page, "evals") == "2"
    assert page.locator(".warnings li").count() == 0
    finish(resumed[0])
    page.wait_for_selector("#view[data-status=succeeded]", timeout=20_000)
    wait_for(lambda: view(page, "points") == "60", 5, "the chart to hold iters 0 to 59")
    assert view(page, "evals") == "3"  # 0, 50 and 60
    assert not page.problems, "\n".join(page.problems)


def test_live_points_stay_bounded(page: Any, site: Stack) -> None:
    """A long run's live iterations are thinned on the page (run.js, LIVE_POINTS): the chart
    stays under its bound and responsive. A stand-in server streams the iter events as fast
    as it can (a profile of 20,000 showed the page's own code busy for under a second)."""
    run_id = "feedc0de00000002"
    n = 8_000  # past LIVE_POINTS (6,000); Playwright's stand-in delivers ~1,000 a second
    detail: dict[str, Any] = {
        "id": run_id,
        "name": "long",
        "status": "running",
        "reason": None,
        "config": {"max_iters": n},
        "attempt": 1,
        "restarts": 0,
        "max_restarts": None,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "progress": {"iter": None, "max_iters": n, "last_seq": 0, "warnings": []},
        "diagnostics": {"summary": []},
    }

    def on_socket(ws: Any) -> None:
        for i in range(n):
            body = {"run_id": run_id, "seq": i + 1, "type": "iter", "ts": 0, "iter": i, "loss": 4.0, "step_ms": 1.0}
            ws.send(json.dumps(body))

    page.route(
        re.compile(rf"/runs/{run_id}(/events[^/]*)?$"),
        lambda route: route.fulfill(
            json={"events": [], "next_after": 0, "has_more": False} if "/events" in route.request.url else detail
        ),
    )
    page.route_web_socket(re.compile(rf"/runs/{run_id}/stream"), on_socket)
    t0 = time.monotonic()
    page.goto(f"{site.url}/#/runs/{run_id}")
    page.wait_for_selector(f"#log:has-text('iter {n - 1}:')", timeout=60_000)
    shown = wait_for(lambda: int(view(page, "points") or 0), 5, "points on the chart")
    took = time.monotonic() - t0
    print(f"\n{n} live iter events: {shown} points kept, {took:.1f} s")
    assert 1000 < shown <= 6000
    page.hover("#loss-chart .u-over")  # the legend follows the cursor: the chart is live and drawn
    assert page.inner_text("#loss-chart .u-legend").count("4.0000") >= 1
    assert not page.problems, "\n".join(page.problems)


def test_a_dataset_uploaded_from_the_page_is_prepared_and_offered_to_a_new_run(
    page: Any, site: Stack, tmp_path: Path, artifacts: Path
) -> None:
    src = tmp_path / "lines.txt"
    src.write_text("To be, or not to be, that is the question.\n" * 500)  # 21,500 characters
    page.goto(site.url + "/#/datasets")
    page.wait_for_selector("#upload-form")
    page.set_input_files("#upload-form input[name=file]", str(src))
    page.fill("#upload-form input[name=name]", "from-the-page")
    page.select_option("#upload-form select[name=tokenizer]", "char")
    page.click("#upload-form button[type=submit]")
    row = page.wait_for_selector("#datasets tr[data-status=ready]", timeout=90_000)
    text = row.inner_text()
    assert "from-the-page" in text and "char" in text and "21.5 kB" in text, text
    assert "21,500 (19,350 train, 2,150 val)" in text, text
    row.query_selector("summary").click()  # the preview, decoded from the prepared tokens
    assert "To be, or not to be" in row.inner_text()
    page.screenshot(path=str(artifacts / "datasets.png"), full_page=True)

    new_run_form(page, site)
    page.wait_for_selector("#field-dataset optgroup option", state="attached")  # options are never "visible"
    options = page.eval_on_selector_all("#field-dataset optgroup option", "els => els.map(e => e.textContent)")
    assert any(o.startswith("from-the-page (char, 21,500 tokens)") for o in options), options
    assert page.problems == []


def test_a_run_started_from_another_shows_its_lineage(page: Any, site: Stack, finished: str) -> None:
    child = site.submit({"init_from": f"run:{finished}@best", "max_iters": 10, "lr_decay_iters": 10, "warmup_iters": 0})
    assert child["parent"]["run_id"] == finished, child
    page.goto(f"{site.url}/#/runs/{child['id']}")
    link = page.wait_for_selector("#lineage a#parent")
    assert link.get_attribute("href") == f"#/runs/{finished}"
    assert f"at iter {child['parent']['iter']}" in page.inner_text("#lineage")
    site.wait_status(child["id"], {"succeeded"})
    assert page.problems == []
