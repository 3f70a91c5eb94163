"""`mlflow db upgrade` with the URI from MLFLOW_BACKEND_STORE_URI, in-process:
never on a command line (run by the mlflow_upgrade role, as the service user)."""
import os
from mlflow.db import upgrade
upgrade.main([os.environ["MLFLOW_BACKEND_STORE_URI"]], prog_name="mlflow db upgrade")
