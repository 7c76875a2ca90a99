"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright),
loaded from a real uvicorn with a real MLflow server behind /retrain.

Never `playwright install`: the browser is /usr/bin/chromium (`.ci/run` installs it).
Locally, without it, these tests are skipped; with IA_TEST_REQUIRE_BROWSER=1 they fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW, LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TIMEOUT_MS = 60_000  # a first /retrain waits for MLflow's first registration

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("IA_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"IA_TEST_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (CI installs it)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Any, *, allowed: tuple[str, ...] = ()) -> None:
        self.errors: list[str] = []
        self.allowed = allowed
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _on_console(self, message: Any) -> None:
        if message.type in ("error", "warning") and not any(
            a in message.text for a in self.allowed
        ):
            self.errors.append(f"{message.type}: {message.text}")


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def _open(url: str, *, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-refreshed]", state="attached")
        return page

    yield _open
    for context in contexts:
        context.close()


def _points(page: Any, chart: str) -> int:
    return int(page.get_attribute(f"#{chart}", "data-points") or 0)


def _wait_points(page: Any, chart: str, *, more_than: int) -> int:
    from playwright.sync_api import expect

    # The page refreshes after each action: wait for the chart's data to grow.
    expect(page.locator(f"#{chart}")).not_to_have_attribute("data-points", str(more_than))
    for _ in range(3):
        if _points(page, chart) > more_than:
            break
        page.wait_for_timeout(200)
    value = _points(page, chart)
    assert value > more_than, f"{chart}: {value} points, expected more than {more_than}"
    return value


def _status(page: Any, pattern: str) -> str:
    from playwright.sync_api import expect

    status = page.locator("#action-status")
    expect(status).to_have_text(re.compile(pattern))
    return str(status.text_content())


def _config(page: Any) -> dict[str, Any]:
    return dict(json.loads(page.evaluate("() => fetch('/dashboard/config').then(r => r.text())")))


