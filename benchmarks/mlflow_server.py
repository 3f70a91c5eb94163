#!/usr/bin/env python3
"""Benchmark the deployed MLflow service against the guides' plain command.

Run it as root on a host the site (or the mlflow_service role) was applied to,
for example a test container:

    benchmarks/mlflow_server.py --podman h1-d12        # copies itself in, runs there
    python3 mlflow_server.py                           # on the host itself

It measures, side by side,
  (a) the command from the setup guides, with default settings:
      mlflow server --backend-store-uri sqlite:///TMP/mlflow.db --app-name basic-auth
      (port --baseline-port, throwaway directory, its own admin password; the
      basic-auth ini holds only what 3.17 requires: no cache, default workers)
  (b) the deployed service (systemd unit mlflow.service):
  - start to healthy: seconds from starting the server to GET /health = OK
  - idle PSS: Pss from /proc/PID/smaps_rollup summed over the server's processes
  - authenticated POST /api/2.0/mlflow/runs/log-metric requests/s with
    --concurrency keep-alive connections, for --duration seconds or
    --max-requests requests, whichever comes first (loopback only)
and prints a table with the ratios and pass/fail against the targets. The
service is restarted once; the benchmark experiments it creates are deleted.
Only the Python standard library is used; everything stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_START_S = 15.0
TARGET_PSS_MB = 700.0
TARGET_THROUGHPUT_RATIO = 10.0


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def request(port, method, path, body=None, auth=None, timeout=30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_healthy(port, timeout, proc=None):
    """Seconds until GET /health answers OK, polled every 0.1 s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy")
        try:
            status, text = request(port, "GET", "/health", timeout=2)
            if status == 200 and text.strip() == "OK":
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no OK from /health on port {port} within {timeout} s")


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root_pid):
    kids, pids, todo = children_map(), [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(kids.get(pid, []))
    return pids


def unit_pids(unit):
    cgroup = subprocess.run(["systemctl", "show", "-P", "ControlGroup", unit],
                            capture_output=True, text=True, check=True).stdout.strip()
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
        procs = Path(base + cgroup) / "cgroup.procs"
        if cgroup and procs.exists():
            return [int(p) for p in procs.read_text().split()]
    main_pid = int(subprocess.run(["systemctl", "show", "-P", "MainPID", unit],
                                  capture_output=True, text=True, check=True).stdout.strip())
    return process_tree(main_pid) if main_pid else []


def memory(pids):
    """(PSS MB, RSS MB, process count) summed over pids."""
    pss = rss = 0
    count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
            count += 1
        except OSError:
            continue
    return pss / 1024, rss / 1024, count


def throughput(port, auth, concurrency, duration, max_requests, pids_of):
    """Authenticated log-metric requests/s.

    Returns (rps, ok, errors, mean latency s, server CPU ms per request)."""
    status, text = request(port, "POST", "/api/2.0/mlflow/experiments/create",
                           {"name": f"benchmark-{secrets.token_hex(4)}"}, auth)
    if status != 200:
        raise RuntimeError(f"creating the benchmark experiment failed: {status} {text[:200]}")
    experiment_id = json.loads(text)["experiment_id"]
    status, text = request(port, "POST", "/api/2.0/mlflow/runs/create",
                           {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}, auth)
    if status != 200:
        raise RuntimeError(f"creating the benchmark run failed: {status} {text[:200]}")
    run_id = json.loads(text)["run"]["info"]["run_id"]

    lock = threading.Lock()
    counters = {"sent": 0, "ok": 0, "errors": 0, "latency": 0.0}
    deadline = time.monotonic() + duration

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json", "Authorization": auth}
        while time.monotonic() < deadline:
            with lock:
                if counters["sent"] >= max_requests:
                    break
                counters["sent"] += 1
                step = counters["sent"]
            body = json.dumps({"run_id": run_id, "key": "bench", "value": step * 0.5,
                               "timestamp": int(time.time() * 1000), "step": step})
            t0 = time.monotonic()
            try:
                conn.request("POST", "/api/2.0/mlflow/runs/log-metric", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                good = resp.status == 200
            except (OSError, http.client.HTTPException):
                good = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                counters["latency"] += time.monotonic() - t0
                counters["ok" if good else "errors"] += 1
        conn.close()

    cpu_before = cpu_seconds(pids_of())
    start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    elapsed = time.monotonic() - start
    cpu_used = cpu_seconds(pids_of()) - cpu_before
    request(port, "POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": experiment_id}, auth)
    done = counters["ok"] + counters["errors"]
    return (counters["ok"] / elapsed, counters["ok"], counters["errors"], counters["latency"] / max(done, 1),
            1000 * cpu_used / max(done, 1))


def cpu_seconds(pids):
    """CPU seconds (user+sys, including reaped children) used by pids so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            continue
    return total / ticks


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# --------------------------------------------------------------------------- the two servers
def measure_service(args):
    ini = configparser.ConfigParser()
    ini.read(args.auth_ini)
    username = os.environ.get("BENCH_USERNAME") or ini.get("mlflow", "admin_username", fallback="admin")
    password = os.environ.get("BENCH_PASSWORD") or ini.get("mlflow", "admin_password", fallback="")
    log(f"deployed service: restarting {args.unit}")
    subprocess.run(["systemctl", "stop", args.unit], check=True)
    t0 = time.monotonic()
    subprocess.run(["systemctl", "start", "--no-block", args.unit], check=True)
    wait_healthy(args.port, args.timeout)
    start_s = time.monotonic() - t0
    start_cpu = cpu_seconds(unit_pids(args.unit))
    time.sleep(args.settle)
    pss, rss, nproc = memory(unit_pids(args.unit))
    log(f"deployed service: healthy after {start_s:.1f} s, idle PSS {pss:.0f} MB over {nproc} processes; load test")
    rps, ok, errors, latency, cpu_ms = throughput(args.port, basic(username, password), args.concurrency,
                                                  args.duration, args.max_requests, lambda: unit_pids(args.unit))
    return {"start": start_s, "cpu": start_cpu, "pss": pss, "rss": rss, "procs": nproc, "rps": rps, "ok": ok,
            "errors": errors, "latency": latency, "cpu_ms": cpu_ms}


def measure_baseline(args):
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-baseline-", dir="/var/tmp"))
    password = secrets.token_urlsafe(18)
    (workdir / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{workdir}/basic_auth.db\n"
        f"admin_username = admin\nadmin_password = {password}\n")
    env = dict(os.environ,
               MLFLOW_AUTH_CONFIG_PATH=str(workdir / "basic_auth.ini"),
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
               # Not a performance setting: keeps the benchmark from phoning home.
               MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [f"{args.venv}/bin/mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
           "--app-name", "basic-auth", "--port", str(args.baseline_port)]
    log(f"guide command: {' '.join(cmd)}")
    logfile = open(workdir / "server.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=logfile, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_healthy(args.baseline_port, args.timeout, proc)
        start_s = time.monotonic() - t0
        start_cpu = cpu_seconds(process_tree(proc.pid))
        time.sleep(args.settle)
        pss, rss, nproc = memory(process_tree(proc.pid))
        log(f"guide command: healthy after {start_s:.1f} s, idle PSS {pss:.0f} MB over {nproc} processes; load test")
        rps, ok, errors, latency, cpu_ms = throughput(args.baseline_port, basic("admin", password), args.concurrency,
                                                      args.duration, args.max_requests, lambda: process_tree(proc.pid))
        return {"start": start_s, "cpu": start_cpu, "pss": pss, "rss": rss, "procs": nproc, "rps": rps, "ok": ok,
                "errors": errors, "latency": latency, "cpu_ms": cpu_ms}
    except Exception:
        logfile.flush()
        sys.stderr.write((workdir / "server.log").read_text(errors="replace")[-3000:])
        raise
    finally:
        pids = process_tree(proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=15)
                time.sleep(1)
            except subprocess.TimeoutExpired:
                pass
        logfile.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- report
def report(base, svc):
    rows = [
        ("start to healthy (s)", "start", "{:.1f}", f"<= {TARGET_START_S:.0f} s", svc["start"] <= TARGET_START_S),
        ("  CPU s used until healthy", "cpu", "{:.1f}", "", None),
        ("idle PSS, all processes (MB)", "pss", "{:.0f}", f"<= {TARGET_PSS_MB:.0f} MB", svc["pss"] <= TARGET_PSS_MB),
        ("idle RSS, all processes (MB)", "rss", "{:.0f}", "", None),
        ("processes", "procs", "{:d}", "", None),
        ("auth log-metric req/s (8 conn)", "rps", "{:.1f}", f">= {TARGET_THROUGHPUT_RATIO:.0f}x guide",
         base["rps"] > 0 and svc["rps"] / base["rps"] >= TARGET_THROUGHPUT_RATIO
         or base["rps"] == 0 and svc["rps"] > 0),
        ("  mean latency (s)", "latency", "{:.3f}", "", None),
        ("  server CPU ms per request", "cpu_ms", "{:.1f}", "", None),
        ("  requests OK / errors", None, None, "", None),
    ]
    print(f"{'metric':32} {'guide cmd':>12} {'service':>12} {'ratio':>8}  {'target':16} result")
    print("-" * 92)
    all_ok = True
    for label, key, fmt, target, ok in rows:
        if key is None:
            b, s, ratio = f"{base['ok']}/{base['errors']}", f"{svc['ok']}/{svc['errors']}", ""
        else:
            b, s = fmt.format(base[key]), fmt.format(svc[key])
            ratio = f"{svc[key] / base[key]:.2f}x" if base[key] else "-"
        result = "" if ok is None else ("PASS" if ok else "FAIL")
        all_ok = all_ok and ok is not False
        print(f"{label:32} {b:>12} {s:>12} {ratio:>8}  {target:16} {result}")
    if svc["errors"]:
        all_ok = False
        print(f"FAIL: the service answered {svc['errors']} requests with an error")
    print("-" * 92)
    print("overall:", "PASS" if all_ok else "FAIL")
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
          " (timings are wall-clock: a busy host inflates them; CPU seconds are load-independent)")
    return all_ok


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--podman", metavar="CONTAINER", help="copy this script into CONTAINER and run it there")
    parser.add_argument("--unit", default="mlflow.service")
    parser.add_argument("--port", type=int, default=5000, help="port of the deployed service (loopback)")
    parser.add_argument("--baseline-port", type=int, default=5099)
    parser.add_argument("--venv", default="/opt/mlflow/venv", help="venv whose mlflow runs the guide command")
    parser.add_argument("--auth-ini", default="/etc/mlflow/basic_auth.ini",
                        help="admin credentials of the service (or BENCH_USERNAME/BENCH_PASSWORD)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per load test")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per load test at most")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before memory is read")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds a server may take to get healthy")
    parser.add_argument("--skip-baseline", action="store_true", help="measure the service only")
    args = parser.parse_args()

    if args.podman:
        podman = shutil.which("podman") or "podman"
        subprocess.run([podman, "cp", __file__, f"{args.podman}:/tmp/mlflow_server_bench.py"], check=True)
        rest = [a for i, a in enumerate(sys.argv[1:])
                if a != "--podman" and not a.startswith("--podman=") and sys.argv[i] != "--podman"]
        return subprocess.run([podman, "exec", args.podman, "python3", "/tmp/mlflow_server_bench.py", *rest]).returncode

    if os.geteuid() != 0:
        sys.exit("run as root on the MLflow host (it restarts the unit and reads /proc of the service)")
    svc = measure_service(args)
    if args.skip_baseline:
        base = {k: 0 for k in svc}
    else:
        base = measure_baseline(args)
    return 0 if report(base, svc) else 1


if __name__ == "__main__":
    sys.exit(main())
