"""Print (JSON) the requirements in argv[1] (a JSON list) that the installed
distributions do not satisfy. Reads package metadata only; never installs."""
import json, sys
from importlib import metadata
wanted = json.loads(sys.argv[1])
try:
    from packaging.requirements import Requirement
except ImportError:
    print(json.dumps(wanted))
    sys.exit(0)
missing = []
for spec in wanted:
    req = Requirement(spec)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(spec)
        continue
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        missing.append(spec)
print(json.dumps(missing))
