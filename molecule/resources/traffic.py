"""Client traffic for the fault suites (molecule/*/tests/test_faults.py):
a thread that logs one metric step per request through a server's proxy
until stopped. The steps the server answered 200 for were acknowledged to
the client, so each must be stored; every other answer is kept (its status,
or the name of the connection error) with the time of the last one."""
import threading
import time

import requests


class MetricLogger(threading.Thread):
    def __init__(self, base_url: str, auth: tuple[str, str], run_id: str, key: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.base_url, self.run_id, self.key, self.interval = base_url, run_id, key, interval
        self.session = requests.Session()
        # verify=False holds only without the environment's CA bundle, which
        # requests would otherwise prefer to a session's setting.
        self.session.auth, self.session.verify, self.session.trust_env = auth, False, False
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.refused: list[int | str] = []
        self.last_refused = 0.0

    @property
    def failed(self) -> int:
        return len(self.refused)

    def run(self):
        step = 0
        while not self.stop.is_set():
            try:
                r = self.session.post(f"{self.base_url}/api/2.0/mlflow/runs/log-metric", timeout=15, json={
                    "run_id": self.run_id, "key": self.key, "value": step,
                    "timestamp": int(time.time() * 1000), "step": step})
                if r.status_code == 200:
                    self.acknowledged.append(step)
                else:
                    self.refused.append(r.status_code)
                    self.last_refused = time.monotonic()
            except requests.RequestException as exc:
                self.refused.append(type(exc).__name__)
                self.last_refused = time.monotonic()
            step += 1
            time.sleep(self.interval)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(timeout=30)
