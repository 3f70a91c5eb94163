"""mlflow-backup: consistent backups of MLflow's tracking and auth databases.

Installed by the mlflow_backup role (mlflow-ansible) and run by the MLflow
venv's Python (boto3 for S3; standard library otherwise) through the
/usr/local/sbin/mlflow-backup wrapper, as the service user. Root runs only
`create` itself: it makes the backup as the service user, then records the
new archive's checksum in a ledger of its own, which the service cannot
write. `fetch latest` takes the newest archive the ledger knows (and checks
its checksum against it), so an archive the service planted, locally or in
the bucket, never becomes the default restore.

The database URIs are read from the server's own configuration (the
EnvironmentFile's MLFLOW_BACKEND_STORE_URI and the basic-auth ini's
database_uri): they may hold a password and never appear on a command line or
in a log line. Settings without secrets come from a JSON file (--config).

Subcommands:
  create [--label LABEL]   back up both databases; last stdout line: the archive path
                           (as root: made as the service user, then recorded in the ledger)
  list [--json]            backups of this host (local and S3), newest first
  verify FILE              checksum, manifest and database integrity of an archive
  fetch [NAME|latest]      make a backup local (downloading it in S3 mode), verify it,
                           print its path; latest = the newest the ledger records
  restore FILE             put the databases of a verified archive in place (service
                           stopped), keeping the replaced ones aside (the newest
                           aside_keep restore-aside directories are kept)

Exit codes: 0 success (also `create` with no database yet: nothing to back up,
nothing printed on stdout), 1 unexpected error, 2 usage or configuration error,
3 a database could not be dumped or restored, 4 S3 transfer failed (a new
local archive is kept), 5 verification failed (checksum, manifest,
integrity), 6 restore refused (the service is running), 75 another
mlflow-backup run holds the lock.
"""
import argparse
import configparser
import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import json
import os
import pwd
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import syslog
import tarfile
import tempfile
import time
import urllib.parse

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DB, EXIT_S3, EXIT_VERIFY, EXIT_RUNNING, EXIT_LOCKED = 0, 1, 2, 3, 4, 5, 6, 75
NAME_RE = re.compile(
    r"^mlflow-backup-(?P<host>.+)-(?P<ts>\d{8}T\d{6}Z)(?:-(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]{0,39}))?\.tar\.gz$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
MANIFEST = "manifest.json"
FORMAT = 1
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
ASIDE_NAME = re.compile(r"^\d{8}T\d{6}Z$")


class Failure(Exception):
    """An expected failure: message for the log, and the exit code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# --- logging: syslog (the journal) and stderr; never a secret ------------------------------
_SECRETS = set()
# --quiet (cron): informational lines go to syslog only, failures also to stderr
# (which cron mails, when the host can send mail).
QUIET = [False]


def redact(text):
    text = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    # Any URI with credentials that slipped into an error message.
    return re.sub(r"(://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def log(message, priority=syslog.LOG_INFO):
    message = redact(message)
    syslog.syslog(priority, message)
    if not QUIET[0] or priority <= syslog.LOG_WARNING:
        print(f"mlflow-backup: {message}", file=sys.stderr, flush=True)


# --- configuration ------------------------------------------------------------------------
def read_environment_file(path):
    """Parse a systemd EnvironmentFile (KEY=value, KEY="value" with \\ escapes)."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line or line.startswith(("#", ";")) or "=" not in line:
                continue
            key, value = line.split("=", 1)
            key, value = key.strip(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                quote, body, out, i = value[0], value[1:-1], [], 0
                while i < len(body):
                    if quote == '"' and body[i] == "\\" and i + 1 < len(body):
                        out.append(body[i + 1])
                        i += 2
                    else:
                        out.append(body[i])
                        i += 1
                value = "".join(out)
            values[key] = value
    return values


def read_auth_ini(path):
    parser = configparser.ConfigParser()
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser["mlflow"]


class Database:
    """One of the two databases, described without its password."""

    def __init__(self, name, uri):
        self.name = name
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.split("+", 1)[0]
        if scheme == "sqlite":
            path = uri.split("?", 1)[0][len(parts.scheme) + 4:]  # sqlite:/// + /abs/path
            if not path.startswith("/"):
                raise Failure(EXIT_USAGE, f"{name} database: only absolute SQLite paths are supported")
            self.kind, self.path = "sqlite", urllib.parse.unquote(path)
            self.file = f"{name}.db"
            self.label = self.path
        elif scheme in ("postgresql", "postgres"):
            self.kind = "postgresql"
            self.file = f"{name}.dump"
            self.user = urllib.parse.unquote(parts.username or "")
            self.password = urllib.parse.unquote(parts.password or "")
            _SECRETS.add(self.password)
            _SECRETS.add(parts.password or "")
            self.host = parts.hostname or ""
            self.port = str(parts.port or 5432)
            self.dbname = urllib.parse.unquote(parts.path.lstrip("/"))
            self.query = dict(urllib.parse.parse_qsl(parts.query))
            if not self.dbname:
                raise Failure(EXIT_USAGE, f"{name} database: the PostgreSQL URI names no database")
            self.label = f"postgresql {self.dbname} on {self.host or 'the local socket'}:{self.port}"
        else:
            raise Failure(EXIT_USAGE, f"{name} database: unsupported URI scheme '{scheme}' (sqlite or postgresql)")

    # PostgreSQL: connection settings in the environment, password in a 0600 PGPASSFILE.
    @contextlib.contextmanager
    def pg_env(self):
        with tempfile.TemporaryDirectory(prefix="mlflow-backup-pg-") as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
            env.update({"PGUSER": self.user, "PGPORT": self.port, "PGDATABASE": self.dbname,
                        "PGCONNECT_TIMEOUT": self.query.get("connect_timeout", "30")})
            if self.host:
                env["PGHOST"] = self.host
            for key, var in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"),
                             ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY")):
                if key in self.query:
                    env[var] = self.query[key]
            if self.password:
                passfile = os.path.join(tmp, "pgpass")
                escaped = self.password.replace("\\", "\\\\").replace(":", "\\:")
                fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"*:*:*:*:{escaped}\n")
                env["PGPASSFILE"] = passfile
            yield env


def run_pg(argv, env, what):
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise Failure(EXIT_DB, f"{what} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


class Backup:
    def __init__(self, config):
        self.c = config
        self.host = config["host"]
        self.local_dir = config["local_dir"]
        self.s3_mode = config.get("destination") == "s3"
        self._s3 = None

    # --- the two databases, from the server's own configuration ---------------------------
    def databases(self):
        env = read_environment_file(self.c["env_file"])
        backend = env.get("MLFLOW_BACKEND_STORE_URI")
        if not backend:
            raise Failure(EXIT_USAGE, f"no MLFLOW_BACKEND_STORE_URI in {self.c['env_file']}")
        auth = read_auth_ini(self.c["auth_config"]).get("database_uri")
        if not auth:
            raise Failure(EXIT_USAGE, f"no database_uri in {self.c['auth_config']}")
        return [Database("tracking", backend), Database("auth", auth)]

    # --- names ----------------------------------------------------------------------------
    @staticmethod
    def parse(name):
        match = NAME_RE.match(name)
        return match.groupdict() if match else None

    def mine(self, name):
        info = self.parse(name)
        return info is not None and info["host"] == self.host

    @staticmethod
    def newest_first(names):
        return sorted(names, key=lambda n: (Backup.parse(n)["ts"], n), reverse=True)

    def s3_key(self, name):
        prefix = self.c.get("s3_prefix", "").strip("/")
        return f"{prefix}/{name}" if prefix else name

    def s3_location(self):
        return f"s3://{self.c['s3_bucket']}/{self.c.get('s3_prefix', '').strip('/')}"

    # --- S3 -------------------------------------------------------------------------------
    def s3(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            for key, var in (("aws_config_file", "AWS_CONFIG_FILE"),
                             ("aws_shared_credentials_file", "AWS_SHARED_CREDENTIALS_FILE")):
                if self.c.get(key):
                    os.environ[var] = self.c[key]
            session = boto3.session.Session(profile_name=self.c.get("aws_profile") or None)
            self._s3 = session.client(
                "s3", endpoint_url=self.c.get("s3_endpoint_url") or None,
                config=Config(connect_timeout=10, read_timeout=120,
                              retries={"max_attempts": 3, "mode": "standard"}))
        return self._s3

    def s3_names(self):
        prefix = self.s3_key("mlflow-backup-")
        names, token = [], None
        while True:
            kwargs = {"Bucket": self.c["s3_bucket"], "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.s3().list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                names.append(obj["Key"].rsplit("/", 1)[-1])
            if not page.get("IsTruncated"):
                return names
            token = page["NextContinuationToken"]

    def local_names(self):
        try:
            return [n for n in os.listdir(self.local_dir) if self.parse(n)]
        except FileNotFoundError:
            return []

    # --- create ---------------------------------------------------------------------------
    def create(self, label, print_path=False):
        if label and not LABEL_RE.match(label):
            raise Failure(EXIT_USAGE, f"label '{label}' must be 1-40 of letters, digits, '_.-'")
        databases = self.databases()
        present = [db for db in databases if db.kind != "sqlite" or os.path.exists(db.path)]
        if not present:
            log("nothing to back up: no database exists yet ("
                + ", ".join(db.label for db in databases) + ")")
            return None
        for db in databases:
            if db not in present:
                log(f"{db.name} database {db.label} does not exist yet: not in this backup", syslog.LOG_WARNING)
        os.makedirs(self.local_dir, mode=0o700, exist_ok=True)
        while True:
            started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            stamp = started.strftime("%Y%m%dT%H%M%SZ")
            name = f"mlflow-backup-{self.host}-{stamp}" + (f"-{label}" if label else "") + ".tar.gz"
            if not os.path.exists(os.path.join(self.local_dir, name)):
                break
            time.sleep(1)
        log(f"creating {name} ({', '.join(db.label for db in present)})")
        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=self.local_dir) as tmp:
            entries = []
            for db in present:
                target = os.path.join(tmp, db.file)
                if db.kind == "sqlite":
                    self.sqlite_snapshot(db, target)
                else:
                    self.pg_dump(db, target)
                entries.append({"name": db.name, "kind": db.kind, "file": db.file, "source": db.label,
                                "size": os.path.getsize(target), "sha256": sha256_of(target)})
            manifest = {"format": FORMAT, "host": self.host, "label": label or "",
                        "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "finished": utc_now(), "mlflow_version": mlflow_version(),
                        "hostname": socket.gethostname(), "databases": entries}
            with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2)
            partial = os.path.join(tmp, name)
            with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
                for member in [MANIFEST] + [e["file"] for e in entries]:
                    tar.add(os.path.join(tmp, member), arcname=member)
            final = os.path.join(self.local_dir, name)
            os.replace(partial, final)
        digest = sha256_of(final)
        write_atomic(final + ".sha256", f"{digest}  {name}\n", 0o600)
        log(f"created {final} ({os.path.getsize(final)} bytes, sha256 {digest})")
        # Complete and valid locally: root records it even if the upload fails.
        if not QUIET[0] or print_path:
            print(final, flush=True)
        self.prune_local(label)
        if self.s3_mode:
            try:
                self.upload(final)
                self.prune_s3(label)
            except Failure:
                raise
            except Exception as exc:  # botocore's many error types
                raise Failure(EXIT_S3, f"upload of {name} to {self.s3_location()} failed, "
                                       f"the local copy {final} is kept: {exc}") from exc
        where = self.s3_location() if self.s3_mode else self.local_dir
        write_atomic(self.c["status_file"],
                     f"timestamp={utc_now()}\nepoch={int(time.time())}\narchive={name}\ndestination={where}\n", 0o644)
        return final

    def sqlite_snapshot(self, db, target):
        """SQLite's online backup API: a consistent copy while the server writes."""
        try:
            source = sqlite3.connect(db.path, timeout=60)
            try:
                dest = sqlite3.connect(target)
                with dest:
                    source.backup(dest)
                check = dest.execute("PRAGMA integrity_check").fetchone()[0]
                dest.close()
            finally:
                source.close()
        except sqlite3.Error as exc:
            raise Failure(EXIT_DB, f"snapshot of {db.name} database {db.label} failed: {exc}") from exc
        if check != "ok":
            raise Failure(EXIT_DB, f"snapshot of {db.name} database {db.label} fails PRAGMA integrity_check: {check}")

    def pg_dump(self, db, target):
        with db.pg_env() as env:
            run_pg(["pg_dump", "--format=custom", "--no-password", "--file", target], env,
                   f"pg_dump of {db.name} database {db.label}")
            run_pg(["pg_restore", "--list", target], env, f"pg_restore --list of the {db.name} dump")

    def upload(self, path):
        name = os.path.basename(path)
        extra = self.c.get("s3_upload_extra_args") or {}
        # The archive first, its checksum last: a listed .sha256 means a complete upload.
        for local in (path, path + ".sha256"):
            key = self.s3_key(os.path.basename(local))
            self.s3().upload_file(local, self.c["s3_bucket"], key, ExtraArgs=extra or None)
        log(f"uploaded {name} to {self.s3_location()}")

    # --- retention: the newest N of this host's backups with the same label --------------
    def to_prune(self, names, label):
        same = [n for n in names if self.mine(n) and (self.parse(n)["label"] or "") == (label or "")]
        return self.newest_first(same)[int(self.c["retention"]):]

    def prune_local(self, label):
        for name in self.to_prune(self.local_names(), label):
            for path in (os.path.join(self.local_dir, name), os.path.join(self.local_dir, name + ".sha256")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            log(f"pruned local backup {name} (retention {self.c['retention']})")

    def prune_s3(self, label):
        names = [n for n in self.s3_names() if n.endswith(".tar.gz")]
        for name in self.to_prune(names, label):
            self.s3().delete_objects(Bucket=self.c["s3_bucket"], Delete={"Objects": [
                {"Key": self.s3_key(name)}, {"Key": self.s3_key(name + ".sha256")}]})
            log(f"pruned S3 backup {name} (retention {self.c['retention']})")

    # --- list / fetch ---------------------------------------------------------------------
    def inventory(self, all_hosts=False):
        found = {}
        for name in self.local_names():
            if name.endswith(".tar.gz") and (all_hosts or self.mine(name)):
                found.setdefault(name, []).append("local")
        if self.s3_mode:
            try:
                remote = set(self.s3_names())
            except Exception as exc:
                raise Failure(EXIT_S3, f"listing {self.s3_location()} failed: {exc}") from exc
            for name in remote:
                # Only complete uploads (the checksum is uploaded last).
                if name.endswith(".tar.gz") and name + ".sha256" in remote and (all_hosts or self.mine(name)):
                    found.setdefault(name, []).append("s3")
        return [(n, found[n]) for n in self.newest_first(found)]

    def fetch(self, name):
        ledger = read_ledger(self.c["ledger_file"])
        if name in (None, "", "latest"):
            backups = self.inventory()
            if ledger is not None:
                backups = [b for b in backups if b[0] in ledger]
            if not backups:
                raise Failure(EXIT_USAGE, f"no backup of host {self.host} found in {self.where()}"
                              + ("" if ledger is None else f" that {self.c['ledger_file']} records; "
                                 "name one explicitly (mlflow-backup list --all-hosts)"))
            name = backups[0][0]
            if ledger is None:
                log(f"no ledger ({self.c['ledger_file']}, a new host): the newest backup found, {name}, "
                    "is trusted as it is", syslog.LOG_WARNING)
        if not self.parse(name) or "/" in name:
            raise Failure(EXIT_USAGE, f"'{name}' is not a backup name (mlflow-backup-HOST-YYYYmmddTHHMMSSZ[-LABEL].tar.gz)")
        path = os.path.join(self.local_dir, name)
        if not (os.path.exists(path) and os.path.exists(path + ".sha256")):
            if not self.s3_mode:
                raise Failure(EXIT_USAGE, f"no backup {name} in {self.local_dir}")
            os.makedirs(self.local_dir, mode=0o700, exist_ok=True)
            try:
                for suffix in ("", ".sha256"):
                    partial = os.path.join(self.local_dir, f".download-{name}{suffix}")
                    self.s3().download_file(self.c["s3_bucket"], self.s3_key(name + suffix), partial)
                    os.replace(partial, path + suffix)
            except Exception as exc:
                raise Failure(EXIT_S3, f"download of {name} from {self.s3_location()} failed: {exc}") from exc
            log(f"downloaded {name} from {self.s3_location()}")
        verify(path)
        if ledger is not None and name in ledger and sha256_of(path) != ledger[name]:
            raise Failure(EXIT_VERIFY, f"{name} is not the archive {self.c['ledger_file']} records "
                                       "(checksum differs): it was replaced after it was made")
        return path

    def where(self):
        return f"{self.local_dir} or {self.s3_location()}" if self.s3_mode else self.local_dir

    # --- restore --------------------------------------------------------------------------
    def restore(self, path, force):
        with self.opened(path) as (archive, recorded):
            self.restore_from(archive, recorded, force, os.path.basename(path))

    @contextlib.contextmanager
    def opened(self, path):
        """The archive at path, opened once without following a link, as a
        path to that open file, and the checksum it must have: the ledger's
        for an archive root recorded (a file swapped in under its name since
        fetch does not match it), else its .sha256 file's."""
        try:
            fd = open_without_links(path)
        except OSError as exc:
            raise Failure(EXIT_VERIFY, f"{path} cannot be opened (a link is never followed): {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Failure(EXIT_VERIFY, f"{path} is not a regular file")
            name = os.path.basename(path)
            ledger = read_ledger(self.c["ledger_file"]) or {}
            if os.path.dirname(path) == self.local_dir.rstrip("/") and name in ledger:
                recorded = (ledger[name], self.c["ledger_file"])
            else:
                recorded = (read_checksum_file(path), f"{name}.sha256")
            yield f"/proc/self/fd/{fd}", recorded
        finally:
            os.close(fd)

    def restore_from(self, path, recorded, force, name):
        manifest = verify(path, recorded, name)
        unit = self.c.get("service_unit", "mlflow.service")
        active = subprocess.run(["systemctl", "is-active", "--quiet", unit], capture_output=True).returncode == 0
        if active and not force:
            raise Failure(EXIT_RUNNING, f"{unit} is running: stop it before a restore (or pass --force)")
        databases = {db.name: db for db in self.databases()}
        aside = os.path.join(self.c["aside_dir"], dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        os.makedirs(aside, mode=0o700, exist_ok=True)
        log(f"restoring {name}; replaced databases go to {aside}")
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=self.local_dir) as tmp:
            extract(path, manifest, tmp, name)
            for entry in manifest["databases"]:
                db = databases.get(entry["name"])
                if db is None or db.kind != entry["kind"]:
                    raise Failure(EXIT_USAGE, f"the backup's {entry['name']} database is {entry['kind']}, "
                                              f"the configured one is {db.kind if db else 'missing'}")
                source = os.path.join(tmp, entry["file"])
                if db.kind == "sqlite":
                    self.sqlite_swap(db, source, aside)
                else:
                    self.pg_restore(db, source, aside)
                log(f"restored the {db.name} database {db.label}")
        self.prune_aside()
        print(aside)

    def prune_aside(self):
        """Keep the newest aside_keep restore-aside directories (named by
        their UTC time, so names sort by age); other entries are left alone."""
        root, keep = self.c["aside_dir"], int(self.c["aside_keep"])
        names = sorted((n for n in os.listdir(root) if ASIDE_NAME.match(n)), reverse=True)
        for name in names[keep:]:
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
                log(f"pruned restore-aside {path} (mlflow_backup_aside_keep {keep})")

    @staticmethod
    def sqlite_swap(db, source, aside):
        """The archive's database in place of the live one, which goes aside
        with its -journal/-wal/-shm files (a stale -wal left beside the
        restored file would be replayed into it). The restored file keeps the
        journal mode of the one it replaces (WAL, as the mlflow_service role
        sets it): an archive made before WAL comes back in WAL mode too."""
        directory = os.path.dirname(db.path)
        mode, uid, gid, wal = 0o600, None, None, False
        if os.path.exists(db.path):
            st = os.stat(db.path)
            mode, uid, gid = st.st_mode & 0o777, st.st_uid, st.st_gid
            wal = sqlite_header_is_wal(db.path)
        else:
            st = os.stat(directory)
            uid, gid = st.st_uid, st.st_gid
        staged = os.path.join(directory, f".restore-{os.path.basename(db.path)}")
        # Side files an interrupted restore left beside the staged name would
        # be replayed into the new copy when it is opened for the WAL switch.
        for suffix in SQLITE_SIDE_FILES:
            if os.path.exists(staged + suffix):
                os.remove(staged + suffix)
        shutil.copyfile(source, staged)
        os.chmod(staged, mode)
        if os.geteuid() == 0:
            os.chown(staged, uid, gid)
        if wal and not sqlite_header_is_wal(staged):
            try:
                connection = sqlite3.connect(staged)
                try:
                    connection.execute("PRAGMA journal_mode=WAL")
                finally:
                    connection.close()
            except sqlite3.Error as exc:
                raise Failure(EXIT_DB, f"the restored {db.name} database {db.label} "
                                       f"cannot be put in WAL mode: {exc}") from exc
        for suffix in ("",) + SQLITE_SIDE_FILES:
            current = db.path + suffix
            if os.path.exists(current):
                os.replace(current, os.path.join(aside, os.path.basename(current)))
        os.replace(staged, db.path)

    def pg_restore(self, db, source, aside):
        with db.pg_env() as env:
            run_pg(["pg_dump", "--format=custom", "--no-password", "--file",
                    os.path.join(aside, db.file)], env, f"pg_dump of the replaced {db.name} database {db.label}")
            run_pg(["pg_restore", "--no-password", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                    "--single-transaction", "--exit-on-error", "--dbname", db.dbname, source], env,
                   f"pg_restore of the {db.name} database {db.label}")


# --- archive checks -----------------------------------------------------------------------
def sqlite_header_is_wal(path):
    """WAL mode, as SQLite keeps it: bytes 18 and 19 of the header are 2."""
    with open(path, "rb") as handle:
        return handle.read(20)[18:20] == b"\x02\x02"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_ledger(path):
    """name -> sha256 of the archives root recorded; None without a ledger."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    ledger = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if re.fullmatch(r"[0-9a-f]{64}", digest) and NAME_RE.match(name):
            ledger[name] = digest
    return ledger


LEDGER_KEEP = 1000


def create_and_record(config_path, config, label, quiet):
    """Root: the backup is made by the service user (this program, run by
    runuser), then root records the new archive's checksum in the ledger and
    takes the archive over (root:service group, 0640), so the service can
    still read (upload) and delete (prune) it but no longer rewrite it.
    The archive is hashed as soon as the child names it, while the child goes
    on to upload and prune, and it is read without following links: the
    directory is the service's. Returns the exit code of the backup."""
    argv = (["runuser", "-u", config["user"], "--", sys.executable, "-I", os.path.abspath(__file__),
            "--config", config_path, "create", "--print-path"] + (["--label", label] if label else [])
            + (["--quiet"] if quiet else []))
    account = pwd.getpwnam(config["user"])
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        # The child prints the path right after the archive is complete,
        # before the upload; a backup with nothing to do prints nothing.
        path = child.stdout.readline().strip()
        recorded = None
        if path:
            try:
                recorded = take_over(path, config["local_dir"], account)
            except (Failure, OSError):
                # Not recorded: no upload, and last-success stays as it was.
                child.kill()
                raise
        child.stdout.read()
    if recorded is None:
        return child.returncode
    name, digest = recorded
    ledger_path = config["ledger_file"]
    try:
        with open(ledger_path, encoding="utf-8") as handle:
            kept = handle.read().splitlines()[-(LEDGER_KEEP - 1):]
    except FileNotFoundError:
        kept = []
    write_atomic(ledger_path, "\n".join(kept + [f"{digest}  {name}"]) + "\n", 0o644)
    log(f"recorded {name} in {ledger_path}")
    if not quiet:
        print(path)
    return child.returncode


def take_over(path, local_dir, account):
    """(name, sha256) of the archive the service user just made at path."""
    name = os.path.basename(path)
    if os.path.dirname(path) != local_dir.rstrip("/") or not NAME_RE.match(name):
        raise Failure(EXIT_ERROR, f"the backup printed '{path}', not an archive in {local_dir}")
    fd = open_without_links(path, directory_too=True)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != account.pw_uid or st.st_nlink != 1:
            raise Failure(EXIT_ERROR, f"{path} is not a regular file of {account.pw_name} with one link: "
                                      "not recorded")
        # Taken over before it is hashed: from here the service cannot open
        # it for writing.
        os.fchown(fd, 0, account.pw_gid)
        os.fchmod(fd, 0o640)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return name, digest.hexdigest()


def open_without_links(path, directory_too=False):
    """A read-only fd of the file at path, refusing a link in its place (and,
    with directory_too, in its directory's): for files in a directory the
    service can write. O_NONBLOCK: a FIFO planted there cannot hang root."""
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if directory_too else 0))
    try:
        return os.open(os.path.basename(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path, content, mode):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def utc_now():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def mlflow_version():
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_manifest(path, name=None):
    name = name or path
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.getmember(MANIFEST)
            manifest = json.load(tar.extractfile(member))
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        raise Failure(EXIT_VERIFY, f"{name}: not a readable backup archive: {exc}") from exc
    if manifest.get("format") != FORMAT or not manifest.get("databases"):
        raise Failure(EXIT_VERIFY, f"{name}: unknown manifest format")
    for entry in manifest["databases"]:
        if entry.get("file") not in (f"{entry.get('name')}.db", f"{entry.get('name')}.dump") \
                or entry.get("name") not in ("tracking", "auth"):
            raise Failure(EXIT_VERIFY, f"{name}: unexpected entry in the manifest: {entry.get('file')}")
    return manifest


def extract(path, manifest, directory, name=None):
    """Only the files the manifest names, as plain files (no links, no paths)."""
    name = name or path
    with tarfile.open(path, "r:gz") as tar:
        for entry in manifest["databases"]:
            member = tar.getmember(entry["file"])
            if not member.isfile():
                raise Failure(EXIT_VERIFY, f"{name}: {entry['file']} is not a regular file")
            target = os.path.join(directory, entry["file"])
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256_of(target) != entry["sha256"]:
                raise Failure(EXIT_VERIFY, f"{name}: {entry['file']} does not match its checksum in the manifest")


def read_checksum_file(path):
    """The SHA-256 in the archive's .sha256 file (sha256sum's format)."""
    try:
        with open(path + ".sha256", encoding="utf-8") as handle:
            return handle.read().split()[0]
    except (OSError, IndexError) as exc:
        raise Failure(EXIT_VERIFY, f"{path}.sha256 is missing or empty") from exc


def verify(path, recorded=None, name=None):
    """The archive's manifest, once its checksum (the .sha256 file's, or
    recorded: (sha256, where it is recorded)), manifest and databases check."""
    name = name or os.path.basename(path)
    expected, source = recorded or (read_checksum_file(path), f"{name}.sha256")
    if sha256_of(path) != expected:
        raise Failure(EXIT_VERIFY, f"{name}: SHA-256 does not match {source}")
    manifest = read_manifest(path, name)
    with tempfile.TemporaryDirectory(prefix="mlflow-backup-verify-") as tmp:
        extract(path, manifest, tmp, name)
        for entry in manifest["databases"]:
            target = os.path.join(tmp, entry["file"])
            if entry["kind"] == "sqlite":
                try:
                    conn = sqlite3.connect(f"file:{urllib.parse.quote(target)}?mode=ro", uri=True)
                    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
                    conn.close()
                except sqlite3.Error as exc:
                    result = str(exc)
                if result != "ok":
                    raise Failure(EXIT_VERIFY, f"{name}: {entry['file']} fails PRAGMA integrity_check: {result}")
            else:
                result = subprocess.run(["pg_restore", "--list", target], capture_output=True, text=True,
                                        stdin=subprocess.DEVNULL)
                if result.returncode != 0:
                    raise Failure(EXIT_VERIFY, f"{name}: pg_restore --list {entry['file']} failed: "
                                               f"{result.stderr.strip()[-500:]}")
    log(f"verified {name}: checksum, manifest and integrity of "
        + ", ".join(f"{e['name']} ({e['kind']})" for e in manifest["databases"]))
    return manifest


@contextlib.contextmanager
def locked(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Failure(EXIT_LOCKED, f"another mlflow-backup run holds {path}: not starting a second one") from exc
        yield
    finally:
        os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mlflow-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="/etc/mlflow/backup.json")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="back up both databases; prints the archive path last")
    create.add_argument("--label", default="")
    create.add_argument("--quiet", action="store_true", help="log to syslog only, print nothing unless it fails (cron)")
    create.add_argument("--print-path", action="store_true", help=argparse.SUPPRESS)  # root's inner call
    listing = sub.add_parser("list", help="backups of this host, newest first")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all-hosts", action="store_true")
    verify_cmd = sub.add_parser("verify", help="checksum and integrity of an archive")
    verify_cmd.add_argument("file")
    fetch = sub.add_parser("fetch", help="make a backup local and verified; prints its path")
    fetch.add_argument("name", nargs="?", default="latest")
    restore = sub.add_parser("restore", help="put a verified archive's databases in place (service stopped)")
    restore.add_argument("file")
    restore.add_argument("--force", action="store_true", help="even if the service runs")
    args = parser.parse_args(argv)

    syslog.openlog("mlflow-backup", syslog.LOG_PID, syslog.LOG_DAEMON)
    QUIET[0] = getattr(args, "quiet", False)
    os.umask(0o077)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        backup = Backup(config)
        if args.command == "verify":
            verify(os.path.abspath(args.file))
            return EXIT_OK
        if args.command == "list":
            backups = backup.inventory(all_hosts=args.all_hosts)
            if args.json:
                print(json.dumps([{"name": n, "where": w} for n, w in backups]))
            else:
                for name, where in backups:
                    print(f"{name}\t{','.join(where)}")
            return EXIT_OK
        if args.command == "create" and os.geteuid() == 0:
            return create_and_record(os.path.abspath(args.config), config, args.label, args.quiet)
        os.makedirs(os.path.dirname(config["lock_file"]), exist_ok=True)
        with locked(config["lock_file"]):
            if args.command == "create":
                backup.create(args.label, args.print_path)
            elif args.command == "fetch":
                print(backup.fetch(args.name))
            elif args.command == "restore":
                backup.restore(os.path.abspath(args.file), args.force)
        return EXIT_OK
    except Failure as exc:
        log(f"FAILED ({args.command}): {exc}", syslog.LOG_ERR)
        return exc.code
    except (OSError, ValueError, KeyError, configparser.Error) as exc:
        log(f"FAILED ({args.command}): {type(exc).__name__}: {exc}", syslog.LOG_ERR)
        return EXIT_USAGE if isinstance(exc, (KeyError, configparser.Error, json.JSONDecodeError)) else EXIT_ERROR
    except Exception as exc:  # anything else: logged without secrets, never a traceback with values
        log(f"FAILED ({args.command}): unexpected {type(exc).__name__}: {exc}", syslog.LOG_ERR)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
