"""The dashboard: its data against what was served and rewarded, its key, and a real browser.

In process: ``GET /v1/dashboard/data`` after known traffic counts exactly the decisions,
rewards, actions served and uniform-random baseline that the answers imply; it needs a
reader key when keys are configured; the page loads nothing from elsewhere.

In a browser: a real `banditrec serve` process with keys, simulated traffic over HTTP, and the
system's headless Chromium driven by selenium (chromedriver). The page asks for a key before
calling anything, draws every panel once it has one, updates itself as more traffic flows,
and logs no console error. A screenshot is written to ``$BANDITREC_TEST_ARTIFACTS`` (or the
test's tmp_path) and its path printed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from banditrec.api import create_app
from banditrec.auth import Role
from banditrec.config import Settings
from banditrec.dashboard.feed import BUCKET_SECONDS
from conftest import ACTIONS, SEED_CONTEXT
from redis_server import RedisServer
from serving import Server, running_server

READER, WRITER, ADMIN = "reader-key-0123456789", "writer-key-0123456789", "admin-key-0123456789"
KEYS = {READER: Role.reader, WRITER: Role.writer, ADMIN: Role.admin}


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        db_path=tmp_path / "events.db",
        snapshot_dir=tmp_path / "snapshots",
        model_path=tmp_path / "absent.npz",
        seed=0,
        **extra,
    )


def traffic(
    client: httpx.Client | TestClient,
    n: int,
    seed: int,
    baseline: str | None = None,
    **headers: str,
) -> list[Any]:
    """`n` rank + reward rounds; every fifth excludes an action (`baseline`: the app's
    choice, sent for apprentice mode). Returns (answer, reward, n eligible) per round."""
    rng = np.random.default_rng(seed)
    rounds = []
    for i in range(n):
        body: dict[str, Any] = {"context": SEED_CONTEXT}
        if baseline is not None:
            body["baseline_action"] = baseline
        excluded = [ACTIONS[i % 4]] if i % 5 == 0 and ACTIONS[i % 4] != baseline else []
        if excluded:
            body["excluded_actions"] = excluded
        answer = client.post("/v1/rank", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        rank = answer.json()
        reward = float(rng.random() < 0.2 + 0.15 * ACTIONS.index(rank["action_id"]))
        posted = client.post(
            f"/v1/events/{rank['event_id']}/reward", json={"value": reward}, headers=headers
        )
        assert posted.status_code == 200, posted.text
        rounds.append((rank, reward, 4 - len(excluded)))
    return rounds


# -- in process ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The event log on either backend: the feed reads it through the protocol only."""
    if request.param == "sqlite":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"store_url": server.url}


def test_data_counts_what_was_served_and_rewarded(
    tmp_path: Path, store_settings: dict[str, Any]
) -> None:
    with TestClient(create_app(settings(tmp_path, **store_settings))) as client:
        first = client.get("/v1/dashboard/data")
        assert first.status_code == 200
        assert first.json()["window"]["resolved"] == 0
        rounds = traffic(client, 120, seed=1)
        client.post("/v1/admin/actions/invite_friend/disable")
        data = client.get("/v1/dashboard/data").json()

    window = data["window"]
    rewards = [r for _, r, _ in rounds]
    assert window["resolved"] == 120 and window["defaulted"] == 0
    assert window["reward"]["n"] == 120
    assert window["reward"]["mean"] == pytest.approx(sum(rewards) / 120, abs=1e-12)
    assert window["reward"]["low"] < window["reward"]["mean"] < window["reward"]["high"]
    # Uniform random by inverse propensity scoring: r · (1 / n eligible) / p, per decision.
    terms = [r / (n * rank["probability"]) for rank, r, n in rounds]
    assert window["uniform"]["mean"] == pytest.approx(math.fsum(terms) / 120, rel=1e-12)
    lift = [r - t for r, t in zip(rewards, terms, strict=True)]
    assert window["lift"]["mean"] == pytest.approx(math.fsum(lift) / 120, rel=1e-9, abs=1e-12)
    weights = [1.0 / (n * rank["probability"]) for rank, _, n in rounds]
    ess = math.fsum(weights) ** 2 / math.fsum(w * w for w in weights)
    assert window["ess"]["ess"] == pytest.approx(ess, rel=1e-9)
    assert sum(window["probabilities"]) == 120
    # The metrics: decisions by the action served, all joined.
    served = Counter(rank["action_id"] for rank, _, _ in rounds)
    assert window["by_action"] == {a: float(served[a]) for a in ACTIONS}
    assert window["decisions"] == 120 and window["joins"] == 120
    assert window["join_rate"] == 1.0 and window["default_share"] == 0.0
    assert window["errors"] == 0 and window["backlog"] == 0
    assert window["latency_ms"]["p50"] is not None
    assert window["latency_ms"]["p50"] <= window["latency_ms"]["p99"]
    # The action change is on the timeline and in the table.
    assert [(e["kind"], e["target"]) for e in data["timeline"]] == [
        ("disable_action", "invite_friend")
    ]
    assert {a["action_id"]: a["enabled"] for a in data["actions"]} == {
        a: a != "invite_friend" for a in ACTIONS
    }
    assert data["model"]["serving"] == "own"
    assert data["lifecycle"]["serving"] == "own" and data["lifecycle"]["candidates"] == []
    assert len(data["buckets"]) == data["window_seconds"] / data["bucket_seconds"]
    assert sum(b["resolved"] for b in data["buckets"]) == 120


