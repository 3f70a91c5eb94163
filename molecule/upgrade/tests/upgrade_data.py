"""Read back, through MLflow's API, everything the seed wrote."""
import hashlib
import os

# No usage telemetry from the test client (its background thread also races
# with os.environ reads in the client).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
import tempfile
from pathlib import Path


def snapshot(uri: str, admin_password: str, experiment_id: str) -> dict:
    """Runs (params, metric histories, tags, artifact SHA-256) of the
    experiment and the users, as a plain dict."""
    import requests

    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = {}
    for run in client.search_runs([experiment_id], max_results=100):
        run_id = run.info.run_id
        metrics = {key: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]
                   for key in run.data.metrics}
        artifacts = {}
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(client.download_artifacts(run_id, "", tmp))
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    artifacts[str(path.relative_to(local))] = hashlib.sha256(path.read_bytes()).hexdigest()
        runs[run_id] = {
            "name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "params": run.data.params,
            "metrics": metrics,
            "tags": {k: v for k, v in run.data.tags.items()},
            "artifacts": artifacts,
        }
    users = {}
    for name in ["admin", "reader", "analyst"]:
        resp = requests.get(f"{uri}/api/2.0/mlflow/users/get", params={"username": name},
                            auth=("admin", admin_password), timeout=30)
        resp.raise_for_status()
        user = resp.json()["user"]
        users[name] = {"id": user["id"], "is_admin": user["is_admin"]}
    return {"experiment_id": experiment_id, "runs": runs, "users": users}
