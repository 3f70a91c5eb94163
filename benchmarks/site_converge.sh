#!/usr/bin/env bash
# Time a fresh converge of the whole site on a bare EC2-like host, then a
# no-op re-run of site.yml alone (`scripts/sandbox up`, then `converge`). Prints both figures and
# whether the re-run changed nothing. The sandbox is removed first and left
# running afterwards (`make sandbox-destroy` removes it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

run() {  # run LABEL up|converge: time one `scripts/sandbox up|converge`, keep its recap
  local start end
  start=$(date +%s.%N)
  scripts/sandbox "$2" > ".cache/bench-$1.log" 2>&1 || { tail -40 ".cache/bench-$1.log"; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.1f}')"
}

mkdir -p .cache
scripts/sandbox down > /dev/null
fresh=$(run fresh up)
noop=$(run noop converge)
recap() {  # recap LABEL FIELD: a number from the run's recap line
  grep -E '^sandbox +: ok=' ".cache/bench-$1.log" | sed -E "s/.* $2=([0-9]+).*/\1/"
}
tasks() { echo $(( $(recap "$1" ok) + $(recap "$1" skipped) )); }
changed=$(recap noop changed)

printf '\n%-34s %10s %8s %8s\n' "site.yml on the sandbox host" "seconds" "tasks" "changed"
printf '%-34s %10s %8s %8s\n' "fresh converge (sandbox up)" "$fresh" "$(tasks fresh)" "$(recap fresh changed)"
printf '%-34s %10s %8s %8s\n' "no-op re-run (sandbox converge)" "$noop" "$(tasks noop)" "$changed"
printf 'tasks = ok + skipped in the recap. Goal (issue #9): no-op at most 15 s and 150 tasks, fresh at most 90 s.\n'
printf 'no-op re-run changed: %s (%s)\n' "$changed" "$([[ $changed == 0 ]] && echo PASS || echo FAIL)"
[[ $changed == 0 ]]
