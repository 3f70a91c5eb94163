"""A real-browser check of the MLflow UI behind the nginx proxy.

One check, used two ways: `scripts/ui-check` (`make ui-check`, against the
sandbox by default, or any deployment given on the command line) and the
default Molecule scenario's `tests/test_ui.py`, which imports this module.

What it proves, as a user would see it:

1. As the admin, the `mlflow` client logs a uniquely named experiment with
   one run: a few params, one metric over several steps, a small text
   artifact.
2. Chromium (Debian's, driven by Playwright), signed in as the admin, shows
   that experiment in the experiments list, the run on the experiment's runs
   page, the params (names and values) on the run's overview, the metric's
   chart on the model metrics tab, and the artifact's name and content on the
   artifacts tab.
3. A READ user, in a fresh browser context, sees the run but cannot rename
   it: the server answers 403 to the rename, the dialog shows the error, and
   after a reload (and through the REST API, as the admin) the run keeps its
   name.
4. For the whole session: no HTTP response of 400 or more except that one
   403, no failed request, no console error but the browser's report of that
   403, no uncaught page error and no Content-Security-Policy violation
   (collected by a `securitypolicyviolation` listener in every page, so
   Report-Only policies count too). The JavaScript and CSS assets served
   through nginx are counted and must all have loaded.

A screenshot of each page goes to `<repo>/.artifacts/ui/<label>/NN-name.png`.
Every wait is bounded, and the whole check by an overall budget.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import requests
import urllib3

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"

# The whole check, and single steps, are bounded by these (seconds).
TOTAL_BUDGET = 110.0
STEP_TIMEOUT = 20.0
NAVIGATION_TIMEOUT = 30.0
API_TIMEOUT = 30.0

ARTIFACT_NAME = "ui-check-notes.txt"
METRIC_NAME = "ui_check_loss"
METRIC_STEPS = [0.9, 0.6, 0.45, 0.3, 0.25]
RENAME_PATH = "/ajax-api/2.0/mlflow/runs/update"

# The browser reports a refused request in the console; only this one, for
# the expected 403, is not an error of the UI.
EXPECTED_CONSOLE_403 = "the server responded with a status of 403"

# Runs in every page before the UI's own scripts: hands each CSP violation
# (enforced or report-only) to the check.
CSP_LISTENER = """
document.addEventListener('securitypolicyviolation', (e) => {
  window.__uiCheckCspViolation({
    directive: e.violatedDirective, effective: e.effectiveDirective,
    blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
    sample: e.sample, disposition: e.disposition, page: document.location.href,
  });
});
"""


class UICheckFailed(Exception):
    """The UI did not behave as a user expects; the message says what and where."""


@dataclass
class Target:
    """A deployment to check and the accounts to check it with."""

    url: str                       # what the browser opens, e.g. https://localhost:8443
    admin_user: str
    admin_password: str
    reader_user: str | None = None  # None: a temporary READ user is created
    reader_password: str | None = None
    api_url: str | None = None     # where the client and REST calls go (default: url)
    host_resolver_rules: str | None = None  # chromium's --host-resolver-rules
    label: str = "sandbox"         # screenshots go to .artifacts/ui/<label>/
    keep_experiment: bool = False

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def api_base(self) -> str:
        return (self.api_url or self.url).rstrip("/")


@dataclass
class Report:
    """What the check saw; `lines` is what it prints."""

    screenshot_dir: Path
    lines: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    # A first browser session that failed only on a script or style sheet the
    # browser could not fetch (its failure, then the assets): see browse().
    retried: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.lines.append(text)
        print(f"ui-check: {text}", flush=True)


@dataclass
class NetworkLog:
    """Everything the browser saw go wrong, for the whole session."""

    bad_responses: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    # Of those, the scripts and style sheets the browser could not fetch at
    # all (a net:: error, no HTTP status): the transport, not the UI.
    failed_assets: list[str] = field(default_factory=list)
    console_errors: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[dict] = field(default_factory=list)
    assets: dict[str, int] = field(default_factory=dict)   # url -> status
    responses: int = 0
    leaving_page: bool = False
    # The policy the UI's page came with, for the report.
    document_csp: str | None = None

    def watch(self, context) -> None:
        context.on("response", self._response)
        context.on("requestfailed", self._request_failed)
        context.on("page", self._page)
        context.expose_binding("__uiCheckCspViolation",
                               lambda _source, violation: self.csp_violations.append(violation))
        context.add_init_script(CSP_LISTENER)

    def _page(self, page) -> None:
        page.on("console", lambda msg: self._console(msg))
        page.on("pageerror", lambda error: self.page_errors.append(f"{page.url}: {error}"))

    def _response(self, response) -> None:
        self.responses += 1
        request = response.request
        if request.resource_type == "document":
            self.document_csp = response.headers.get("content-security-policy")
        if request.resource_type in ("script", "stylesheet"):
            self.assets[response.url] = response.status
        if response.status >= 400:
            self.bad_responses.append((response.status, request.method, response.url, request.post_data))

    @contextlib.contextmanager
    def leaving(self) -> Iterator[None]:
        """The check itself reloads or closes a page: requests still in flight
        (the UI polls, and loads its telemetry worker late) are aborted by the
        browser, which is not the UI's fault. Playwright's sync API delivers
        the browser's events during the call that causes them."""
        self.leaving_page = True
        try:
            yield
        finally:
            self.leaving_page = False

    def _request_failed(self, request) -> None:
        if not (self.leaving_page and request.failure == "net::ERR_ABORTED"):
            self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")
            if request.resource_type in ("script", "stylesheet") and str(request.failure).startswith("net::"):
                self.failed_assets.append(f"{request.url}: {request.failure}")

    def _console(self, msg) -> None:
        if msg.type == "error":
            self.console_errors.append((msg.text, (msg.location or {}).get("url", "")))


