"""Test fixture: records every distinct process command line on the host.

Started by prepare.yml before the converge, it reads /proc/*/cmdline every
50 ms and appends each command line not seen before to the output file
(root-only), so the checks can prove that no secret ever appeared in any
process's arguments during converge, re-runs and restore. Stops by itself
after the given number of seconds.
"""
import os
import sys
import time

out_path, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
seen = set()
fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cmdline and cmdline not in seen:
                seen.add(cmdline)
                out.write(cmdline.replace(b"\0", b" ").decode("utf-8", "replace").rstrip() + "\n")
                out.flush()
        time.sleep(0.05)