def test_a_dashboard_opened_late_reads_the_logs_history(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        rounds = traffic(client, 40, seed=5)
        data = client.get("/v1/dashboard/data").json()
    window = data["window"]
    # The log-based panels start with the history of the log...
    assert window["resolved"] == 40
    assert window["reward"]["mean"] == pytest.approx(sum(r for _, r, _ in rounds) / 40)
    # ...the metric-based ones at the first poll (nothing between two samples yet).
    assert window["decisions"] == 0 and window["decisions_per_second"] is None


def test_apprentice_decisions_give_the_apps_rule_as_a_baseline(tmp_path: Path) -> None:
    epsilon = 0.2
    app = create_app(
        settings(tmp_path, apprentice=True, auto_graduate=False, apprentice_explore=epsilon)
    )
    rng = np.random.default_rng(4)
    baseline_terms, own_terms = [], []
    with TestClient(app) as client:
        for _ in range(80):
            body = {"context": SEED_CONTEXT, "baseline_action": "suggest_new_app"}
            rank = client.post("/v1/rank", json=body).json()
            assert rank["model_version"].endswith(f"+apprentice({epsilon:g})")
            reward = float(rng.random() < 0.4)
            path = f"/v1/events/{rank['event_id']}/reward"
            assert client.post(path, json={"value": reward}).status_code == 200
            p = rank["probability"]
            is_baseline = rank["action_id"] == "suggest_new_app"
            # π_serve = (1 − ε)·onehot(baseline) + ε·π_own, so π_own(a) is recovered from p.
            own = (p - (1 - epsilon) * is_baseline) / epsilon
            baseline_terms.append(reward * is_baseline / p)
            own_terms.append(reward * own / p)
        data = client.get("/v1/dashboard/data").json()
    window = data["window"]
    assert data["model"]["serving"] == "apprentice"
    assert window["apprentice_served"]["n"] == 80
    assert window["apprentice_baseline"]["mean"] == pytest.approx(
        math.fsum(baseline_terms) / 80, rel=1e-9
    )
    assert window["apprentice_own"]["mean"] == pytest.approx(math.fsum(own_terms) / 80, rel=1e-6)
    lift = math.fsum(o - b for o, b in zip(own_terms, baseline_terms, strict=True)) / 80
    assert window["apprentice_lift"]["mean"] == pytest.approx(lift, rel=1e-6, abs=1e-9)
    assert data["lifecycle"]["serving"] == "apprentice"


def test_default_rewards_show_in_share_and_backlog(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, reward_window_seconds=0.5))) as client:
        for _ in range(10):
            assert client.post("/v1/rank", json={"context": SEED_CONTEXT}).status_code == 200
        deadline = time.monotonic() + 20
        while True:  # the sweep runs every second once the windows have closed
            window = client.get("/v1/dashboard/data").json()["window"]
            if window["defaulted"] == 10 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert window["defaulted"] == 10 and window["resolved"] == 10
    assert window["reward"]["mean"] == 0.0
    assert window["joins"] == 0 and window["default_share"] == 1.0
    assert window["backlog"] == 0


