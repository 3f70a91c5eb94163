"""Set the admin's password (and admin flag) in MLflow's auth database.

Run as the service user with MLFLOW_AUTH_CONFIG_PATH pointing at the
basic-auth ini; the password arrives on standard input, never in argv. Works
without the old password, so a password changed out of band (through the API
or the UI) is put back to the one in the variables. Prints what it did.
"""
import sys

from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

password = sys.stdin.read()
if not password:
    sys.exit("no password on standard input")
config = read_auth_config()
store = SqlAlchemyStore()
store.init_db(config.database_uri)
try:
    if store.has_user(config.admin_username, use_primary=True):
        store.update_user(config.admin_username, password=password, is_admin=True)
        print("reset")
    else:
        store.create_user(config.admin_username, password, is_admin=True)
        print("created")
finally:
    store.engine.dispose()
