"""SQLite's WAL mode on the controller: the mlflow_service role's switch
(files/sqlite_wal.py) and the restore's swap of a database in WAL mode
(mlflow_backup.py), on real SQLite files. The Molecule scenarios prove the
same on the hosts (test_mlflow_service.py, test_drift.py)."""
import getpass
import importlib.util
import sqlite3
import subprocess
import sys
import types

import pytest

from conftest import ROOT

WAL_SCRIPT = ROOT / "roles" / "mlflow_service" / "files" / "sqlite_wal.py"
BACKUP_PROGRAM = ROOT / "roles" / "mlflow_backup" / "files" / "mlflow_backup.py"


def journal_mode(path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()


def make_db(path, rows, wal=False):
    connection = sqlite3.connect(path)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE runs (id TEXT)")
    connection.executemany("INSERT INTO runs VALUES (?)", [(r,) for r in rows])
    connection.commit()
    connection.close()


def rows(path) -> list[str]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in connection.execute("SELECT id FROM runs"))
    finally:
        connection.close()


def switch(*args):
    return subprocess.run([sys.executable, "-I", str(WAL_SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_check_reports_switch_changes_and_a_second_run_reports_nothing(tmp_path):
    tracking, auth, absent = tmp_path / "mlflow.db", tmp_path / "auth.db", tmp_path / "none.db"
    make_db(tracking, ["a", "b"])
    make_db(auth, ["admin"], wal=True)
    user = getpass.getuser()

    check = switch("--check", user, str(tracking), str(auth), str(absent))
    assert check.returncode == 0, check.stderr
    assert check.stdout == f"{tracking}: rollback -> wal\n"
    assert journal_mode(tracking) == "delete" and not absent.exists()

    applied = switch(user, str(tracking), str(auth), str(absent))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == f"{tracking}: rollback -> wal\n"
    assert journal_mode(tracking) == "wal" and journal_mode(auth) == "wal"
    assert rows(tracking) == ["a", "b"] and not absent.exists()

    again = switch(user, str(tracking), str(auth), str(absent))
    assert (again.returncode, again.stdout) == (0, "")


def test_a_database_in_use_is_switched_and_its_open_connection_follows(tmp_path):
    tracking = tmp_path / "mlflow.db"
    make_db(tracking, ["a"])
    server = sqlite3.connect(tracking)  # the server's idle pooled connection
    assert server.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    applied = switch(getpass.getuser(), str(tracking))
    assert applied.returncode == 0, applied.stderr
    server.execute("INSERT INTO runs VALUES ('b')")
    server.commit()
    assert server.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "mlflow.db-wal").exists(), "the writer did not write through the WAL"
    server.close()
    assert rows(tracking) == ["a", "b"]


def test_a_switch_that_fails_names_the_database_and_fails(tmp_path):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"not a database" * 10)
    result = switch(getpass.getuser(), str(broken))
    assert result.returncode == 1
    assert "switching to WAL failed" in result.stderr and "not a database" in result.stderr


@pytest.fixture(scope="module")
def backup_program():
    spec = importlib.util.spec_from_file_location("mlflow_backup", BACKUP_PROGRAM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_restore_over_a_crashed_wal_database_never_replays_its_stale_wal(tmp_path, backup_program):
    data, aside, archive = tmp_path / "data", tmp_path / "aside", tmp_path / "archive"
    for folder in (data, aside, archive):
        folder.mkdir()
    live = data / "mlflow.db"
    make_db(live, ["old"], wal=True)
    # A writer killed after a commit that is still only in the -wal file.
    subprocess.run([sys.executable, "-c", (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint=0'); "
        "c.execute(\"INSERT INTO runs VALUES ('after-the-backup')\"); c.commit(); os._exit(9)"), str(live)],
        check=False, timeout=60)
    assert (data / "mlflow.db-wal").stat().st_size > 0
    # An archive made before WAL mode: its database has a rollback journal.
    source = archive / "mlflow.db"
    make_db(source, ["old", "from-the-backup"])
    # An interrupted earlier restore left its staged copy's -wal behind.
    (data / ".restore-mlflow.db-wal").write_bytes((data / "mlflow.db-wal").read_bytes())

    db = types.SimpleNamespace(path=str(live), name="tracking", label="mlflow.db")
    backup_program.Backup.sqlite_swap(db, str(source), str(aside))

    assert rows(live) == ["from-the-backup", "old"], "the stale -wal was replayed into the restored database"
    assert journal_mode(live) == "wal", "the restored database lost the WAL mode of the one it replaced"
    assert sorted(p.name for p in data.iterdir()) == ["mlflow.db"]
    # The replaced database went aside whole: with its -wal, nothing it held is lost.
    assert {"mlflow.db", "mlflow.db-wal"} <= {p.name for p in aside.iterdir()}
    assert rows(aside / "mlflow.db") == ["after-the-backup", "old"]
