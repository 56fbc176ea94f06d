#!/usr/bin/env bash
# HTTP throughput and latency of xorb-svc against a trivial axum baseline, on loopback only.
#
#     bench/http.sh
#
# Builds the release binaries, brings up a private v2025.08-rc1 stack (with demo data) in a temporary
# state directory, and measures with wrk, one after the other and with the same settings:
#
#   baseline  GET  /api/v1/health on xorb-bench-baseline (one trivial axum handler, small JSON)
#   health    GET  /api/v1/health on the stack's api
#   sessions  POST /api/v1/ptaas/sessions on the api, as tenant acme, body
#             {"targets":[{"host":"127.0.0.1","ports":[PORT]}]} with PORT a closed loopback port
#             (after raising the tenant's quota so that 429s do not stand in for work)
#
# then prints requests/s, p50 and p99 latency, and each figure's ratio to the baseline's.
# The stack, the baseline and the temporary directory go away at the end, also on failure.
#
# Settings (environment): BENCH_THREADS (2), BENCH_CONNECTIONS (50), BENCH_DURATION (10s),
# BENCH_WARMUP (2s, same settings, not reported; 0 to skip), BENCH_TENANT (acme).
# Needs: cargo, wrk, psql, curl, jq, and the .venv that scripts/setup-python creates.
# Secrets (the tenant's token, the database password) travel only through the environment and
# files in the private state directory; they are never printed nor put on a command line.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

THREADS=${BENCH_THREADS:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-50}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
TENANT=${BENCH_TENANT:-acme}
RELEASE=v2025.08-rc1
QUOTA=2000000000 # max_sessions_per_hour is an int4
MAX_ERROR_PERCENT=1

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'bench/http.sh: %s\n' "$*" >&2
  exit 1
}

for tool in cargo wrk psql curl jq; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $ROOT/.venv/bin/python ]] || die "no .venv: run scripts/setup-python first"

say "building release binaries"
cargo build --release -p xorbctl -p xorb-svc -p xorb-bench-baseline
BIN=$ROOT/target/release
XORBCTL=$BIN/xorbctl
export XORB_SVC_BIN=$BIN/xorb-svc

WORK=$(mktemp -d "${TMPDIR:-/tmp}/xorb-bench.XXXXXX")
chmod 755 "$WORK" # the postgres user must reach its data directory; secrets/ stays 0700
STATE=$WORK/state
BASELINE_PID=
WRK_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n $WRK_PID ]] && kill -0 "$WRK_PID" 2>/dev/null; then
    kill -TERM "$WRK_PID" 2>/dev/null
    wait "$WRK_PID" 2>/dev/null
  fi
  if [[ -n $BASELINE_PID ]] && kill -0 "$BASELINE_PID" 2>/dev/null; then
    kill -TERM "$BASELINE_PID" 2>/dev/null
    wait "$BASELINE_PID" 2>/dev/null
  fi
  local removable=1
  if [[ -e $STATE ]]; then
    say "stopping the stack"
    if ! "$XORBCTL" --state-dir "$STATE" stack down >"$WORK/stack-down.log" 2>&1; then
      cat "$WORK/stack-down.log" >&2
      printf 'bench/http.sh: stack down failed; left %s in place for a look\n' "$WORK" >&2
      removable=0
      ((rc == 0)) && rc=1
    fi
  fi
  ((removable)) && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the baseline -----------------------------------------------------------------------------
say "starting the baseline"
"$BIN/xorb-bench-baseline" 127.0.0.1:0 >"$WORK/baseline.out" 2>"$WORK/baseline.err" &
BASELINE_PID=$!
BASELINE_ADDR=
for _ in $(seq 100); do
  BASELINE_ADDR=$(sed -n 's/^listening on //p' "$WORK/baseline.out")
  [[ -n $BASELINE_ADDR ]] && break
  kill -0 "$BASELINE_PID" 2>/dev/null || { cat "$WORK/baseline.err" >&2; die "the baseline exited"; }
  sleep 0.1
