"""Seed a running MLflow server with data through its API, as a user would.

Usage: seed.py TRACKING_URI EPHEMERAL_DIR

Uses the controller's MLflow client (mlflow-skinny) with the admin password
the scenario generated. Writes EPHEMERAL_DIR/seeded.json: everything the
checks compare after the upgrade (runs, params, metric histories, tags,
artifact checksums, users).
"""
import hashlib
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

import requests

from upgrade_data import snapshot


def main() -> None:
    uri, ephemeral = sys.argv[1], Path(sys.argv[2])
    admin_password = (ephemeral / "admin_password").read_text().split()[0]
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = admin_password
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment_id = client.create_experiment(f"upgrade-check-{secrets.token_hex(4)}")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(3):
            run = client.create_run(experiment_id, run_name=f"run-{i}", tags={"team": "a", "index": str(i)})
            client.log_param(run.info.run_id, "learning_rate", f"0.0{i + 1}")
            client.log_param(run.info.run_id, "layers", str(i + 2))
            for step in range(5):
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1 + i), step=step)
            client.log_metric(run.info.run_id, "accuracy", 0.5 + i / 10)
            model = Path(tmp) / f"model-{i}.bin"
            model.write_bytes(secrets.token_bytes(200_000))
            notes = Path(tmp) / "notes.txt"
            notes.write_text(f"run {i}: text artifact\n")
            client.log_artifact(run.info.run_id, str(model), "weights")
            client.log_artifact(run.info.run_id, str(notes))
            client.set_terminated(run.info.run_id)

    # A user created through the API, not by the roles.
    analyst_password = secrets.token_urlsafe(18)
    (ephemeral / "analyst_password").write_text(analyst_password)
    resp = requests.post(f"{uri}/api/2.0/mlflow/users/create", auth=("admin", admin_password),
                         json={"username": "analyst", "password": analyst_password}, timeout=30)
    resp.raise_for_status()

    data = snapshot(uri, admin_password, experiment_id)
    assert len(data["runs"]) == 3 and all(len(r["artifacts"]) == 2 for r in data["runs"].values()), data
    (ephemeral / "seeded.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    print(hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest())


if __name__ == "__main__":
    main()
