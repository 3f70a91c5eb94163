"""sqlite_wal.py [--check] USER PATH...: keep MLflow's SQLite databases in
WAL mode (run by the mlflow_service role, as root, with the system Python).

WAL is a property of the database file: bytes 18 and 19 of its header are 2
in WAL mode, and every connection that opens the file follows them. They are
read here without opening the database. A file not in WAL mode is switched
by SQLite itself (PRAGMA journal_mode=WAL) as USER, the service user that
owns the data directory, so the -wal and -shm files SQLite creates are its
own. The switch works while the server runs: its idle connections read the
new header at their next transaction. A missing file (a server not started
yet) is left alone. --check: report only.

Prints one line per database, PATH: BEFORE -> wal for a change, and exits 0;
a switch that fails exits 1 and names the database and SQLite's error.
"""
import os
import pwd
import sqlite3
import sys

WAL = b"\x02\x02"


def header_mode(path):
    """'wal', 'rollback' (SQLite's rollback journal), or None (no file)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except FileNotFoundError:
        return None
    return "wal" if header[18:20] == WAL else "rollback"


def switch(user, paths):
    """As the service user, in a child: the parent stays root."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            account = pwd.getpwnam(user)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            for path in paths:
                connection = sqlite3.connect(path, timeout=60)
                try:
                    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                finally:
                    connection.close()
                if mode != "wal":
                    print(f"{path}: SQLite kept journal mode {mode}", file=sys.stderr)
                    code = 1
        except (OSError, KeyError, sqlite3.Error) as exc:
            print(f"switching to WAL failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(argv):
    check = argv[:1] == ["--check"]
    if check:
        argv = argv[1:]
    if len(argv) < 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    user, paths = argv[0], argv[1:]
    todo = [(path, mode) for path in paths if (mode := header_mode(path)) not in (None, "wal")]
    if todo and not check:
        code = switch(user, [path for path, _ in todo])
        if code != 0:
            return code
        for path, _ in todo:
            if header_mode(path) != "wal":
                print(f"{path}: still not in WAL mode after the switch", file=sys.stderr)
                return 1
    for path, mode in todo:
        print(f"{path}: {mode} -> wal")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
