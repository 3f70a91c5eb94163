"""Checks shared by the MLflow roles, in one place instead of a Jinja copy per role.

- `cron_schedule_ok`: a five-field schedule cron accepts (mlflow_backup,
  mlflow_gc).
- `database_uri`: the tracking or auth database URI of the stack's database
  settings (mlflow_common's defaults build both with it).
- `database_uri_problem`: what is wrong with a tracking or auth database URI
  (mlflow_service, mlflow_auth), as text that never holds the password; ''
  when the URI is fine.
- `password_problem`: what is wrong with a basic-auth password (mlflow_auth,
  mlflow_users), as text that never holds the password; '' when it is fine.

The roles that use them list this role as a dependency (meta/main.yml),
which is what makes Ansible load these filters.
"""
import re
from urllib.parse import quote

# Field ranges: minute, hour, day of month, month, day of week (0 and 7: Sunday).
_CRON_LIMITS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_CRON_NAMES = [
    {}, {}, {},
    {name: number for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)},
    {name: number for number, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
]
_CRON_ITEM = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


def _cron_value(text, field):
    if text.isdigit():
        value = int(text)
    elif text in _CRON_NAMES[field]:
        value = _CRON_NAMES[field][text]
    else:
        return None
    low, high = _CRON_LIMITS[field]
    return value if low <= value <= high else None


def cron_schedule_ok(schedule):
    """True when `schedule` is five cron fields of `*`, numbers, names (months,
    week days), ranges, lists and steps, every number within its field's range."""
    fields = str(schedule).split()
    if len(fields) != 5:
        return False
    for field, text in enumerate(fields):
        for item in text.lower().split(","):
            match = _CRON_ITEM.match(item)
            if not match:
                return False
            base, step = match.groups()
            if step is not None and int(step) < 1:
                return False
            if base == "*":
                continue
            values = [_cron_value(part, field) for part in base.split("-")]
            if None in values or (len(values) == 2 and values[0] > values[1]):
                return False
    return True


# Groups: scheme, driver, user, password, host, port, database, query.
_PG_URI = re.compile(
    r"^(postgresql(\+psycopg2?)?)://([^:@/?#]+)(?::([^@/?#]*))?@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]*)"
    r"(?::([0-9]+))?/([^/?#]+)(?:\?(.*))?$")
_SSLMODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


def database_uri_problem(uri):
    """'' for a URI MLflow's SQLAlchemy stores accept as this project runs them,
    else what is wrong, worded to follow the variable's name ("... is not an
    absolute SQLite URI ..."). The text never contains the URI or its password."""
    uri = str(uri)
    if uri.startswith("sqlite:"):
        if not re.match(r"^sqlite:////[^/ ]", uri):
            return ("is not an absolute SQLite URI (sqlite:////var/lib/mlflow/mlflow.db, four slashes:"
                    " a relative path resolves against the working directory)")
        return ""
    if re.match(r"^postgres(ql)?[+:]", uri):
        match = _PG_URI.match(uri)
        if match is None:
            return ("is not a PostgreSQL URI of the form postgresql://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=...]"
                    " (driver +psycopg2 or +psycopg optional; postgres:// is not accepted by SQLAlchemy)")
        _scheme, driver, _user, password, _host, port, _database, query = match.groups()
        if not driver:
            return ("names no driver: write postgresql+psycopg2:// (SQLAlchemy 2.1 in the venv defaults"
                    " to psycopg 3, which mlflow_venv_postgresql does not install)")
        if re.search(r"%(?![0-9A-Fa-f]{2})", password or ""):
            return ("holds a password that is not URL-encoded (a % not followed by two hex digits;"
                    " encode it with the urlencode filter)")
        if port and not 1 <= int(port) <= 65535:
            return f"has port {port}, not 1-65535"
        if query:
            pairs = query.split("&")
            if any(not re.match(r"^[a-z_]+=[^&=]*$", pair) for pair in pairs):
                return "has a malformed query string (expected name=value pairs joined by &)"
            modes = [pair.split("=", 1)[1] for pair in pairs if pair.startswith("sslmode=")]
            if any(mode not in _SSLMODES for mode in modes):
                return "has an sslmode that is not one of " + ", ".join(_SSLMODES)
        return ""
    if not re.match(r"^(mysql|mssql)(\+[a-z0-9_]+)?://[^/]+/[^/?]+", uri):
        return ("is not a database URI (sqlite:////var/lib/mlflow/mlflow.db,"
                " postgresql://USER:PASSWORD@HOST:PORT/DATABASE, mysql://...)")
    return ""


def database_uri(settings, sqlite_file, database):
    """The URI of one database of the stack. `settings`: engine, home, user,
    password, host, port, sslmode and ca_path (mlflow_common_database_*).
    SQLite: a file in the home. PostgreSQL: the psycopg2 driver named (the
    venv has psycopg2, SQLAlchemy 2.1 would pick psycopg 3), the password
    URL-encoded ('/' too), an IPv6 host bracketed, loopback when no host is
    given (the local server, no TLS), else sslmode and, beyond `require`, the
    CA file to verify against."""
    if settings["engine"] == "sqlite":
        return f"sqlite:///{settings['home']}/{sqlite_file}"
    host = str(settings["host"] or "")
    address = f"[{host}]" if ":" in host else (host or "127.0.0.1")
    query = ""
    if host:
        query = f"?sslmode={settings['sslmode']}"
        if settings["sslmode"] != "require":
            query += f"&sslrootcert={settings['ca_path']}"
    password = quote(str(settings["password"]), safe="")
    return f"postgresql+psycopg2://{settings['user']}:{password}@{address}:{settings['port']}/{database}{query}"


# MLflow 3.17.2 refuses a shorter password (mlflow/utils/validation.py,
# _validate_password) and its old publicly known default admin password
# (mlflow/server/auth/__init__.py, _LEGACY_DEFAULT_ADMIN_PASSWORD).
_PASSWORD_MIN_LENGTH = 12
_PASSWORD_FORBIDDEN = ("password1234",)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def password_problem(password):
    """'' for a basic-auth password MLflow accepts and its ini can hold, else
    what is wrong, worded to follow the variable's name ("... is shorter than
    12 characters ..."). The text never contains the password, so a check may
    show it whatever the value."""
    password = "" if password is None else str(password)
    if not password:
        return "is empty: set it from vault"
    if len(password) < _PASSWORD_MIN_LENGTH:
        return f"is shorter than {_PASSWORD_MIN_LENGTH} characters (MLflow refuses it)"
    if password in _PASSWORD_FORBIDDEN:
        return "is the publicly known default `password1234` (MLflow refuses it)"
    if password != password.strip() or _CONTROL.search(password):
        return ("starts or ends with white space or holds a control character"
                " (the ini cannot store it)")
    return ""


class FilterModule:
    def filters(self):
        return {
            "cron_schedule_ok": cron_schedule_ok,
            "database_uri": database_uri,
            "database_uri_problem": database_uri_problem,
            "password_problem": password_problem,
        }
