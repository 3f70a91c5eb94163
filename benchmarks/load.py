#!/usr/bin/env python3
"""Bounded load test of a deployed MLflow tracking server, through its HTTPS proxy.

Run it from the controller (or any host that reaches the proxy), for example
against the sandbox host (scripts/sandbox up; self-signed cert, HTTPS on
loopback port 8443) or a test host:

    benchmarks/load.py --url https://localhost:8443 --insecure \\
        --password-file .sandbox/admin_password --podman mlflow-sandbox
    MLFLOW_LOAD_PASSWORD=... benchmarks/load.py --url https://mlflow.test --cacert cert.pem --json load.json

It creates one experiment and lets --clients (16) concurrent clients, one
keep-alive HTTPS session each, create a run and log into it through the plain
REST API:
  - --metrics (300) metric values over --metric-keys (10) keys and --params (100)
    params; a --single-share (0.2) of each with runs/log-metric and
    runs/log-parameter, the rest with runs/log-batch (--batch-size 50 per request)
  - --artifacts (3) small artifacts (1 KB to 256 KB), PUT to the server's
    proxied artifact store (mlflow-artifacts:/...)
  - client 0 also uploads one --big-artifact-mb (110) MB artifact, streamed from a
    temp file of random bytes (0 = none)
  - runs/update FINISHED at the end
in random order. Then it reads everything back: each key's metric history
(every step and value), the run's params, the artifact listings (sizes) and
every artifact's content (the big one streamed, by SHA-256). Afterwards the
run's artifacts and the experiment are deleted (--keep: left in place; the
deleted experiment's rows go with the next `mlflow gc`).

Every request's latency and status are recorded. It prints a table: requests,
duration, throughput (req/s), p50/p95/p99 latency overall and per kind,
big artifact transfer rates, and the checks:
  - nothing lost: every metric value, param and artifact stored, and nothing else
  - no 5xx, no 4xx, no other error (redirects, connection errors, timeouts)
  - no response body containing "database is locked" (SQLite under load)
  - the load done in time: clients start no request later than min(120 s, a
    quarter of --timeout) before --timeout, leaving time for the read-back; at
    --timeout a hard stop deletes the experiment and exits (status 3)
With --podman NAME (a container running mlflow.service) or
--server-cpu-command CMD, the server's CPU time over the load is read
(user + system time of the unit's process tree, reaped children included,
from /proc: it works with cgroup v1 and v2 alike) and the throughput is put
against the machine's
limit: ceiling req/s = cores / server CPU s per request, ratio = req/s / ceiling
(the share of the cores the server used; nginx not included). With --podman
(the container shares this machine's cores with this client) nginx's CPU is
read too, and two more figures say where the rest of the cores went: the
machine's busy share, (server + nginx + client CPU) / (cores x duration), and
the ratio to what nginx and the client left the server,
server CPU / (cores x duration - nginx CPU - client CPU).

The script talks HTTP(S) to --url only (no redirects followed, no proxy from
the environment); the password comes from --password-file or the environment
variable MLFLOW_LOAD_PASSWORD, never from the command line, and is never
printed. It uses the Python standard library and requests; it works the same
for SQLite and PostgreSQL backends and for S3 or local artifact stores. Exit
status: 0 all checks pass, 1 a check failed, 2 setup failed, 3 hard timeout.
Idle memory and single-endpoint throughput: benchmarks/mlflow_server.py.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import hashlib
import itertools
import json
import math
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import requests

API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
LOCKED = "database is locked"
CHUNK = 1 << 20
MB = 1e6
# Latency rows of the table: kind -> label.
KINDS = {
    "batch": "runs/log-batch",
    "metric": "runs/log-metric",
    "param": "runs/log-parameter",
    "artifact": "artifact PUT (small)",
    "big-artifact": "artifact PUT (big)",
    "run": "runs/create, runs/update",
}


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[load] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def artifact_root(artifact_uri):
    """The mlflow-artifacts path of a run's artifact_uri, e.g. '1/RUNID/artifacts'.

    None when the server does not proxy artifacts (s3://..., file:...): the
    client would have to write to the store itself."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "mlflow-artifacts":
        return parsed.path.strip("/")
    if parsed.scheme in ("http", "https"):
        anchor = ARTIFACTS + "/"
        if anchor in parsed.path:
            return parsed.path.split(anchor, 1)[1].strip("/")
    return None


def quote(path):
    return urllib.parse.quote(path, safe="/")


class Recorder:
    """Every request: (phase, kind, seconds, status); the failures with a body excerpt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.samples = []
        self.failures = []
        self.locked = 0

    def add(self, phase, kind, method, path, seconds, status, text):
        locked = text is not None and LOCKED in text
        with self.lock:
            self.samples.append((phase, kind, seconds, status))
            if locked:
                self.locked += 1
            if status is None or not 200 <= status < 300 or locked:
                self.failures.append({"phase": phase, "kind": kind, "method": method, "path": path,
                                      "status": status, "body": (text or "")[:300]})

    def note(self, phase, kind, method, path, status, text):
        """A failure that is not the status: an unreadable answer."""
        with self.lock:
            self.failures.append({"phase": phase, "kind": kind, "method": method, "path": path,
                                  "status": status, "body": text[:300]})


class Client:
    """One keep-alive session to the server; every request is recorded."""

    def __init__(self, args, password, recorder):
        self.base = args.url
        self.recorder = recorder
        self.timeout = (10, args.request_timeout)
        self.big_timeout = (10, max(args.request_timeout, 600))
        self.session = requests.Session()
        self.session.trust_env = False          # no proxy or netrc from the environment: --url only
        self.session.auth = (args.user, password)
        self.session.verify = args.cacert or not args.insecure
        self.session.headers["User-Agent"] = "mlflow-load-benchmark"

    def request(self, phase, kind, method, path, *, body=None, params=None, data=None, sink=None, big=False):
        """(ok, parsed JSON or None). sink(chunk) receives a streamed 200 body instead."""
        status, text = None, None
        t0 = time.monotonic()
        try:
            resp = self.session.request(method, self.base + path, json=body, params=params, data=data,
                                        timeout=self.big_timeout if big else self.timeout,
                                        stream=sink is not None, allow_redirects=False)
            with resp:
                status = resp.status_code
                if sink is not None and status == 200:
                    for chunk in resp.iter_content(CHUNK):
                        sink(chunk)
                    text = ""
                else:
                    text = resp.text
        except requests.RequestException as exc:
            text = f"{type(exc).__name__}: {exc}"
        self.recorder.add(phase, kind, method, path, time.monotonic() - t0, status, text)
        if status is None or not 200 <= status < 300 or LOCKED in text:
            return False, None
        if sink is not None:
            return True, None
        try:
            return True, json.loads(text) if text.strip() else {}
        except ValueError:
            self.recorder.note(phase, kind, method, path, status, "invalid JSON: " + text)
            return False, None

    def close(self):
        self.session.close()


# --------------------------------------------------------------------------- the work of one client
class Plan:
    """What client `index` logs, fixed by --seed: the expected contents of its run."""

    def __init__(self, index, args, big):
        rng = random.Random(f"{args.seed}-{index}")
        self.index = index
        keys = max(1, min(args.metric_keys, args.metrics))
        self.metrics = {}                    # key -> {step: value}
        metric_list = []
        for n in range(args.metrics):
            key, step = f"m{n % keys:02d}", n // keys
            value = index * 1000.0 + (n % keys) * 0.125 + step * 0.25   # exact in binary
            self.metrics.setdefault(key, {})[step] = value
            metric_list.append((key, step, value))
        self.params = {f"p{j:03d}": f"client{index}-param{j}-{rng.getrandbits(64):016x}"
                       for j in range(args.params)}
        param_list = list(self.params.items())
        rng.shuffle(metric_list)
        rng.shuffle(param_list)
        single_m = round(len(metric_list) * args.single_share)
        single_p = round(len(param_list) * args.single_share)
        batch_m, batch_p = metric_list[single_m:], param_list[single_p:]
        size = args.batch_size
        m_chunks = [batch_m[i:i + size] for i in range(0, len(batch_m), size)]
        p_size = min(size, 100)          # MLflow: at most 100 params per batch
        p_chunks = [batch_p[i:i + p_size] for i in range(0, len(batch_p), p_size)]
        self.ops = [("batch", m, p) for m, p in itertools.zip_longest(m_chunks, p_chunks, fillvalue=[])]
        self.ops += [("metric", m) for m in metric_list[:single_m]]
        self.ops += [("param", p) for p in param_list[:single_p]]
        self.artifacts = {}                  # run-relative path -> bytes (small) or (size, sha256) (big)
        for j in range(args.artifacts):
            path = f"small/artifact-{j}.bin"
            self.artifacts[path] = rng.randbytes(1024 * 16 ** (j % 3))
            self.ops.append(("artifact", path))
        rng.shuffle(self.ops)
        if big is not None:                  # first, so it overlaps with the other clients' load
            path = f"big/big-{args.big_artifact_mb}mb.bin"
            self.artifacts[path] = big
            self.ops.insert(0, ("big-artifact", path))
        self.requests = len(self.ops) + 2    # + runs/create, runs/update


def run_client(client, plan, experiment_id, state, big_file, deadline):
    """Create the run and perform the plan; the run's id and artifact root go into state."""
    ok, answer = client.request("load", "run", "POST", f"{API}/runs/create",
                                body={"experiment_id": experiment_id, "run_name": f"load-client-{plan.index:02d}",
                                      "start_time": int(time.time() * 1000)})
    if not ok:
        return
    info = answer["run"]["info"]
    run_id = state["run_id"] = info["run_id"]
    root = state["root"] = artifact_root(info.get("artifact_uri", ""))
    if root is None:
        client.recorder.note("load", "artifact", "-", "-", None,
                             f"the run's artifact_uri {info.get('artifact_uri')!r} is not proxied by the server "
                             "(mlflow-artifacts:/...): artifacts skipped")
    for op in plan.ops:
        if time.monotonic() > deadline:
            state["timed_out"] = True
            break
        kind = op[0]
        now = int(time.time() * 1000)
        if kind == "batch":
            client.request("load", kind, "POST", f"{API}/runs/log-batch", body={
                "run_id": run_id,
                "metrics": [{"key": k, "value": v, "timestamp": now, "step": s} for k, s, v in op[1]],
                "params": [{"key": k, "value": v} for k, v in op[2]]})
        elif kind == "metric":
            k, s, v = op[1]
            client.request("load", kind, "POST", f"{API}/runs/log-metric",
                           body={"run_id": run_id, "key": k, "value": v, "timestamp": now, "step": s})
        elif kind == "param":
            k, v = op[1]
            client.request("load", kind, "POST", f"{API}/runs/log-parameter",
                           body={"run_id": run_id, "key": k, "value": v})
        elif root is not None and kind == "artifact":
            client.request("load", kind, "PUT", f"{ARTIFACTS}/{quote(root)}/{quote(op[1])}",
                           data=plan.artifacts[op[1]])
        elif root is not None and kind == "big-artifact":
            with open(big_file, "rb") as f:
                t0 = time.monotonic()
                ok, _ = client.request("load", kind, "PUT", f"{ARTIFACTS}/{quote(root)}/{quote(op[1])}",
                                       data=f, big=True)
                state["big_upload_s"] = time.monotonic() - t0 if ok else None
    client.request("load", "run", "POST", f"{API}/runs/update",
                   body={"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})


def verify_client(client, plan, state):
    """Read the run back; counts of what is missing/wrong and what should not be there."""
    result = {"lost_metrics": sum(len(v) for v in plan.metrics.values()), "extra_metrics": 0,
              "lost_params": len(plan.params), "extra_params": 0,
              "lost_artifacts": len(plan.artifacts), "extra_artifacts": 0}
    run_id = state.get("run_id")
    if run_id is None:
        return result
    # Metrics: every key's whole history, page by page.
    lost = extra = 0
    for key, expected in plan.metrics.items():
        got, token = [], None
        while True:
            params = {"run_id": run_id, "metric_key": key}
            if token:
                params["page_token"] = token
            ok, answer = client.request("verify", "verify", "GET", f"{API}/metrics/get-history", params=params)
            if not ok:
                got = None
                break
            got += [(int(m.get("step", 0)), float(m["value"])) for m in answer.get("metrics", [])]
            token = answer.get("next_page_token")
            if not token:
                break
        if got is None:
            lost += len(expected)
            continue
        remaining = collections.Counter(got)
        for step, value in expected.items():
            if remaining[(step, value)] > 0:
                remaining[(step, value)] -= 1
            else:
                lost += 1
        extra += sum(remaining.values())
    result["lost_metrics"], result["extra_metrics"] = lost, extra
    # Params.
    ok, answer = client.request("verify", "verify", "GET", f"{API}/runs/get", params={"run_id": run_id})
    if ok:
        stored = {p["key"]: p["value"] for p in answer["run"]["data"].get("params", [])}
        result["lost_params"] = sum(1 for k, v in plan.params.items() if stored.get(k) != v)
        result["extra_params"] = sum(1 for k in stored if k not in plan.params)
    # Artifacts: listed with their size, then downloaded and compared.
    root = state.get("root")
    if root is None:
        return result
    listed, todo = {}, [""]
    while todo:
        rel = todo.pop()
        ok, answer = client.request("verify", "verify", "GET", ARTIFACTS,
                                    params={"path": f"{root}/{rel}".rstrip("/")})
        if not ok:
            continue
        for entry in answer.get("files", []):
            path = f"{rel}/{entry['path']}".lstrip("/")
            if entry.get("is_dir"):
                todo.append(path)
            else:
                listed[path] = int(entry.get("file_size", -1))
    lost = 0
    for path, expected in plan.artifacts.items():
        size = len(expected) if isinstance(expected, bytes) else expected[0]
        if listed.get(path) != size:
            lost += 1
            continue
        digest, count = hashlib.sha256(), [0]

        def sink(chunk):
            digest.update(chunk)
            count[0] += len(chunk)
        big = not isinstance(expected, bytes)
        t0 = time.monotonic()
        ok, _ = client.request("verify", "verify", "GET", f"{ARTIFACTS}/{quote(root)}/{quote(path)}",
                               sink=sink, big=big)
        if big and ok:
            state["big_download_s"] = time.monotonic() - t0
        want = hashlib.sha256(expected).hexdigest() if not big else expected[1]
        if not ok or count[0] != size or digest.hexdigest() != want:
            lost += 1
    result["lost_artifacts"] = lost
    result["extra_artifacts"] = sum(1 for p in listed if p not in plan.artifacts)
    return result


# --------------------------------------------------------------------------- server CPU
# Run in the server's container: user + system seconds of the unit's main
# process and its descendants, each with its reaped children's.
TREE_CPU = r"""
import os, subprocess, sys
main = int(subprocess.run(["systemctl", "show", "--property", "MainPID", "--value", sys.argv[1]],
                          capture_output=True, text=True, check=True).stdout)
stats = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
tree, grew = {main}, True
while grew:
    more = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
    tree |= more
    grew = bool(more)
if main not in stats:
    sys.exit(f"{sys.argv[1]} is not running")
print(sum(stats[pid][1] for pid in tree) / os.sysconf("SC_CLK_TCK"))
"""

class ServerCpu:
    """Cumulative CPU seconds of the server: its process tree's /proc times via
    podman exec, or a command."""

    def __init__(self, args, unit=None):
        self.cmd = None
        self.cores = args.cores
        if args.podman:
            podman = shutil.which("podman") or "podman"
            self.cmd = [podman, "exec", args.podman, "python3", "-c", TREE_CPU, unit or args.unit]
            if not self.cores:
                out = subprocess.run([podman, "exec", args.podman, "nproc"], capture_output=True, text=True,
                                     timeout=60)
                self.cores = int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
        elif args.server_cpu_command:
            self.cmd = shlex.split(args.server_cpu_command)
        if self.cmd and not self.cores:
            self.cores = os.cpu_count()

    def seconds(self):
        """usage_usec of a cpu.stat as seconds, or the command's single number (seconds)."""
        out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"{shlex.join(self.cmd)} failed: {out.stderr.strip()[:300]}")
        for line in out.stdout.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return float(out.stdout.strip())


# --------------------------------------------------------------------------- the run
def make_big_file(directory, megabytes):
    """A temp file of random bytes: (path, size, sha256)."""
    fd, path = tempfile.mkstemp(prefix="mlflow-load-", suffix=".bin", dir=directory)
    digest, size, target = hashlib.sha256(), 0, int(megabytes * MB)
    with os.fdopen(fd, "wb") as f:
        while size < target:
            chunk = os.urandom(min(CHUNK, target - size))
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return path, size, digest.hexdigest()


def cleanup(client, experiment_id, states, phase="cleanup"):
    for state in states:
        if state.get("root"):
            client.request(phase, "cleanup", "DELETE", f"{ARTIFACTS}/{quote(state['root'])}")
    client.request(phase, "cleanup", "POST", f"{API}/experiments/delete", body={"experiment_id": experiment_id})


def load(args, password):
    recorder = Recorder()
    started = time.monotonic()
    deadline = started + args.timeout - min(120.0, args.timeout / 4)   # then verify and clean up
    admin = Client(args, password, recorder)
    fig = {"url": args.url, "clients": args.clients,
           "settings": {k: getattr(args, k) for k in ("clients", "metrics", "metric_keys", "params", "batch_size",
                                                       "single_share", "artifacts", "big_artifact_mb")}}
    big_file, states, experiment_id = None, [], None

    def hard_stop():
        log(f"FAIL: not done within --timeout {args.timeout:.0f} s; stopping")
        if experiment_id and not args.keep:
            try:
                rescue = Client(args, password, Recorder())
                rescue.timeout = rescue.big_timeout = (5, 10)
                cleanup(rescue, experiment_id, states, phase="rescue")
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                log(f"cleanup failed: {exc}")
        if big_file and os.path.exists(big_file):
            os.unlink(big_file)
        os._exit(3)

    watchdog = threading.Timer(args.timeout, hard_stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        cpu = ServerCpu(args) if args.podman or args.server_cpu_command else None
        proxy_cpu = ServerCpu(args, "nginx.service") if args.podman else None
        big = None
        if args.big_artifact_mb > 0:
            big_file, size, sha = make_big_file(args.tmpdir, args.big_artifact_mb)
            big = (size, sha)
        plans = [Plan(i, args, big if i == 0 else None) for i in range(args.clients)]
        states = [{} for _ in plans]
        name = f"load-{time.strftime('%Y%m%d-%H%M%S')}-{random.getrandbits(24):06x}"
        ok, answer = admin.request("setup", "setup", "POST", f"{API}/experiments/create", body={"name": name})
        if not ok:
            failure = recorder.failures[-1] if recorder.failures else {}
            raise RuntimeError(f"creating experiment {name} failed: {failure.get('status') or 'no answer'} "
                               f"{failure.get('body', '')[:300]}")
        experiment_id = answer["experiment_id"]
        log(f"experiment {name} ({experiment_id}); {args.clients} clients, "
            f"{sum(p.requests for p in plans)} requests planned")

        clients = [Client(args, password, recorder) for _ in plans]

        # The server is idle until the clients pass the barrier: its CPU time is read before.
        clock = {"cpu": cpu.seconds() if cpu else None, "rusage": resource.getrusage(resource.RUSAGE_SELF),
                 "proxy_cpu": proxy_cpu.seconds() if proxy_cpu else None}
        barrier = threading.Barrier(len(plans), action=lambda: clock.__setitem__("t0", time.monotonic()))

        def worker(i):
            try:
                barrier.wait(timeout=120)
            except threading.BrokenBarrierError:
                pass
            try:
                run_client(clients[i], plans[i], experiment_id, states[i], big_file, deadline)
            except Exception as exc:  # noqa: BLE001 - a client's crash is a failure, not the end
                recorder.note("load", "client", "-", "-", None, f"client {i} crashed: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(plans))]
        for t in threads:
            t.start()
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(1.0)
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                with recorder.lock:
                    done, bad = len(recorder.samples), len(recorder.failures)
                log(f"{done} requests, {bad} failures, {last - clock.get('t0', last):.0f} s")
        t_end = time.monotonic()
        rusage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_after = cpu.seconds() if cpu else None
        proxy_cpu_after = proxy_cpu.seconds() if proxy_cpu else None
        load_samples = [s for s in recorder.samples if s[0] == "load"]
        fig["duration_s"] = t_end - clock.get("t0", t_end)
        fig["requests"] = len(load_samples)
        fig["req_per_s"] = fig["requests"] / fig["duration_s"] if fig["duration_s"] > 0 else 0.0
        fig["client_cpu_s"] = (rusage.ru_utime + rusage.ru_stime
                               - clock["rusage"].ru_utime - clock["rusage"].ru_stime)
        if cpu:
            used = cpu_after - clock["cpu"]
            fig["server_cpu_s"] = used
            fig["server_cpu_ms_per_req"] = 1000 * used / max(fig["requests"], 1)
            fig["cores"] = cpu.cores
            per_req = used / max(fig["requests"], 1)
            fig["cpu_ceiling_req_per_s"] = cpu.cores / per_req if per_req > 0 else None
            fig["ceiling_ratio"] = fig["req_per_s"] / fig["cpu_ceiling_req_per_s"] \
                if fig["cpu_ceiling_req_per_s"] else None
        if proxy_cpu and fig["duration_s"] > 0:
            fig["proxy_cpu_s"] = proxy_cpu_after - clock["proxy_cpu"]
            capacity = cpu.cores * fig["duration_s"]
            fig["machine_busy_share"] = (fig["server_cpu_s"] + fig["proxy_cpu_s"] + fig["client_cpu_s"]) / capacity
            left = capacity - fig["proxy_cpu_s"] - fig["client_cpu_s"]
            fig["ratio_to_left"] = fig["server_cpu_s"] / left if left > 0 else None
        log(f"load done: {fig['requests']} requests in {fig['duration_s']:.1f} s; verifying")

        with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(plans))) as pool:
            results = list(pool.map(verify_client, clients, plans, states))
        for key in results[0]:
            fig[key] = sum(r[key] for r in results)
        fig["expected_metrics"] = sum(len(v) for p in plans for v in p.metrics.values())
        fig["expected_params"] = sum(len(p.params) for p in plans)
        fig["expected_artifacts"] = sum(len(p.artifacts) for p in plans)
        fig["timed_out"] = any(s.get("timed_out") for s in states)
        if big:
            fig["big_artifact_mb"] = big[0] / MB
            up, down = states[0].get("big_upload_s"), states[0].get("big_download_s")
            fig["big_upload_mb_per_s"] = big[0] / MB / up if up else None
            fig["big_download_mb_per_s"] = big[0] / MB / down if down else None
        for c in clients:
            c.close()
    finally:
        if experiment_id and not args.keep:
            cleanup(admin, experiment_id, states)
        admin.close()
        if big_file:
            os.unlink(big_file)
        watchdog.cancel()
    if args.keep:
        log(f"kept experiment {experiment_id}")
    return fig, recorder


# --------------------------------------------------------------------------- report
def report(args, fig, recorder, out):
    def p(line=""):
        print(line, file=out)

    load = [s for s in recorder.samples if s[0] == "load"]
    lat = {"overall": sorted(s[2] for s in load)}
    for kind in KINDS:
        lat[kind] = sorted(s[2] for s in load if s[1] == kind)
    fig["latency_ms"] = {k: {"count": len(v), "p50": _ms(percentile(v, 50)), "p95": _ms(percentile(v, 95)),
                             "p99": _ms(percentile(v, 99)), "max": _ms(v[-1] if v else None)}
                         for k, v in lat.items()}
    statuses = [s[3] for s in recorder.samples]
    fig["all_requests"] = len(statuses)
    fig["status_5xx"] = sum(1 for s in statuses if s is not None and s >= 500)
    fig["status_4xx"] = sum(1 for s in statuses if s is not None and 400 <= s < 500)
    fig["other_errors"] = sum(1 for f in recorder.failures if f["status"] is None or f["status"] < 400)
    fig["database_locked"] = recorder.locked

    p(f"MLflow load test: {args.url}, {args.clients} clients x ({args.metrics} metrics, {args.params} params, "
      f"{args.artifacts} artifacts), big artifact {args.big_artifact_mb} MB")
    p(f"{'figure':40} {'value':>14}")
    p("-" * 56)
    rows = [("clients", f"{args.clients}"),
            ("requests (load phase)", f"{fig['requests']}"),
            ("  all requests (with verify, cleanup)", f"{fig['all_requests']}"),
            ("duration (s)", f"{fig['duration_s']:.1f}"),
            ("throughput (req/s)", f"{fig['req_per_s']:.1f}"),
            ("client CPU (s, share of one core)",
             f"{fig['client_cpu_s']:.1f} ({100 * fig['client_cpu_s'] / max(fig['duration_s'], 1e-9):.0f}%)")]
    if "big_artifact_mb" in fig:
        rows += [("big artifact (MB)", f"{fig['big_artifact_mb']:.0f}"),
                 ("  upload / download (MB/s)", f"{_f(fig['big_upload_mb_per_s'])} / "
                                                f"{_f(fig['big_download_mb_per_s'])}")]
    if "server_cpu_s" in fig:
        rows += [("server CPU (s)", f"{fig['server_cpu_s']:.1f}"),
                 ("server CPU ms per request", f"{fig['server_cpu_ms_per_req']:.1f}"),
                 ("cores", f"{fig['cores']}"),
                 ("CPU ceiling (req/s) = cores / CPU s per req", _f(fig["cpu_ceiling_req_per_s"])),
                 ("throughput / ceiling", _f(fig["ceiling_ratio"], "{:.2f}"))]
    if "proxy_cpu_s" in fig:
        rows += [("nginx CPU (s)", f"{fig['proxy_cpu_s']:.1f}"),
                 ("machine busy (server+nginx+client)", _f(fig["machine_busy_share"], "{:.2f}")),
                 ("server CPU / what nginx+client left", _f(fig["ratio_to_left"], "{:.2f}"))]
    for label, value in rows:
        p(f"{label:40} {value:>14}")
    p()
    p(f"{'latency (ms), load phase':28} {'count':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    p("-" * 70)
    for kind, label in [("overall", "all requests")] + list(KINDS.items()):
        row = fig["latency_ms"][kind]
        if row["count"]:
            p(f"{label:28} {row['count']:>6} " + " ".join(f"{_f(row[q]):>8}" for q in ("p50", "p95", "p99", "max")))
    p()
    checks = [  # (figure, label); each must be 0
        ("status_5xx", "5xx responses"),
        ("status_4xx", "4xx responses"),
        ("other_errors", "other errors (redirect, connection, timeout)"),
        ("database_locked", 'responses with "database is locked"'),
        ("lost_metrics", f"lost metric values (of {fig['expected_metrics']})"),
        ("extra_metrics", "  unexpected metric values"),
        ("lost_params", f"lost params (of {fig['expected_params']})"),
        ("extra_params", "  unexpected params"),
        ("lost_artifacts", f"lost artifacts (of {fig['expected_artifacts']})"),
        ("extra_artifacts", "  unexpected artifacts"),
        ("timed_out", "load stopped by the deadline"),
    ]
    p(f"{'check':46} {'value':>8} {'target':>7}  result")
    p("-" * 70)
    all_ok = True
    fig["checks"] = {}
    for key, label in checks:
        value = int(fig[key])
        ok = value == 0
        all_ok = all_ok and ok
        fig["checks"][key] = ok
        p(f"{label:46} {value:>8} {0:>7}  {'PASS' if ok else 'FAIL'}")
    p("-" * 70)
    if recorder.failures:
        p(f"{len(recorder.failures)} failed requests; the first ones:")
        for f in recorder.failures[:5]:
            p(f"  [{f['phase']}/{f['kind']}] {f['method']} {f['path'][:90]} -> {f['status']}: "
              f"{' '.join(f['body'].split())[:200]}")
    fig["failures"] = recorder.failures[:20]
    fig["pass"] = all_ok
    p("overall: " + ("PASS" if all_ok else "FAIL"))
    p(f"controller: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
      "(wall-clock figures move with the load of the machines; CPU per request does not)")
    return all_ok


def _ms(seconds):
    return None if seconds is None else round(1000 * seconds, 1)


def _f(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server's address, e.g. https://mlflow.example (the proxy)")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", help="file holding the password (else $MLFLOW_LOAD_PASSWORD)")
    parser.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate (self-signed)")
    parser.add_argument("--cacert", help="CA bundle or self-signed certificate to verify the server with")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, one run each")
    parser.add_argument("--metrics", type=int, default=300, help="metric values per client")
    parser.add_argument("--metric-keys", type=int, default=10, help="metric keys the values are spread over")
    parser.add_argument("--params", type=int, default=100, help="params per client")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="metrics (and params) per log-batch request (MLflow: at most 1000 metrics, 100 params)")
    parser.add_argument("--single-share", type=float, default=0.2,
                        help="share of metrics and params logged one per request")
    parser.add_argument("--artifacts", type=int, default=3, help="small artifacts per client (1 KB to 256 KB)")
    parser.add_argument("--big-artifact-mb", type=int, default=110, help="client 0's big artifact, MB (0: none)")
    parser.add_argument("--tmpdir", default=None, help="where the big artifact is generated (default: $TMPDIR)")
    parser.add_argument("--timeout", type=float, default=900.0, help="hard limit of the whole run, seconds")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds to wait for one answer")
    parser.add_argument("--podman", metavar="NAME", help="container running mlflow.service: read its CPU time")
    parser.add_argument("--unit", default="mlflow", help="the server's systemd unit in --podman's container")
    parser.add_argument("--server-cpu-command", metavar="CMD",
                        help="instead of --podman: prints the server's cumulative CPU seconds (or a cpu.stat)")
    parser.add_argument("--cores", type=int, help="server cores (default: nproc in --podman's container, "
                                                  "else this machine's)")
    parser.add_argument("--seed", default="mlflow-load", help="seed of the generated values")
    parser.add_argument("--keep", action="store_true", help="keep the experiment and artifacts")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="also write the figures as JSON to FILE (- or none: stdout, the table to stderr)")
    args = parser.parse_args()
    args.url = args.url.rstrip("/")
    if urllib.parse.urlparse(args.url).scheme not in ("http", "https"):
        parser.error("--url must be http(s)://HOST[:PORT]")
    if args.clients < 1 or args.metrics < 0 or args.params < 0 or args.artifacts < 0 or args.batch_size < 1 \
            or not 0 <= args.single_share <= 1:
        parser.error("--clients and --batch-size must be at least 1, counts not negative, --single-share 0..1")
    if args.password_file:
        with open(args.password_file) as f:
            password = f.read().rstrip("\r\n")
    else:
        password = os.environ.get("MLFLOW_LOAD_PASSWORD", "")
    if not password:
        parser.error("no password: --password-file FILE or MLFLOW_LOAD_PASSWORD")
    if args.insecure and not args.cacert:
        import urllib3
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    try:
        fig, recorder = load(args, password)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log(f"setup failed: {exc}")
        return 2
    table_out = sys.stderr if args.json == "-" else sys.stdout
    ok = report(args, fig, recorder, table_out)
    if args.json:
        text = json.dumps(fig, indent=2, sort_keys=True)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
