"""The load suite (benchmarks/load.py, issue #11) against the primary server
on PostgreSQL, through its HTTPS proxy: 16 concurrent clients log metrics
and params (log-batch and single calls) and artifacts, one of 110 MB; every
value is read back. The script fails on lost data, any 4xx/5xx or a
"database is locked" answer; its figures are listed at the end of the run
(FIGURE lines). SQLite: the same command against the sandbox (README)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import FIGURES, IP, PRIMARY, secret

LOAD = Path(__file__).resolve().parents[3] / "benchmarks" / "load.py"


def test_load_through_the_proxy_loses_nothing(tmp_path):
    figures = tmp_path / "load.json"
    out = subprocess.run(
        [sys.executable, str(LOAD), "--url", f"https://{IP[PRIMARY]}", "--insecure",
         "--podman", PRIMARY, "--tmpdir", str(tmp_path), "--timeout", "600", "--json", str(figures)],
        env={**os.environ, "MLFLOW_LOAD_PASSWORD": secret("admin_password")},
        capture_output=True, text=True, timeout=700)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    fig = json.loads(figures.read_text())
    overall = fig["latency_ms"]["overall"]
    FIGURES.append(f"load on PostgreSQL, 16 clients: {fig['req_per_s']:.1f} req/s, p50 {overall['p50']:.0f} ms, "
                   f"p99 {overall['p99']:.0f} ms, {fig['server_cpu_ms_per_req']:.1f} ms server CPU per request, "
                   f"ratio to the CPU ceiling {fig['ceiling_ratio']:.2f}, "
                   f"{fig['expected_metrics']} metric values, {fig['expected_params']} params and "
                   f"{fig['expected_artifacts']} artifacts stored, 0 lost")
