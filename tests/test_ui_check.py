"""The UI check's one extra browser session (scripts/ui_check.py, browse()):
given only for a script or style sheet the browser could not fetch at all,
reported, and never a second time. The browser sessions are stand-ins that
record into the check's network log what a real session would have seen."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from ui_check import Check, Target, UICheckFailed  # noqa: E402

CSS = "https://mlflow.test/static-files/static/css/5439.24118451.chunk.css"


def check_with_sessions(*sessions):
    """A Check whose browser sessions are the given functions, in order."""
    check = Check(Target(url="https://mlflow.test", admin_user="admin", admin_password="x" * 20))
    calls = []

    def browse_once():
        calls.append(len(calls))
        sessions[len(calls) - 1](check)

    check._browse_once = browse_once
    return check, calls


def asset_reset(check):
    check.net.failed_requests.append(f"GET {CSS}: net::ERR_TOO_MANY_RETRIES")
    check.net.failed_assets.append(f"{CSS}: net::ERR_TOO_MANY_RETRIES")
    raise UICheckFailed("experiments list: failed (Timeout 20000ms exceeded)")


def asset_reset_at_the_end(check):
    check.rename_refused = ("https://mlflow.test/ajax-api/2.0/mlflow/runs/update", "{}")
    check.net.bad_responses.append((403, "POST", *check.rename_refused))
    check.net.failed_requests.append(f"GET {CSS}: net::ERR_CONNECTION_RESET")
    check.net.failed_assets.append(f"{CSS}: net::ERR_CONNECTION_RESET")


def http_error(check):
    check.net.bad_responses.append((500, "GET", CSS, None))
    check.net.failed_requests.append(f"GET {CSS}: net::ERR_ABORTED")
    raise UICheckFailed("experiments list: failed")


def api_call_reset(check):
    # A failed request of the UI's own (not an asset): the server's fault.
    check.net.failed_requests.append("POST https://mlflow.test/ajax-api/2.0/mlflow/runs/search: net::ERR_CONNECTION_RESET")
    check.net.failed_requests.append(f"GET {CSS}: net::ERR_CONNECTION_RESET")
    check.net.failed_assets.append(f"{CSS}: net::ERR_CONNECTION_RESET")
    raise UICheckFailed("experiment page: failed")


def clean(check):
    pass


@pytest.mark.parametrize("first", [asset_reset, asset_reset_at_the_end])
def test_an_unfetchable_asset_gets_one_more_session_and_is_reported(first):
    check, calls = check_with_sessions(first, clean)
    check.browse()
    assert calls == [0, 1]
    assert check.report.retried and CSS in " ".join(check.report.retried)
    assert not check.net.failed_requests, "the second session's log must replace the first's"
    assert any("one more browser session" in line for line in check.report.lines)


def test_a_second_failure_fails_the_check():
    check, calls = check_with_sessions(asset_reset, asset_reset)
    with pytest.raises(UICheckFailed):
        check.browse()
    assert calls == [0, 1]


@pytest.mark.parametrize("first", [http_error, api_call_reset, clean])
def test_anything_else_gets_no_second_session(first):
    check, calls = check_with_sessions(first, clean)
    if first is clean:
        check.browse()
    else:
        with pytest.raises(UICheckFailed):
            check.browse()
    assert calls == [0]
    assert not check.report.retried