def test_data_needs_a_reader_key_and_the_page_does_not(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path, api_keys=KEYS))) as client:
        missing = client.get("/v1/dashboard/data")
        assert missing.status_code == 401
        assert missing.json()["error"] == "missing_api_key"
        wrong = client.get("/v1/dashboard/data", headers={"X-API-Key": "not-a-key-0123456789"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_api_key"
        for key in (READER, WRITER, ADMIN):
            assert client.get("/v1/dashboard/data", headers={"X-API-Key": key}).status_code == 200
        bearer = {"Authorization": f"Bearer {READER}"}
        assert client.get("/v1/dashboard/data", headers=bearer).status_code == 200
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert 'data-keys-required="true"' in page.text
        for name in ("dashboard.js", "dashboard.css"):
            assert client.get(f"/dashboard/{name}").status_code == 200
        unknown = client.get("/dashboard/other.js")
        assert unknown.status_code == 422
        assert unknown.json()["detail"][0]["field"] == "name"
    with TestClient(create_app(settings(tmp_path / "open"))) as client:
        assert 'data-keys-required="false"' in client.get("/dashboard").text


def test_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        page = client.get("/dashboard")
        script = client.get("/dashboard/dashboard.js").text
        style = client.get("/dashboard/dashboard.css").text
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    # The only absolute URL of the script is SVG's namespace, an identifier never fetched.
    assert re.findall(r"https?://[^\"' ]+", script) == ["http://www.w3.org/2000/svg"]
    assert "http" not in style and "@import" not in style


# -- in a real browser --------------------------------------------------------------------

BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,2000",
)  # fmt: skip
PANELS = (
    "panel-reward", "panel-lift", "panel-traffic", "panel-rewards", "panel-exploration",
    "panel-service", "panel-versions", "panel-actions",
)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (the system's `chromium` and `chromium-driver`) through selenium.

    Fails, not skips, when they are missing: CI installs them, and a skipped browser test
    would hide a broken setup."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("The browser test needs chromium and chromedriver: apt-get install "
                    "chromium chromium-driver (.ci/run does).")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    # A new, empty profile: nothing from another run, no first-run network calls.
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, check: Any, what: str, timeout: float = 20.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: check(d), message=f"Waited {timeout} s for {what}."
    )


# The page redraws its panels at every poll, so elements are read in one script call each
# (a reference held across a redraw would be stale).


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id))  # fmt: skip


def panel_state(driver: Any, panel: str) -> str:
    return str(driver.execute_script(
        "return document.getElementById(arguments[0]).dataset.state", panel))  # fmt: skip


def tile(driver: Any, panel_tiles: str, label: str) -> str | None:
    """The value of the tile labelled `label` in `#panel_tiles`, None if there is none."""
    value = driver.execute_script(
        """for (const t of document.querySelectorAll("#" + arguments[0] + " .tile")) {
             if (t.querySelector(".k").textContent === arguments[1])
               return t.querySelector(".v").textContent;
           }
           return null;""",
        panel_tiles,
        label,
    )
    return None if value is None else str(value)


def artifacts_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("BANDITREC_TEST_ARTIFACTS")
    path = Path(configured) if configured else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    keys = {READER: "reader", WRITER: "writer", ADMIN: "admin"}
    # Apprentice mode until an admin switches: both kinds of decisions on one time axis.
    with running_server(
        tmp_path, api_keys=json.dumps(keys), apprentice="true", auto_graduate="false"
    ) as server:
        yield server


def next_bucket() -> None:
    """Sleep into the next 5-second bucket, so the screenshot's charts have several points."""
    time.sleep(BUCKET_SECONDS - time.time() % BUCKET_SECONDS + 0.05)


