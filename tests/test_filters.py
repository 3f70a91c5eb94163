"""The shared checks of roles/mlflow_common/filter_plugins, called directly:
every rule, including the edges, without a playbook run each."""
import importlib.util

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "mlflow_common_filters", ROOT / "roles/mlflow_common/filter_plugins/mlflow_common.py")
filters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(filters)


@pytest.mark.parametrize("schedule", [
    "15 2 * * *", "0 */6 1,15 jan-jun mon-fri", "30 4 * * 7", "0 0 1 1 0", "59 23 31 12 SUN",
    "*/5 * * * *", "0 9-17/2 * * 1-5", " 15  2 * * * ",
])
def test_cron_schedules_cron_accepts(schedule):
    assert filters.cron_schedule_ok(schedule) is True


@pytest.mark.parametrize("schedule", [
    "", "every night", "0 3 * *", "0 3 * * * *", "61 2 * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *",
    "0 0 * 13 *", "0 0 * * 8", "*/0 * * * *", "15 2 * * mon-xyz", "0 0 * * fri-mon", "5-1 * * * *",
    "0 0 * jan-foo *", "@daily", "1,,2 * * * *", "* * * * mon/",
])
def test_schedules_cron_refuses(schedule):
    assert filters.cron_schedule_ok(schedule) is False


@pytest.mark.parametrize("uri", [
    "sqlite:////var/lib/mlflow/mlflow.db",
    "postgresql+psycopg2://mlflow:s3cr%2Ft@db.internal:5432/mlflow?sslmode=verify-full",
    "postgresql+psycopg://mlflow:pw@[2001:db8::1]/mlflow",
    "postgresql+psycopg2://mlflow:pw@127.0.0.1:5432/mlflow_auth?sslmode=require&sslrootcert=/etc/ssl/ca.pem",
    "mysql+pymysql://mlflow:pw@db/mlflow",
])
def test_database_uris_that_work(uri):
    assert filters.database_uri_problem(uri) == ""


@pytest.mark.parametrize(("uri", "problem"), [
    ("sqlite:///mlflow.db", "is not an absolute SQLite URI"),
    ("sqlite:////", "is not an absolute SQLite URI"),
    ("postgres://mlflow:pw-secret@db/mlflow", "is not a PostgreSQL URI"),
    ("postgresql://mlflow:pw-secret@db/mlflow", "names no driver"),
    ("postgresql+psycopg2://mlflow:p@ss-secret@db/mlflow", "is not a PostgreSQL URI"),
    ("postgresql+psycopg2://mlflow:pw-secret@db", "is not a PostgreSQL URI"),
    ("postgresql+psycopg2://mlflow:100%sure-secret@db/mlflow", "holds a password that is not URL-encoded"),
    ("postgresql+psycopg2://mlflow:pw-secret@db:99999/mlflow", "has port 99999"),
    ("postgresql+psycopg2://mlflow:pw-secret@db/mlflow?sslmode=required", "has an sslmode that is not one of"),
    ("postgresql+psycopg2://mlflow:pw-secret@db/mlflow?sslmode", "has a malformed query string"),
    ("mlflow.db", "is not a database URI"),
])
def test_database_uris_refused_without_showing_the_password(uri, problem):
    text = filters.database_uri_problem(uri)
    assert text.startswith(problem), text
    assert "secret" not in text


def test_the_plugin_exports_its_filters():
    assert set(filters.FilterModule().filters()) == {"cron_schedule_ok", "database_uri", "database_uri_problem",
                                                     "password_problem"}


@pytest.mark.parametrize("password", [
    "correct-horse-battery-staple", "x" * 12, "pässwörd-ünïcode", "inner spaces are fine", "100%-sure;#=[x]",
])
def test_passwords_that_work(password):
    assert filters.password_problem(password) == ""


@pytest.mark.parametrize(("password", "problem"), [
    ("", "is empty: set it from vault"),
    (None, "is empty: set it from vault"),
    ("tiny-secret", "is shorter than 12 characters (MLflow refuses it)"),
    ("password1234", "is the publicly known default `password1234`"),
    (" leading-space-secret", "starts or ends with white space"),
    ("trailing-space-secret\t", "starts or ends with white space"),
    ("new\nline-secret-value", "holds a control character"),
    ("delete\x7fsecret-value", "holds a control character"),
])
def test_passwords_refused_without_showing_them(password, problem):
    text = filters.password_problem(password)
    assert problem in text, text
    assert "secret" not in text


_DB = {"engine": "postgresql", "home": "/var/lib/mlflow", "user": "mlflow", "password": "p/w@:%x",
       "host": "", "port": 5432, "sslmode": "require", "ca_path": "/etc/ssl/ca.pem"}


@pytest.mark.parametrize("settings, uri", [
    ({"engine": "sqlite"}, "sqlite:////var/lib/mlflow/auth.db"),
    ({}, "postgresql+psycopg2://mlflow:p%2Fw%40%3A%25x@127.0.0.1:5432/mlflow_auth"),
    ({"host": "db.example.com"}, "postgresql+psycopg2://mlflow:p%2Fw%40%3A%25x@db.example.com:5432/mlflow_auth?sslmode=require"),
    ({"host": "2001:db8::5", "sslmode": "verify-full"},
     "postgresql+psycopg2://mlflow:p%2Fw%40%3A%25x@[2001:db8::5]:5432/mlflow_auth?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem"),
])
def test_database_uri(settings, uri):
    assert filters.database_uri({**_DB, **settings}, "auth.db", "mlflow_auth") == uri
    assert filters.database_uri_problem(uri) == ""
