"""Migrate the basic-auth database to alembic head, as the auth app does at
start, with its URI from the ini (MLFLOW_AUTH_CONFIG_PATH)."""
from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
store = SqlAlchemyStore()
store.init_db(read_auth_config().database_uri)
store.engine.dispose()