def test_dashboard_in_headless_chromium(
    server: Server, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = {"X-API-Key": WRITER}
    browser.get(f"{server.url}/dashboard?interval=400")
    # Keys are configured: the page asks for one and calls nothing without it.
    wait_for(browser, lambda d: "requires a key" in text_of(d, "status"), "the key prompt")
    assert browser.find_element("id", "auth").is_displayed()
    assert all(panel_state(browser, p) == "empty" for p in PANELS)

    with httpx.Client(base_url=server.url, timeout=10) as client:
        key_field = browser.find_element("id", "api-key")
        key_field.send_keys(READER)
        browser.find_element("css selector", "#auth button[type=submit]").click()
        wait_for(browser, lambda d: text_of(d, "status").startswith("updated"), "an update")
        # The metric-based panels count from the page's first poll on.
        traffic(client, 75, seed=2, baseline="show_bonus_offer", **writer)
        next_bucket()
        traffic(client, 75, seed=12, baseline="show_bonus_offer", **writer)
        for panel in PANELS:
            wait_for(browser, lambda d, p=panel: panel_state(d, p) == "ready", panel)
        wait_for(
            browser,
            lambda d: tile(d, "reward-tiles", "decisions with a reward") == "150",
            "150 rewarded decisions",
        )
        # Stored for this tab only, and sent as X-API-Key.
        assert browser.execute_script("return sessionStorage.getItem('banditrec.apiKey')") == (
            READER
        )
        rule = tile(browser, "reward-tiles", "app's rule (apprentice)")
        assert rule is not None and re.fullmatch(r"-?\d\.\d{3} \[.+\]", rule), rule
        wait_for(browser, lambda d: tile(d, "lifecycle-tiles", "serving") == "apprentice",
                 "the lifecycle panel")  # fmt: skip
        # It updates itself while traffic flows, and shows an admin's switches.
        admin = {"X-API-Key": ADMIN}
        switched = client.post("/v1/admin/lifecycle/serve", json={"mode": "own"}, headers=admin)
        assert switched.status_code == 200, switched.text
        next_bucket()
        traffic(client, 60, seed=3, **writer)
        disabled = client.post("/v1/admin/actions/invite_friend/disable", headers=admin)
        assert disabled.status_code == 200
        wait_for(
            browser,
            lambda d: tile(d, "reward-tiles", "decisions with a reward") == "210",
            "210 rewarded decisions",
        )
        wait_for(browser, lambda d: "disabled" in text_of(d, "actions-table"),
                 "the disabled action")  # fmt: skip
        wait_for(browser, lambda d: "disable_action invite_friend" in text_of(d, "timeline"),
                 "the timeline entry")  # fmt: skip
        wait_for(browser, lambda d: tile(d, "lifecycle-tiles", "serving") == "own",
                 "serving own")  # fmt: skip
        assert "serve_mode own" in text_of(browser, "timeline")

    assert int(browser.find_element("tag name", "body").get_attribute("data-updates")) >= 2
    served = tile(browser, "reward-tiles", "served reward (window)")
    assert served is not None and re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", served), served
    assert browser.find_elements("css selector", "#chart-reward svg path")
    assert len(browser.find_elements("css selector", "#chart-traffic svg rect")) >= 1
    # Both versions served (apprentice, then own) on the versions strip, with the switch.
    versions = text_of(browser, "chart-versions")
    assert "+apprentice(0.1)" in versions and "serve_mode own" in versions

    screenshot = artifacts_dir(tmp_path) / "dashboard.png"
    browser.save_screenshot(str(screenshot))
    with capsys.disabled():  # shown whatever pytest's capture
        print(f"\nDashboard screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors

    # A wrong key is refused by the server; the page says so and forgets it. (Chromium logs
    # the 401 on the console: this comes after the console check.)
    browser.find_element("id", "forget-key").click()
    browser.find_element("id", "api-key").send_keys("not-a-key-0123456789")
    browser.find_element("css selector", "#auth button[type=submit]").click()
    wait_for(browser, lambda d: "refused (401 invalid_api_key)" in text_of(d, "status"),
             "the refusal")  # fmt: skip
    assert browser.execute_script("return sessionStorage.getItem('banditrec.apiKey')") is None


# -- the small statistics -----------------------------------------------------------------


def test_moments_give_the_mean_and_a_normal_interval() -> None:
    from banditrec.dashboard.stats import Z95, Moments

    values = [0.0, 1.0, 1.0, 0.0, 1.0, 3.5]
    moments = Moments()
    for v in values:
        moments.add(v)
    interval = moments.interval()
    assert interval is not None
    mean = sum(values) / len(values)
    half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    assert interval["mean"] == pytest.approx(mean, rel=1e-12)
    assert interval["low"] == pytest.approx(mean - half, rel=1e-12)
    assert interval["high"] == pytest.approx(mean + half, rel=1e-12)
    assert Moments().interval() is None


def test_latency_quantiles_interpolate_within_their_bucket() -> None:
    from banditrec.dashboard.stats import latency_quantile
    from banditrec.metrics import LATENCY_BUCKETS

    n = len(LATENCY_BUCKETS) + 1
    # 100 requests: 40 under 0.5 ms, 60 between 0.5 and 1 ms.
    cumulative = [40.0] + [100.0] * (n - 1)
    assert latency_quantile(cumulative, 0.2) == pytest.approx(0.00025)
    assert latency_quantile(cumulative, 0.7) == pytest.approx(0.0005 + 0.0005 * 0.5)
    # Beyond the last finite edge: that edge (Prometheus does the same).
    assert latency_quantile([0.0] * (n - 1) + [5.0], 0.5) == LATENCY_BUCKETS[-1]
    assert latency_quantile([0.0] * n, 0.5) is None