@pytest.fixture
def live_server_real_clock(settings: Settings) -> Iterator[LiveServer]:
    """Like ``live_server`` with the wall clock: the charts' time axes then look as in use."""
    from ia_continu.api.app import create_app

    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_drives_a_full_cycle_in_chromium(
    live_server_real_clock: LiveServer, open_page: Callable[..., Any]
) -> None:
    from playwright.sync_api import expect

    page = open_page(f"{live_server_real_clock.url}/dashboard")
    console = Console(page)
    config = _config(page)
    page.keyboard.press("Tab")  # keyboard users first reach the skip link
    assert page.evaluate("() => document.activeElement.className") == "skip-link"
    expect(page.locator("#kpi-status")).to_contain_text("up")
    expect(page.locator("#kpi-champion")).to_contain_text("none yet")
    assert _points(page, "chart-hist-feature1") == 0
    expect(page.locator("#chart-hist-feature1 .chart-note")).to_be_visible()

    # 1. generate at an even hour
    page.fill("#gen-samples", "1000")
    page.select_option("#gen-hour", "2")
    page.click("#btn-generate")
    _status(page, r"Dataset #1: 1000 rows generated at hour 2")
    _wait_points(page, "chart-hist-feature1", more_than=0)
    expect(page.locator("#chart-hist-feature1 .chart-note")).to_have_count(0)

    # 2. retrain: the champion appears in the header, the table and the accuracy chart
    accuracy_points = _points(page, "chart-accuracy")
    page.click("#btn-retrain")
    _status(page, r"Model v1 trained on dataset #1")
    expect(page.locator("#kpi-champion")).to_have_text("v1")
    expect(page.locator("#kpi-accuracy")).to_contain_text(re.compile(r"0\.\d{3}"))
    row = page.locator("#models-table tbody tr", has_text="v1")
    expect(row).to_contain_text("champion")
    _wait_points(page, "chart-accuracy", more_than=accuracy_points)

    # 3. an odd-hour batch: the latest histogram moves away from the training data
    page.select_option("#gen-hour", "5")
    page.click("#btn-generate")
    _status(page, r"Dataset #2: 1000 rows generated at hour 5 \(odd hour")
    expect(page.locator("#caption-hist-feature1")).to_contain_text("Latest: dataset #2 (hour 5)")
    expect(page.locator("#caption-hist-feature1")).to_contain_text("Training: dataset #1 (v1")

    # 4. predict, from the keyboard: Enter in a field submits its form
    page.fill("#pred-f1", "1.5")
    page.focus("#pred-f2")
    page.keyboard.press("Control+A")
    page.keyboard.type("0.8")
    page.keyboard.press("Enter")
    expect(page.locator("#predict-result")).to_have_text(
        re.compile(r"class [01] · confidence [01]\.\d{3} · model v1")
    )
    _status(page, r"Prediction for \[1\.5, 0\.8\]")

    # 5. the monitor, where this API serves it: drift and a retrain appear on the charts
    if config["endpoints"]["monitoring_run"]:
        page.select_option("#mon-hour", "")  # the newest dataset: the odd-hour batch
        page.click("#btn-monitor")
        _status(page, r"Monitoring run #1")
        _wait_points(page, "chart-ks", more_than=0)
        expect(page.locator("#runs-table tbody tr")).to_have_count(1)
        expect(page.locator("#kpi-last-run")).not_to_contain_text("none yet")
    else:
        expect(page.locator("#btn-monitor")).to_be_disabled()
        expect(page.locator("#chart-ks .chart-note")).to_contain_text("Not available")
    if config["endpoints"]["predictions_timeseries"]:
        _wait_points(page, "chart-traffic", more_than=0)

    # 6. roll back to v1, where this API serves it
    if config["endpoints"]["rollback"]:
        if page.locator("#models-table tbody tr").count() < 2:
            page.click("#btn-retrain")
            _status(page, r"Model v2 trained")
        page.click("#models-table button[data-version=v1]")
        _status(page, r"Rolled back: v1 is now the champion")
        expect(page.locator("#kpi-champion")).to_have_text("v1")
        expect(page.locator("#models-table button[data-version=v1]")).to_be_disabled()

    # Every form control has a label.
    unlabelled = page.evaluate(
        "() => [...document.querySelectorAll('input, select')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"
    )
    assert unlabelled == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)  # the charts follow the new width
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"horizontal scrolling at phone width ({width}px)"
    page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
    assert console.errors == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_degrades_when_optional_routes_are_missing(
    live_server: LiveServer, browser: Any
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()

        # The page is told that every optional route exists, and each of them is gone:
        # an API of another version. It must show notes, never break.
        def claim_everything(route: Any) -> None:
            body = route.fetch().json()
            body["endpoints"] = {k: True for k in body["endpoints"]}
            route.fulfill(json=body)

        def gone(route: Any) -> None:
            route.fulfill(status=404, json={"detail": "Not Found"})

        page.route("**/dashboard/config", claim_everything)
        page.route(re.compile(r".*/(monitoring|predictions)/.*"), gone)
        console = Console(page, allowed=("the server responded with a status of 404",))
        page.goto(f"{live_server.url}/dashboard")
        page.wait_for_selector("body[data-refreshed]", state="attached")
        expect(page.locator("#chart-ks .chart-note")).to_contain_text("Not available")
        expect(page.locator("#chart-traffic .chart-note")).to_contain_text("not available")
        expect(page.locator("#kpi-last-run")).to_contain_text("not available")
        expect(page.locator("#runs-empty")).to_be_visible()
        expect(page.locator("#kpi-status")).to_contain_text("up")
        assert console.errors == []
    finally:
        context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_asks_for_the_api_key_once_and_shows_401(
    make_settings: Callable[..., Settings],
    database_url: str,
    mlflow_server: str,
    open_page: Callable[..., Any],
) -> None:
    import httpx
    from playwright.sync_api import expect

    from ia_continu.api.app import create_app

    key = "dashboard-test-key-0123456789abcdef"
    settings = make_settings(
        database_url=database_url, mlflow_tracking_uri=mlflow_server, api_keys=key
    )
    with LiveServer(create_app(settings, clock=lambda: FIXED_NOW)) as server:
        if httpx.post(f"{server.url}/generate", json={"samples": 100}).status_code != 401:
            pytest.skip("this build does not enforce IA_API_KEYS on POST routes")
        page = open_page(f"{server.url}/dashboard")
        console = Console(page, allowed=("the server responded with a status of 401",))
        expect(page.locator("#key-button")).to_have_text("API key: needed")
        dialog = page.locator("#key-dialog")

        # No key: asked; a wrong one: the API's 401 message is shown.
        page.click("#btn-generate")
        expect(dialog).to_be_visible()
        page.fill("#key-input", "wrong-key-wrong-key-wrong")
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        _status(page, r"Error 401: .*API key")

        # Asked again (the stored key is wrong), with the reason; the right key works.
        page.click("#btn-generate")
        expect(dialog).to_be_visible()
        expect(page.locator("#key-dialog-message")).to_contain_text("API key")
        page.fill("#key-input", key)
        page.click("#key-dialog button[value=save]")
        _status(page, r"Dataset #1: 1000 rows")

        # Kept in this tab's sessionStorage only, and not asked for again.
        page.click("#btn-generate")
        _status(page, r"Dataset #2: 1000 rows")
        stored = page.evaluate(
            "() => [sessionStorage.length, localStorage.length, document.cookie]"
        )
        assert stored == [1, 0, ""]
        assert console.errors == []


def _stroke_pixels(page: Any, chart: str, rgb: tuple[int, int, int]) -> int:
    """Opaque pixels of about this colour on the chart's canvas (its drawn lines)."""
    return int(
        page.evaluate(
            """([chart, rgb]) => {
              const canvas = document.querySelector('#' + chart + ' canvas');
              if (!canvas) return 0;
              const ctx = canvas.getContext('2d');
              const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) < 40 &&
                    Math.abs(d[i + 1] - rgb[1]) < 40 && Math.abs(d[i + 2] - rgb[2]) < 40) n++;
              }
              return n;
            }""",
            [chart, list(rgb)],
        )
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_traffic_chart_draws_a_window_whose_predictions_share_one_bucket(
    live_server_real_clock: LiveServer, open_page: Callable[..., Any]
) -> None:
    """Issue 10 item 8: 201 predictions within one minute drew an empty chart (a stepped
    line needs two points). The API's answer is replaced by exactly that case."""
    from datetime import UTC, datetime

    from playwright.sync_api import expect

    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    one_bucket = {
        "window_minutes": 60,
        "bucket_seconds": 60,
        "points": [{"t": minute.isoformat(), "model_version": "v1", "class_0": 120, "class_1": 81}],
    }

    def single_bucket(route: Any) -> None:
        route.fulfill(json=one_bucket)

    browser_page = open_page(f"{live_server_real_clock.url}/dashboard")
    browser_page.route("**/predictions/timeseries*", single_bucket)
    # The test's own pixel reads make Chromium suggest willReadFrequently.
    console = Console(browser_page, allowed=("willReadFrequently",))
    browser_page.select_option("#traffic-window", "15")  # refreshes through the route
    browser_page.select_option("#traffic-window", "60")
    expect(browser_page.locator("#caption-traffic")).to_contain_text(
        "201 predictions in the window: 120 class 0, 81 class 1"
    )
    browser_page.wait_for_timeout(300)  # uPlot draws on the next frame
    assert _stroke_pixels(browser_page, "chart-traffic", (0, 114, 178)) > 20  # class 0
    assert _stroke_pixels(browser_page, "chart-traffic", (213, 94, 0)) > 20  # class 1
    assert console.errors == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_realized_accuracy_chart_from_feedback(
    live_server_real_clock: LiveServer, open_page: Callable[..., Any]
) -> None:
    """Predictions and feedback posted to the API: the realized-accuracy chart shows each
    version's accuracy on the labelled ones, its held-out accuracy and the coverage."""
    import httpx
    from playwright.sync_api import expect

    from ia_continu.ml.data import generate_dataset

    url = live_server_real_clock.url
    with httpx.Client(base_url=url, timeout=600) as http:
        assert http.post("/generate", json={"samples": 500, "hour": 2}).status_code == 200
        assert http.post("/retrain", json={}).status_code == 200
        data = generate_dataset(200, hour=2, seed=11)
        served = http.post("/predict/batch", json={"instances": data.features.tolist()}).json()
        ids, predicted = served["prediction_ids"], served["predictions"]
        # The true labels of the first 80 predictions.
        items = [
            {"prediction_id": pid, "label": int(label)}
            for pid, label in zip(ids[:80], data.target[:80], strict=True)
        ]
        assert http.post("/feedback", json={"items": items}).json()["stored"] == 80
        expected = (
            sum(p == int(t) for p, t in zip(predicted[:80], data.target[:80], strict=True)) / 80
        )
        held_out = http.get("/models").json()["models"][0]["accuracy"]

    page = open_page(f"{url}/dashboard")
    console = Console(page)
    expect(page.locator("#caption-realized")).to_contain_text(
        "200 predictions, 80 with feedback (0.400 coverage)"
    )
    # One bucket: coverage, v1 realized, v1 held-out.
    assert _points(page, "chart-realized") == 3
    expect(page.locator("#chart-realized .chart-note")).to_have_count(0)
    legend = page.locator("#chart-realized .u-legend")
    expect(legend).to_contain_text("v1 realized")
    expect(legend).to_contain_text("v1 held-out")
    # The chart holds the API's figures (uPlot keeps the data it drew).
    shown = page.evaluate(
        "() => { const n = document.querySelector('#chart-realized');"
        " return [...n.querySelectorAll('.u-legend .u-series')].map(s => s.textContent); }"
    )
    assert any("v1 realized" in s for s in shown)
    response = page.evaluate(
        "() => fetch('/predictions/performance/timeseries?bucket_seconds=600').then(r => r.json())"
    )
    (point,) = response["points"]
    assert point["served"] == 200 and point["labelled"] == 80
    assert point["accuracy"] == pytest.approx(expected)
    assert held_out is not None
    canvas = page.locator("#chart-realized canvas")
    expect(canvas).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#chart-realized").screenshot(path=str(ARTIFACTS / "dashboard-realized.png"))
    assert console.errors == []