def _quiet_insecure_tls() -> None:
    # The deployments under test use self-signed certificates on purpose.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)


class Check:
    """One run of the check against one target."""

    def __init__(self, target: Target):
        self.t = target
        self.started = time.monotonic()
        self.deadline = self.started + TOTAL_BUDGET
        self.report = Report(screenshot_dir=ARTIFACTS / target.label)
        self.net = NetworkLog()
        self.admin = requests.Session()
        self.admin.auth = (target.admin_user, target.admin_password)
        self.suffix = uuid.uuid4().hex[:10]
        self.experiment_name = f"ui-check-{self.suffix}"
        self.run_name = f"ui-check-run-{self.suffix}"
        self.params = {"learning_rate": "0.01", "optimizer": "adam", "layers": "3"}
        self.artifact_text = f"ui-check artifact {self.suffix}\nsecond line of the preview\n"
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.rename_refused: tuple[str, str] | None = None  # (url, post data) of the expected 403
        self._shot = 0

    # --- bounded waiting -------------------------------------------------------
    def ms(self, seconds: float = STEP_TIMEOUT) -> float:
        """A step's timeout in milliseconds, cut to what is left of the budget."""
        left = self.deadline - time.monotonic()
        if left <= 1:
            raise UICheckFailed(f"the check ran out of its overall budget of {TOTAL_BUDGET:.0f} s")
        return min(seconds, left) * 1000

    def step(self, page, what: str, action: Callable[[], object]) -> None:
        """Run one bounded Playwright wait or action; if it fails or times out,
        fail naming `what`, with a screenshot of the page as it was."""
        from playwright.sync_api import Error as PlaywrightError

        try:
            action()
        except PlaywrightError as error:
            shot = self.screenshot(page, "failed")
            first_line = str(error).splitlines()[0]
            raise UICheckFailed(f"{what}: failed ({first_line}); page {page.url}, screenshot {shot}") from None

    def screenshot(self, page, name: str) -> Path:
        self._shot += 1
        path = self.report.screenshot_dir / f"{self._shot:02d}-{name}.png"
        try:
            page.screenshot(path=str(path), full_page=False, timeout=10_000)
        except Exception as error:  # a screenshot must not hide the real failure
            print(f"ui-check: screenshot {path.name} failed: {error}", file=sys.stderr)
        self.report.screenshots.append(path)
        return path

    # --- REST API, as the admin ---------------------------------------------------
    def api(self, method: str, path: str, session: requests.Session | None = None, **kwargs) -> requests.Response:
        # verify per request: a session's own setting loses to REQUESTS_CA_BUNDLE.
        return (session or self.admin).request(method, self.t.api_base + path, timeout=API_TIMEOUT,
                                               verify=False, **kwargs)

    def preflight(self) -> None:
        try:
            response = self.api("GET", "/api/2.0/mlflow/users/get", params={"username": self.t.admin_user})
        except requests.RequestException as error:
            raise UICheckFailed(f"cannot reach MLflow at {self.t.api_base}: {error}") from None
        if response.status_code != 200:
            raise UICheckFailed(f"admin sign-in as {self.t.admin_user!r} at {self.t.api_base}: "
                                f"HTTP {response.status_code} {response.text[:200]}")
        if not response.json().get("user", {}).get("is_admin"):
            raise UICheckFailed(f"{self.t.admin_user!r} is not an MLflow admin")
        self.report.note(f"admin {self.t.admin_user!r} signed in at {self.t.api_base}")

    @contextlib.contextmanager
    def reader(self) -> Iterator[tuple[str, str]]:
        """The READ user: the one given, or a temporary one deleted afterwards
        (the server gives it its default permission)."""
        if self.t.reader_user:
            yield self.t.reader_user, self.t.reader_password or ""
            return
        name = f"ui-check-reader-{self.suffix}"
        password = secrets.token_urlsafe(24)
        created = self.api("POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password})
        if created.status_code != 200:
            raise UICheckFailed(f"creating the temporary user {name!r}: HTTP {created.status_code} {created.text[:200]}")
        self.report.note(f"temporary user {name!r} created (server's default permission)")
        try:
            yield name, password
        finally:
            self.cleanup(f"deleting the temporary user {name!r}",
                         lambda: self.api("DELETE", "/api/2.0/mlflow/users/delete", json={"username": name}))

    def cleanup(self, what: str, call: Callable[[], requests.Response]) -> None:
        """A clean-up call; a failure is reported, and raised unless another
        failure is already on its way (which it must not hide)."""
        try:
            response = call()
            ok, detail = response.status_code == 200, f"HTTP {response.status_code} {response.text[:200]}"
        except requests.RequestException as error:
            ok, detail = False, str(error)
        if ok:
            self.report.note(f"{what}: done")
            return
        message = f"{what}: {detail}"
        if sys.exc_info()[0] is None:
            raise UICheckFailed(message)
        print(f"ui-check: also failed: {message}", file=sys.stderr)

    @contextlib.contextmanager
    def tracking_credentials(self) -> Iterator[None]:
        """The mlflow client reads its credentials from the environment: set them
        for the client calls only, and put the previous values back."""
        wanted = {"MLFLOW_TRACKING_USERNAME": self.t.admin_user,
                  "MLFLOW_TRACKING_PASSWORD": self.t.admin_password,
                  "MLFLOW_TRACKING_INSECURE_TLS": "true"}
        saved = {key: os.environ.get(key) for key in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def log_run(self) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        # The client prints "View run ... at" links: not this check's output.
        with self.tracking_credentials(), contextlib.redirect_stdout(io.StringIO()):
            client = MlflowClient(tracking_uri=self.t.api_base)
            self.experiment_id = client.create_experiment(self.experiment_name)
            run = client.create_run(self.experiment_id, run_name=self.run_name)
            self.run_id = run.info.run_id
            now = int(time.time() * 1000)
            client.log_batch(self.run_id,
                             params=[Param(k, v) for k, v in self.params.items()],
                             metrics=[Metric(METRIC_NAME, v, now + i, i) for i, v in enumerate(METRIC_STEPS)])
            client.log_text(self.run_id, self.artifact_text, ARTIFACT_NAME)
            client.set_terminated(self.run_id)
        self.report.note(f"logged experiment {self.experiment_name!r} (id {self.experiment_id}), run "
                         f"{self.run_name!r} ({self.run_id}): {len(self.params)} params, metric "
                         f"{METRIC_NAME!r} over {len(METRIC_STEPS)} steps, artifact {ARTIFACT_NAME!r}")

    def run_name_now(self) -> str:
        response = self.api("GET", "/api/2.0/mlflow/runs/get", params={"run_id": self.run_id})
        if response.status_code != 200:
            raise UICheckFailed(f"runs/get as admin: HTTP {response.status_code} {response.text[:200]}")
        return response.json()["run"]["info"]["run_name"]

    def delete_experiment(self) -> None:
        if self.experiment_id is None or self.t.keep_experiment:
            return
        self.cleanup(f"deleting experiment {self.experiment_name!r}",
                     lambda: self.api("POST", "/api/2.0/mlflow/experiments/delete",
                                      json={"experiment_id": self.experiment_id}))

    # --- the browser ---------------------------------------------------------------
    def new_context(self, browser, user: str, password: str):
        context = browser.new_context(
            http_credentials={"username": user, "password": password},
            ignore_https_errors=True,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(STEP_TIMEOUT * 1000)
        context.set_default_navigation_timeout(NAVIGATION_TIMEOUT * 1000)
        self.net.watch(context)
        return context

    def goto(self, page, fragment: str) -> None:
        url = f"{self.t.base}/#{fragment}"
        try:
            page.goto(url, wait_until="load", timeout=self.ms(NAVIGATION_TIMEOUT))
        except Exception as error:
            raise UICheckFailed(f"opening {url}: {str(error).splitlines()[0]}") from None

    def run_url(self, tab: str = "") -> str:
        return f"/experiments/{self.experiment_id}/runs/{self.run_id}{tab}"

    def as_admin(self, browser) -> None:
        context = self.new_context(browser, self.t.admin_user, self.t.admin_password)
        page = context.new_page()

        # Experiments list.
        self.goto(page, "/experiments")
        self.step(page, f"experiments list: experiment {self.experiment_name!r}",
                    lambda: page.get_by_role("link", name=self.experiment_name, exact=True)
                    .first.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "experiments")
        self.report.note(f"experiments list shows {self.experiment_name!r}")

        # The experiment's runs.
        self.goto(page, f"/experiments/{self.experiment_id}/runs")
        self.step(page, f"experiment page: run {self.run_name!r} in the runs table",
                    lambda: page.get_by_role("link", name=self.run_name, exact=True)
                    .first.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "experiment")
        self.report.note(f"experiment page lists run {self.run_name!r}")

        # Run overview: name and every param with its value.
        self.goto(page, self.run_url())
        self.step(page, f"run page: heading {self.run_name!r}",
                    lambda: page.get_by_role("heading", name=self.run_name, exact=True)
                    .wait_for(state="visible", timeout=self.ms()))
        for key, value in self.params.items():
            row = (page.get_by_role("row")
                   .filter(has=page.get_by_role("cell", name=key, exact=True))
                   .filter(has=page.get_by_role("cell", name=value, exact=True)))
            self.step(page, f"run overview: param row {key} = {value}",
                        lambda row=row: row.first.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "run-overview")
        self.report.note(f"run overview shows params {', '.join(f'{k}={v}' for k, v in self.params.items())}")

        # Model metrics: the chart of the metric, with its line drawn.
        self.step(page, "run page: open the 'Model metrics' tab",
                  lambda: page.get_by_role("tab", name="Model metrics", exact=True).click(timeout=self.ms()))
        self.step(page, "model metrics tab: URL",
                    lambda: page.wait_for_url("**/model-metrics", timeout=self.ms()))
        self.step(page, f"model metrics tab: chart title {METRIC_NAME!r}",
                    lambda: page.get_by_text(METRIC_NAME, exact=True).first.wait_for(state="visible", timeout=self.ms()))
        chart = page.locator(".js-plotly-plot svg.main-svg, canvas")
        self.step(page, "model metrics tab: a chart (svg or canvas)",
                    lambda: chart.first.wait_for(state="visible", timeout=self.ms()))
        self.step(page, f"model metrics tab: the line of {METRIC_NAME!r} drawn in the chart",
                    lambda: page.locator(".js-plotly-plot .scatterlayer path.js-line")
                    .first.wait_for(state="attached", timeout=self.ms()))
        self.step(page, f"model metrics tab: legend/label of run {self.run_name!r}",
                    lambda: page.get_by_text(f"{self.run_name} ({METRIC_NAME})", exact=True)
                    .first.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "metrics")
        self.report.note(f"model metrics tab shows a chart of {METRIC_NAME!r} ({chart.count()} svg/canvas elements)")

        # Artifacts: the file in the tree, then its preview.
        self.step(page, "run page: open the 'Artifacts' tab",
                  lambda: page.get_by_role("tab", name="Artifacts", exact=True).click(timeout=self.ms()))
        self.step(page, "artifacts tab: URL", lambda: page.wait_for_url("**/artifacts", timeout=self.ms()))
        name = page.get_by_text(ARTIFACT_NAME, exact=True).first
        self.step(page, f"artifacts tab: file {ARTIFACT_NAME!r}",
                    lambda: name.wait_for(state="visible", timeout=self.ms()))
        self.step(page, f"artifacts tab: select {ARTIFACT_NAME!r}", lambda: name.click(timeout=self.ms()))
        first_line = self.artifact_text.splitlines()[0]
        self.step(page, f"artifacts tab: preview of {ARTIFACT_NAME!r} showing {first_line!r}",
                    lambda: page.locator("pre code").filter(has_text=first_line)
                    .first.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "artifacts")
        self.report.note(f"artifacts tab shows {ARTIFACT_NAME!r} and previews its content")
        with self.net.leaving():
            context.close()

    def as_reader(self, browser, user: str, password: str) -> None:
        context = self.new_context(browser, user, password)
        page = context.new_page()
        self.goto(page, self.run_url())
        heading = page.get_by_role("heading", name=self.run_name, exact=True)
        self.step(page, f"run page as {user!r}: heading {self.run_name!r}",
                    lambda: heading.wait_for(state="visible", timeout=self.ms()))
        self.screenshot(page, "reader-run")
        self.report.note(f"READ user {user!r} sees run {self.run_name!r}")

        # Rename through the run's menu; the server must refuse it.
        new_name = f"{self.run_name}-renamed"
        self.step(page, "run page: open the run's menu (⋮)",
                  lambda: page.get_by_test_id("overflow-menu-trigger").click(timeout=self.ms()))
        self.step(page, "run menu: 'Rename'",
                  lambda: page.get_by_role("menuitem", name="Rename", exact=True).click(timeout=self.ms()))
        dialog = page.get_by_role("dialog")
        self.step(page, "rename dialog", lambda: dialog.wait_for(state="visible", timeout=self.ms()))
        self.step(page, "rename dialog: type the new name",
                  lambda: dialog.locator("input").first.fill(new_name, timeout=self.ms()))
        try:
            with page.expect_response(lambda r: urlsplit(r.url).path == RENAME_PATH,
                                      timeout=self.ms()) as refused:
                dialog.get_by_role("button", name="Save", exact=True).click(timeout=self.ms())
        except Exception as error:
            shot = self.screenshot(page, "failed")
            raise UICheckFailed(f"rename as {user!r}: no request to {RENAME_PATH} ({str(error).splitlines()[0]}); "
                                f"screenshot {shot}") from None
        response = refused.value
        body = response.request.post_data or ""
        if response.status != 403:
            raise UICheckFailed(f"rename as READ user {user!r}: {RENAME_PATH} answered {response.status}, not 403")
        try:
            sent = json.loads(body)
        except ValueError:
            sent = {}
        if sent.get("run_id") != self.run_id or sent.get("run_name") != new_name:
            raise UICheckFailed(f"rename as {user!r}: unexpected request body {body[:200]}")
        self.rename_refused = (response.url, body)
        alert = dialog.get_by_role("alert")
        self.step(page, "rename dialog: an error message after the 403",
                    lambda: alert.first.wait_for(state="visible", timeout=self.ms()))
        message = alert.first.inner_text().strip()
        if not message:
            raise UICheckFailed("rename dialog: the error shown after the 403 is empty")
        self.screenshot(page, "refused-edit")
        self.report.note(f"rename by {user!r} refused: {RENAME_PATH} -> 403, dialog says {message!r}")

        page.keyboard.press("Escape")
        with self.net.leaving():
            self.step(page, "reload the run page",
                      lambda: page.reload(wait_until="load", timeout=self.ms(NAVIGATION_TIMEOUT)))
        self.step(page, f"run page after reload: heading still {self.run_name!r}",
                    lambda: heading.wait_for(state="visible", timeout=self.ms()))
        if page.get_by_role("heading", name=new_name, exact=True).count():
            raise UICheckFailed(f"run page after reload shows the refused name {new_name!r}")
        self.screenshot(page, "reader-after-reload")
        current = self.run_name_now()
        if current != self.run_name:
            raise UICheckFailed(f"the run was renamed to {current!r} although the server answered 403")
        self.report.note(f"after reload the run is still {self.run_name!r} (UI and REST API as admin)")
        with self.net.leaving():
            context.close()

    def browse(self) -> None:
        """The browser session; once more, on a fresh browser, when the only
        thing that went wrong is a script or style sheet the browser could
        not fetch at all (seen once in CI: net::ERR_TOO_MANY_RETRIES on a CSS
        chunk, which broke the page). The first session's failure is reported
        (Report.retried, and printed), never hidden; any other failure, and a
        second failure of any kind, fails the check."""
        failure = None
        try:
            self._browse_once()
        except UICheckFailed as error:
            failure = error
        if not self._only_unfetchable_assets():
            if failure:
                raise failure
            return
        first = str(failure).splitlines()[0] if failure else "the session ran to its end"
        self.report.retried = [first] + self.net.failed_assets
        self.report.note("the browser could not fetch " + "; ".join(self.net.failed_assets)
                         + f" ({first}): one more browser session")
        self.net = NetworkLog()
        self.rename_refused = None
        self._browse_once()

    def _only_unfetchable_assets(self) -> bool:
        net = self.net
        allowed = (403, "POST", *self.rename_refused) if self.rename_refused else None
        return (bool(net.failed_assets) and len(net.failed_assets) == len(net.failed_requests)
                and all(response == allowed for response in net.bad_responses))

    def _browse_once(self) -> None:
        from playwright.sync_api import sync_playwright

        args = ["--no-sandbox"]
        if self.t.host_resolver_rules:
            args.append(f"--host-resolver-rules={self.t.host_resolver_rules}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, timeout=30_000)
            try:
                self.as_admin(browser)
                with self.reader() as (user, password):
                    self.as_reader(browser, user, password)
            finally:
                browser.close()

    # --- the whole session's network and console -------------------------------------------
    def session_problems(self, finished: bool = True) -> list[str]:
        """What went wrong in the browser session; `finished`: the session ran
        to its end, so the refused rename's 403 and the assets must be there."""
        problems = []
        # Exactly one response of 400 or more is allowed: the refused rename
        # (its URL and body, as sent by the READ user's browser).
        allowed = [r for r in self.net.bad_responses
                   if self.rename_refused and r == (403, "POST", *self.rename_refused)]
        if finished and len(allowed) != 1:
            problems.append(f"expected exactly one 403 (the refused rename), saw {len(allowed)}")
        for status, method, url, _body in self.net.bad_responses[:]:
            if allowed and (status, method, url, _body) == allowed[0]:
                continue
            problems.append(f"HTTP {status} for {method} {url}")
        problems += [f"request failed: {line}" for line in self.net.failed_requests]
        for text, url in self.net.console_errors:
            if EXPECTED_CONSOLE_403 in text and self.rename_refused and url == self.rename_refused[0]:
                continue
            problems.append(f"console error: {text[:300]} ({url})")
        problems += [f"uncaught page error: {error[:300]}" for error in self.net.page_errors]
        # The same violation repeats on every page: each kind once, counted.
        violations: dict[str, int] = {}
        for v in self.net.csp_violations:
            where = v.get("source") or v.get("page") or ""
            kind = (f"CSP violation ({v.get('disposition')}): {v.get('effective') or v.get('directive')} "
                    f"blocked {v.get('blocked') or '(inline)'} from {where.split('#')[0]}")
            violations[kind] = violations.get(kind, 0) + 1
        problems += [f"{kind} (x{count})" for kind, count in violations.items()]
        assets = self.net.assets
        broken = {url: status for url, status in assets.items() if not 200 <= status < 400}
        scripts = sum(1 for url in assets if url.endswith(".js"))
        styles = sum(1 for url in assets if url.endswith(".css"))
        if finished and (not scripts or not styles):
            problems.append(f"no JavaScript or CSS assets seen ({scripts} js, {styles} css)")
        problems += [f"asset {url}: HTTP {status}" for url, status in broken.items()]
        return problems

    def verdict(self) -> None:
        problems = self.session_problems()
        assets = self.net.assets
        scripts = sum(1 for url in assets if url.endswith(".js"))
        styles = sum(1 for url in assets if url.endswith(".css"))
        self.report.note(f"network: {self.net.responses} responses, {scripts} js and {styles} css assets loaded "
                         f"through {self.t.base}, {len(self.net.bad_responses)} response(s) >= 400 "
                         f"(allowed: the refused rename's 403), {len(self.net.console_errors)} console error(s), "
                         f"{len(self.net.csp_violations)} CSP violation(s), {len(self.net.page_errors)} page error(s)")
        self.report.note(f"the UI's page came with Content-Security-Policy: {self.net.document_csp or '(none)'}")
        if problems:
            raise UICheckFailed("the browser session was not clean:\n  " + "\n  ".join(problems))

    def run(self) -> Report:
        _quiet_insecure_tls()
        shutil.rmtree(self.report.screenshot_dir, ignore_errors=True)
        self.report.screenshot_dir.mkdir(parents=True)
        try:
            self.preflight()
            self.log_run()
            try:
                self.browse()
            except UICheckFailed as failure:
                # A page that did not render often has its cause here (a CSP
                # violation, a failed asset, a page error): say so too.
                seen = self.session_problems(finished=False)
                if seen:
                    raise UICheckFailed(f"{failure}\n  seen in the browser until then:\n  "
                                        + "\n  ".join(seen)) from None
                raise
            self.verdict()
        finally:
            try:
                self.delete_experiment()
            finally:
                self.report.seconds = time.monotonic() - self.started
                self.report.note(f"screenshots ({len(self.report.screenshots)}): {self.report.screenshot_dir}/")
                self.report.note(f"took {self.report.seconds:.1f} s")
        return self.report


def run_check(target: Target) -> Report:
    """Run the whole check; raises UICheckFailed saying what the UI got wrong."""
    return Check(target).run()


# --- command line ------------------------------------------------------------------------
def _read_secret(path: str, what: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as error:
        raise SystemExit(f"ui-check: cannot read the {what} from {path}: {error.strerror}")
    if not value:
        raise SystemExit(f"ui-check: the {what} file {path} is empty")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ui-check",
        description="Open the MLflow UI in a real browser (Debian's chromium) and check what a user sees. "
                    "Default target: the sandbox (scripts/sandbox up).")
    parser.add_argument("--url", default="https://localhost:8443",
                        help="the UI's address, as users type it (default: %(default)s)")
    parser.add_argument("--api-url", help="address for the mlflow client and REST calls (default: --url)")
    parser.add_argument("--resolve", metavar="NAME=IP",
                        help="make the browser reach NAME at IP (chromium --host-resolver-rules)")
    parser.add_argument("--admin-user", default="admin", help="an MLflow admin (default: %(default)s)")
    parser.add_argument("--admin-password-file", default=str(REPO / ".sandbox" / "admin_password"),
                        help="file holding the admin's password (default: the sandbox's)")
    parser.add_argument("--reader-user", help="a user with READ only; default: a temporary user, deleted afterwards")
    parser.add_argument("--reader-password-file", help="file holding --reader-user's password")
    parser.add_argument("--label", default="sandbox",
                        help="screenshots go to .artifacts/ui/LABEL/ (default: %(default)s)")
    parser.add_argument("--keep-experiment", action="store_true", help="leave the logged experiment in place")
    args = parser.parse_args(argv)
    if bool(args.reader_user) != bool(args.reader_password_file):
        parser.error("--reader-user and --reader-password-file go together")
    rules = None
    if args.resolve:
        name, sep, ip = args.resolve.partition("=")
        if not sep or not name or not ip:
            parser.error("--resolve takes NAME=IP")
        rules = f"MAP {name} {ip}"
    target = Target(
        url=args.url, api_url=args.api_url, host_resolver_rules=rules,
        admin_user=args.admin_user, admin_password=_read_secret(args.admin_password_file, "admin password"),
        reader_user=args.reader_user,
        reader_password=_read_secret(args.reader_password_file, "reader password") if args.reader_user else None,
        label=args.label, keep_experiment=args.keep_experiment,
    )
    try:
        run_check(target)
    except UICheckFailed as failure:
        print(f"ui-check: FAILED: {failure}", file=sys.stderr)
        return 1
    print("ui-check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