done
[[ $BASELINE_ADDR == 127.0.0.1:* ]] || die "the baseline did not report a loopback address"

# --- the stack --------------------------------------------------------------------------------
say "bringing up $RELEASE with demo data in $STATE"
if ! "$XORBCTL" --state-dir "$STATE" stack up --release "$RELEASE" --demo-data >"$WORK/stack-up.log" 2>&1; then
  cat "$WORK/stack-up.log" >&2
  die "stack up failed"
fi
"$XORBCTL" --state-dir "$STATE" status --output json >"$WORK/status.json"
port_of() {
  jq -er --arg n "$1" '[.services[] | select(.name == $n) | .port][0] // empty' "$WORK/status.json"
}
API_PORT=$(port_of api) || die "status names no api port"
CP_PORT=$(port_of control-plane) || die "status names no control-plane port"
PG_PORT=$(jq -er '.servers.postgres.port' "$WORK/status.json") || die "status names no postgres port"

sql() {
  PGPASSWORD=$(<"$STATE/secrets/db-password") PGCONNECT_TIMEOUT=10 \
    psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U xorb -d xorb "$@"
}

TOKEN=$(jq -er --arg t "$TENANT" '.[$t] // empty' "$STATE/secrets/tenants.json") ||
  die "no token for tenant $TENANT in secrets/tenants.json"
TENANT_ID=$(sql -v slug="$TENANT" <<<"SELECT id FROM tenants WHERE slug = :'slug';")
[[ -n $TENANT_ID ]] || die "no tenant $TENANT in the database"

say "raising $TENANT's quota to $QUOTA sessions/hour"
sql -v tid="$TENANT_ID" -v quota="$QUOTA" <<'SQL' >/dev/null
INSERT INTO tenant_quotas (tenant_id, max_sessions_per_hour, updated_at)
VALUES (:'tid', :quota, now())
ON CONFLICT (tenant_id) DO UPDATE
SET max_sessions_per_hour = EXCLUDED.max_sessions_per_hour, updated_at = now();
SQL

# --- wrk --------------------------------------------------------------------------------------
cat >"$WORK/report.lua" <<'LUA'
-- One machine-readable line per run; latency in microseconds; http_errors = responses >= 400.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d http_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
LUA
CLOSED_PORT=$(free_port)
{
  cat <<'LUA'
-- The tenant's token comes from the environment, never from wrk's arguments.
local token = os.getenv("XORB_BENCH_TOKEN")
if token == nil or token == "" then
  error("XORB_BENCH_TOKEN is not set")
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
LUA
  printf 'wrk.body = [[{"targets":[{"host":"127.0.0.1","ports":[%d]}]}]]\n' "$CLOSED_PORT"
  cat "$WORK/report.lua"
} >"$WORK/sessions.lua"

declare -A RPS P50 P99 ERRS
ORDER=()

# run NAME URL SCRIPT: a warm-up, then the measured run.
run() {
  local name=$1 url=$2 script=$3
  case $url in http://127.0.0.1:*/*) ;; *) die "refusing a non-loopback target: $url" ;; esac
  # wrk runs in the background and the script waits for it: wrk stops quietly on SIGINT, which
  # would leave bash's INT trap unrun; `wait` returns at once on a trapped signal instead.
  if [[ $WARMUP != 0 ]]; then
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$WARMUP" -s "$script" "$url" >/dev/null &
    WRK_PID=$!
    wait "$WRK_PID"
  fi
  say "wrk $name: -t$THREADS -c$CONNECTIONS -d$DURATION /${url#http://*/}"
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s "$script" "$url" >"$WORK/$name.wrk" &
  WRK_PID=$!
  wait "$WRK_PID"
  WRK_PID=
  grep -v '^BENCH ' "$WORK/$name.wrk" >&2 || true
  local line
  line=$(grep '^BENCH ' "$WORK/$name.wrk") || die "wrk gave no summary for $name"
  local requests duration_us p50 p99 http_errors socket_errors
  read -r requests duration_us p50 p99 http_errors socket_errors < <(
    sed -E 's/^BENCH requests=([0-9]+) duration_us=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+) http_errors=([0-9]+) socket_errors=([0-9]+)$/\1 \2 \3 \4 \5 \6/' <<<"$line"
  )
  RPS[$name]=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
  P50[$name]=$p50
  P99[$name]=$p99
  ERRS[$name]=$((http_errors + socket_errors))
  ORDER+=("$name")
  if ((requests == 0)) || ((ERRS[$name] * 100 > requests * MAX_ERROR_PERCENT)); then
    say "WARNING: $name: ${ERRS[$name]} of $requests requests failed"
  fi
}

