"""`snapshot DIR` / `restore DIR`: the SQLite tracking store and auth database,
copied with SQLite's online backup API (run by the mlflow_upgrade role's
upgrade procedure, as the service user)."""
import configparser, json, os, sqlite3, sys
mode, folder = sys.argv[1], sys.argv[2]
ini = configparser.ConfigParser()
ini.read(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
uris = {"tracking": os.environ["MLFLOW_BACKEND_STORE_URI"], "auth": ini["mlflow"]["database_uri"]}
os.makedirs(folder, mode=0o700, exist_ok=True)
report = {}
def copy(src, dst):
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
        if b.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            sys.exit("integrity check of %s failed" % dst)
    a.close()
    b.close()
for name, uri in uris.items():
    if not uri.startswith("sqlite:///"):
        report[name] = "other"
        continue
    live = uri[len("sqlite:///"):].split("?", 1)[0]
    copy_path = os.path.join(folder, name + ".db")
    if mode == "snapshot":
        if not os.path.exists(live):
            report[name] = "absent"
            if os.path.exists(copy_path):
                os.remove(copy_path)
            continue
        copy(live, copy_path)
    elif os.path.exists(copy_path):
        copy(copy_path, live)
    else:
        report[name] = "absent"
        continue
    report[name] = "sqlite"
print(json.dumps(report))
