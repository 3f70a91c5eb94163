#!/usr/bin/env bash
# Time a fresh converge of the whole site on a bare EC2-like host, then a
# no-op re-run, using the sandbox (scripts/sandbox). Prints both figures and
# whether the re-run changed nothing. The sandbox is removed first and left
# running afterwards (`make sandbox-destroy` removes it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

run() {  # run LABEL: time one `scripts/sandbox up`, keep its recap
  local start end
  start=$(date +%s.%N)
  scripts/sandbox up > ".cache/bench-$1.log" 2>&1 || { tail -40 ".cache/bench-$1.log"; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')"
}

mkdir -p .cache
scripts/sandbox down > /dev/null
fresh=$(run fresh)
noop=$(run noop)
recap=$(grep -E '^sandbox +: ok=' .cache/bench-noop.log)
changed=$(sed -E 's/.*changed=([0-9]+).*/\1/' <<<"$recap")

printf '\n%-34s %10s\n' "site.yml on the sandbox host" "seconds"
printf '%-34s %10s\n' "fresh converge (bare host)" "$fresh"
printf '%-34s %10s\n' "no-op re-run" "$noop"
printf 'no-op re-run changed: %s (%s)\n' "$changed" "$([[ $changed == 0 ]] && echo PASS || echo FAIL)"
[[ $changed == 0 ]]