run baseline "http://$BASELINE_ADDR/api/v1/health" "$WORK/report.lua"
run health "http://127.0.0.1:$API_PORT/api/v1/health" "$WORK/report.lua"

# The control plane caches a tenant's limit for 30 s: wait until it serves the raised one.
say "waiting for the control plane to serve the raised quota"
limit=
for _ in $(seq 45); do
  limit=$(curl -fsS --max-time 2 "http://127.0.0.1:$CP_PORT/api/v1/quota/$TENANT_ID" | jq -r '.limit' 2>/dev/null || true)
  [[ $limit == "$QUOTA" ]] && break
  sleep 1
done
[[ $limit == "$QUOTA" ]] || die "the control plane still reports a limit of ${limit:-?} for $TENANT"

# One request by hand first: the run only means something if sessions are created (201).
code=$(printf 'header = "Authorization: Bearer %s"\n' "$TOKEN" |
  curl -sS -K - -o "$WORK/preflight.json" -w '%{http_code}' --max-time 10 \
    -H 'Content-Type: application/json' \
    --data "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$CLOSED_PORT]}]}" \
    "http://127.0.0.1:$API_PORT/api/v1/ptaas/sessions")
[[ $code == 201 ]] || die "POST /api/v1/ptaas/sessions answered $code: $(jq -c '{error, message}' "$WORK/preflight.json" 2>/dev/null)"

before=$(sql <<<"SELECT count(*) FROM ptaas_sessions;")
export XORB_BENCH_TOKEN=$TOKEN # read by sessions.lua through os.getenv
run sessions "http://127.0.0.1:$API_PORT/api/v1/ptaas/sessions" "$WORK/sessions.lua"
after=$(sql <<<"SELECT count(*) FROM ptaas_sessions;")
say "sessions created during the sessions run (warm-up included): $((after - before))"

# --- the table --------------------------------------------------------------------------------
{
  printf '\nwrk %s, -t%s -c%s -d%s, loopback; %s, %s cores\n' \
    "$(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p')" "$THREADS" "$CONNECTIONS" "$DURATION" "$RELEASE" "$(nproc)"
  printf '%-10s %-32s %12s %10s %10s %8s %10s %10s %10s\n' \
    target request req/s p50_ms p99_ms errors "rps/base" "p50/base" "p99/base"
  declare -A REQ=(
    [baseline]="GET /api/v1/health (baseline)"
    [health]="GET /api/v1/health"
    [sessions]="POST /api/v1/ptaas/sessions"
  )
  for n in "${ORDER[@]}"; do
    awk -v n="$n" -v req="${REQ[$n]}" -v rps="${RPS[$n]}" -v p50="${P50[$n]}" -v p99="${P99[$n]}" \
      -v err="${ERRS[$n]}" -v brps="${RPS[baseline]}" -v bp50="${P50[baseline]}" -v bp99="${P99[baseline]}" '
      function ratio(a, b) { return b > 0 ? sprintf("%.3f", a / b) : "-" }
      BEGIN {
        printf "%-10s %-32s %12.1f %10.3f %10.3f %8d %10s %10s %10s\n",
          n, req, rps, p50 / 1000, p99 / 1000, err, ratio(rps, brps), ratio(p50, bp50), ratio(p99, bp99)
      }'
  done
}

for n in "${ORDER[@]}"; do
  if ((ERRS[$n] > 0)); then
    die "$n had ${ERRS[$n]} failed requests: its figures are not the service's"
  fi
done
