"""Seed the basic-auth server with data through its API, as a team would.

Usage: seed.py TRACKING_URI EPHEMERAL_DIR

As the basic-auth admin (the scenario's generated password), through the
HTTPS proxy (self-signed certificate). Writes EPHEMERAL_DIR/seeded.json: what
the checks compare once the host signs in with OIDC.
"""
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    uri, ephemeral = sys.argv[1], Path(sys.argv[2])
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = (ephemeral / "admin_password").read_text().split()[0]
    os.environ["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("before-sso")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            run = client.create_run(experiment_id, run_name=f"basic-run-{i}")
            client.log_param(run.info.run_id, "alpha", str(i))
            for step in range(3):
                client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1 + i), step=step)
            artifact = Path(tmp) / "model.txt"
            artifact.write_text(f"model of run {i}\n")
            client.log_artifact(run.info.run_id, str(artifact))
            client.set_terminated(run.info.run_id)
            runs[run.info.run_id] = {"params": {"alpha": str(i)},
                                     "loss": [1.0 / (step + 1 + i) for step in range(3)],
                                     "artifact_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest()}
    (ephemeral / "seeded.json").write_text(json.dumps({"experiment_id": experiment_id, "runs": runs}))


if __name__ == "__main__":
    main()
