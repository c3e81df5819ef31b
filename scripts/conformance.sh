#!/usr/bin/env bash
# The OCI distribution-spec conformance suites against a fresh `cairn registry
# serve` on an empty temporary store: prints each suite's counts, exits 1 when
# any spec failed.   usage: scripts/conformance.sh [SUITES_DIR] [REPORT_DIR]
set -uo pipefail

suites=${1:-../shared/tools/oci-conformance}
report=${2:-$(mktemp -d)}
mkdir -p "$report"
cairn=${CAIRN:-.venv/bin/cairn}
[ -x "$suites/run.sh" ] || { echo "conformance: no suites at $suites (run.sh)" >&2; exit 2; }

store=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$cairn" registry serve --addr "127.0.0.1:$port" --root "$store" >"$report/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$store"' EXIT
python3 "$(dirname "$0")/wait-registry.py" "$port"

bash "$suites/run.sh" "http://127.0.0.1:$port" "$report" >"$report/run.log" 2>&1
failed=0
if [ -f "$report/v1.1.1/stdout.log" ]; then
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$report/v1.1.1/stdout.log" | grep -E '(SUCCESS|FAIL)! --' | tail -1)
    echo "v1.1.1: $line"
    [[ $line == SUCCESS* ]] || failed=1
fi
if [ -f "$report/main/stdout.log" ]; then
    pass=$(grep -E '^  Pass\.\.' "$report/main/stdout.log" | grep -oE '[0-9]+$')
    fail=$(grep -E '^  FAIL\.\.' "$report/main/stdout.log" | grep -oE '[0-9]+$')
    echo "main: $pass result nodes passed, $fail failed"
    grep -E '^  OCI Conformance Test/[^/]*: FAIL' "$report/main/stdout.log" | sed 's/^ */  failing area: /'
    [ "${fail:-1}" = 0 ] || failed=1
fi
grep -q Traceback "$report/serve.log" && { echo "the server printed a traceback: $report/serve.log"; failed=1; }
echo "reports: $report"
exit "$failed"
