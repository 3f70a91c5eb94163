"""No secret in any process's arguments, ever: prepare.yml started a sampler
on each MLflow host that recorded every distinct command line from before
the first converge on (migrations, idempotence, restore, the re-runs of the
other checks, which run before this file). Neither the database password
(raw, URL-encoded or %-escaped) nor the admin password may appear."""
from urllib.parse import quote

from conftest import secret


def forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote(value, safe="").replace("%", "%%"), value.replace("%", "%%")}


def test_no_secret_in_any_process_arguments(host):
    samples = host.file("/root/argv-samples.txt")
    assert samples.exists and samples.mode == 0o600
    # The checks themselves hand secrets to a host only base64-encoded, so
    # every command line counts, the checks' own too.
    lines = samples.content_string.splitlines()
    # The sampler saw the work it guards: the migrations ran while it ran.
    assert any("systemd-run" in line and "EnvironmentFile" in line for line in lines), len(lines)
    assert any("/opt/mlflow/" in line for line in lines), len(lines)
    for name in ("database_password", "admin_password"):
        for form in forms(secret(name)):
            leaks = [line for line in lines if form in line]
            assert not leaks, f"{name} seen in a process's arguments: {len(leaks)} command line(s)"
