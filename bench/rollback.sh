#!/usr/bin/env bash
# Wall time of `xorbctl rollback` against the same rollback done "as the runbook's script would", on loopback only,
# all five phases, at demo size or at production size:
#
#     bench/rollback.sh                                   # demo data, BENCH_REPS=3
#     BENCH_SCALE=2500000 BENCH_REPS=1 bench/rollback.sh  # about 1 GB of database (`stack up --scale`)
#
# Each repetition brings up two fresh, private v2025.08-rc1 stacks WITH demo data (and `--scale BENCH_SCALE` when
# set), each in its own temporary state directory. Before any clock starts, each stack's database is dumped bare
# (`pg_dump -Fc -Z0` and `pg_dump -Fd -Z0 -j NPROC`, the fastest forms on this PostgreSQL; the files are deleted):
# the reference of "time to a proven backup", and the same warm cache for both sides; and Prometheus is left to
# scrape every target once (`scraped_once`), as a Prometheus that has run for days has. Then each is rolled back to
# v2025.07-stable (the order of the two alternates from one repetition to the next):
#
#   xorbctl   `xorbctl rollback --from v2025.08-rc1 --to v2025.07-stable --yes`. Total = wall time of that
#             command; per phase and per step from `xorbctl report latest --format json`.
#   baseline  the runbook's commands in plain bash, one after the other, with no journal, plan, lock or probe:
#     phase 1  cp stack.json; row counts of every public table plus a schema fingerprint in one psql call
#              (PGPASSWORD through the environment, never argv); `xorb-svc --list-releases` (the `docker pull`
#              of the runbook); stable's NATS streams created with JetStream's $JS.API.STREAM.CREATE request,
#              spoken over bash's /dev/tcp (NATS is a text protocol: no nats CLI needed; the stream JSON comes from
#              releases/v2025.07-stable/nats/streams.yaml, converted before the clock starts). Without the
#              xorb-jobs stream no stable service reports healthy and the smoke session is never dispatched, so
#              a baseline without it could not do phase 5 at all.
#     phase 2  2.1 in xorbctl's plan order (api, orchestrator, control-plane removal, worker, scheduler): kill the
#              rc1 process by the pid in stack.json (checked against its recorded start time), wait until it is
#              gone, start `xorb-svc --role R --release v2025.07-stable` in the background with rc1's config keys
#              from stack.json plus the connection variables, and poll GET /api/v1/health with curl until it
#              answers 200 with "release": "v2025.07-stable" (a deadline like `kubectl rollout status
#              --timeout=300s`; given up early if the process died).
#              (XORB_CONTROL_PLANE_URL, which xorbctl also sets while the control plane exists, is left out:
#              stable's services ignore it.)
#              2.2 restart each service again with stable's configuration: config/xorb-config.env + config/R.env
#              + EVIDENCE_SYSTEM_ENABLED=false, TENANT_ISOLATION_MODE=basic, then the same health poll.
#     phase 3  `pg_dump > rollback-db-backup.sql` (plain, as the runbook writes it); `alembic current` and
#              `history --verbose`; what rc1's downgrades destroy copied out with `\copy` (evidence, quotas,
#              usage records, the audit chain, tenants' isolation modes: the runbook's rollback_*_data.py);
#              `alembic downgrade 1a5be11`; `\dt` and alembic_version; the full integrity scan
#              (data_integrity_check.py --full-scan: count and `sum(hashtextextended(t::text, 0))` of every table,
#              in one psql session).
#     phase 4  `nats stream rm xorb-tenant-streams` (JetStream's $JS.API.STREAM.DELETE over /dev/tcp); `redis-cli
#              --rdb`, `flushdb` of databases 1 and 2, `ping`, `config get *`; `promtool check rules` and `amtool
#              check-config` of stable's files, Prometheus reloaded and `/-/healthy`.
#     phase 5  with curl: health of each service (200), /api/v1/info reports stable, smoke session (POST
#              /api/v1/ptaas/sessions as tenant acme, target 127.0.0.1 and the api's own port, poll until
#              "completed", the port must be found open), tenant isolation (globex gets 404 for acme's session),
#              evidence legacy (/api/v1/info says evidence_system false), quota skipped (stable has none); the full
#              integrity scan again (--full-scan --report) and the loss assessment by counts: no table may have
#              fewer rows than in phase 1.
#   The baseline does less than xorbctl (no proof of its dump, no saved NATS messages, no per-row loss account,
#   no performance or audit-chain check): its times are a floor for the runbook's procedure.
#   Poll intervals are xorbctl's: 50 ms for health and sessions, 20 ms while waiting for a process to end.
#
# Then prints, per phase (1, 2 with 2.1 and 2.2, 3, 4, 5), for the critical path (phases 1 and 2: every service on
# stable) and in total, the median over the repetitions for both and the ratio xorbctl/baseline, with every
# repetition's figure; and xorbctl's time to a proven backup (3.db.backup + 3.db.proof) against the bare dumps. Stack up and stack down are not timed.
# The baseline's stable processes are not in stack.json: the script stops them itself before `stack down`, and
# after every stack checks that no process mentions its directory in its command line or environment. Every
# stack, process and temporary directory goes away at the end, also on failure or Ctrl-C.
#
# Settings (environment): BENCH_REPS (3), BENCH_SCALE (unset: demo data only), BENCH_BUILD (1; 0 uses the binaries
# in target/release as they are), BENCH_ROLLOUT_TIMEOUT (300 s per service).
# Needs: cargo, curl, jq, psql, pg_dump, redis-cli, promtool, amtool, and the .venv with Alembic that
# scripts/setup-python creates.
# Secrets (tokens, passwords) travel only through the environment, stdin and files in the private state
# directories: never on a command line, never printed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export LC_ALL=C

REPS=${BENCH_REPS:-3}
SCALE=${BENCH_SCALE:-}
BUILD=${BENCH_BUILD:-1}
ROLLOUT_TIMEOUT=${BENCH_ROLLOUT_TIMEOUT:-300}
FROM=v2025.08-rc1
TO=v2025.07-stable
ORDER=(api orchestrator control-plane worker scheduler) # runbooks/rollback.toml service_order
STABLE_ROLES=(api orchestrator worker scheduler)
SMOKE_TENANT=acme
OTHER_TENANT=globex
HEALTH_POLL=0.05
GONE_POLL=0.02

say() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'bench/rollback.sh: %s\n' "$*" >&2
  exit 1
}

[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive integer"
[[ -z $SCALE || $SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer"
PGBIN=/usr/lib/postgresql/15/bin
[[ -x $PGBIN/pg_dump ]] || PGBIN=$(dirname "$(command -v pg_dump)")
for tool in cargo curl jq psql redis-cli promtool amtool; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $ROOT/.venv/bin/alembic ]] || die "no .venv with alembic: run scripts/setup-python first"

if [[ $BUILD != 0 ]]; then
  say "building release binaries"
  cargo build --workspace --bins --release -q
fi
BIN=$ROOT/target/release
XORBCTL=$BIN/xorbctl
SVC=$BIN/xorb-svc
[[ -x $XORBCTL && -x $SVC ]] || die "no $XORBCTL or $SVC: build them (or drop BENCH_BUILD=0)"
export XORB_SVC_BIN=$SVC
unset XORB_STATE_DIR # each command gets its own, on its command line

STACKS=()               # state directories of stacks this script brought up
declare -A BASE_PIDS=() # role -> pid of a process the baseline started (not in stack.json)

# --- processes ----------------------------------------------------------------------------------------------
# Clocks: ${EPOCHREALTIME//[!0-9]/} is microseconds since the epoch, without a fork.
# pause SECONDS: waits without forking sleep (read with a timeout on $WORK/pause.fifo, which nobody writes to).
pause() { read -r -t "$1" -u "$PAUSE_FD" _ || true; }
# (Commands that leave processes running get `{PAUSE_FD}>&-`, so that no server holds the FIFO open.)
# busy: sets BUSY to the machine's busy CPU time so far, in clock ticks of every core (/proc/stat's first line:
# all but idle and iowait), without a fork. The difference over a rollback is the work it made the machine do,
# servers and tools included: at full use of every core it cannot take less than that over the core count.
HZ=$(getconf CLK_TCK)
busy() {
  local _cpu user nice system _idle _iowait irq softirq steal _rest
  read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
  BUSY=$((user + nice + system + irq + softirq + steal))
}

# alive PID [START_TIME]: the process exists, is not a zombie and (if given) started at START_TIME. No fork.
alive() {
  local line rest state
  IFS= read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${line##*) }
  state=${rest%% *}
  [[ $state != Z && $state != X ]] || return 1
  if [[ -n ${2:-} ]]; then
    local -a f
    read -r -a f <<<"$rest"
    [[ ${f[19]} == "$2" ]] || return 1
  fi
}

# stop PID [START_TIME]: SIGTERM, wait until gone (20 s grace), then SIGKILL, as xorbctl's ProcRecord::stop.
stop() {
  local pid=$1 start=${2:-}
  alive "$pid" "$start" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((${EPOCHREALTIME//[!0-9]/} + 20000000))
  while alive "$pid" "$start"; do
    if ((${EPOCHREALTIME//[!0-9]/} > deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((${EPOCHREALTIME//[!0-9]/} + 5000000))
      while alive "$pid" "$start" && ((${EPOCHREALTIME//[!0-9]/} < deadline)); do pause "$GONE_POLL"; done
      return 0
    fi
    pause "$GONE_POLL"
  done
}

stop_baseline_procs() {
  local role
  for role in "${!BASE_PIDS[@]}"; do
    stop "${BASE_PIDS[$role]}"
    unset "BASE_PIDS[$role]"
  done
}

# Pids (other than ours) whose command line or environment mentions DIR.
procs_mentioning() {
  local dir=$1 f pid
  {
    pgrep -f -- "$dir" || true
    for f in $(grep -lsaF -- "$dir" /proc/[0-9]*/environ || true); do
      pid=${f#/proc/}
      printf '%s\n' "${pid%/environ}"
    done
  } | sort -un | while read -r pid; do
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    if alive "$pid"; then printf '%s\n' "$pid"; fi
  done
}

# Stops this script's stack in STATE (baseline processes first), then checks nothing of it is left running.
teardown() {
  local state=$1 ok=0 left
  stop_baseline_procs
  if [[ -e $state/stack.json ]]; then
    if ! "$XORBCTL" --state-dir "$state" stack down >"$state/../stack-down.log" 2>&1; then
      cat "$state/../stack-down.log" >&2
      say "stack down failed for $state"
      ok=1
    fi
  fi
  left=$(procs_mentioning "$state")
  if [[ -n $left ]]; then
    say "still running after stack down (stopping them now): $(tr '\n' ' ' <<<"$left")"
    local pid
    for pid in $left; do stop "$pid"; done
    ok=1
  fi
  return "$ok"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local state
  for state in "${STACKS[@]}"; do
    if [[ -e $state ]]; then
      teardown "$state" || { ((rc == 0)) && rc=1; }
    fi
  done
  stop_baseline_procs
  local left
  left=$(procs_mentioning "$WORK")
  if [[ -n $left ]]; then
    say "left running, stopping: $(tr '\n' ' ' <<<"$left")"
    local pid
    for pid in $left; do stop "$pid"; done
    ((rc == 0)) && rc=1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/xorb-bench-rollback.XXXXXX")
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chmod 755 "$WORK" # the postgres user must reach its data directory; secrets/ stays 0700
mkfifo -m 600 "$WORK/pause.fifo"
exec {PAUSE_FD}<>"$WORK/pause.fifo"

stack_up() { # STATE
  local state=$1
  STACKS+=("$state")
  local scale=()
  [[ -z $SCALE ]] || scale=(--scale "$SCALE")
  if ! "$XORBCTL" --state-dir "$state" stack up --release "$FROM" --demo-data "${scale[@]}" >"$state.up.log" 2>&1 {PAUSE_FD}>&-; then
    cat "$state.up.log" >&2
    die "stack up failed ($state)"
  fi
}

# scraped_once STATE: wait (deadline 60 s) until Prometheus has scraped every target of the stack at least once and
# found it up, as a Prometheus running for days has; before any clock. A stack just brought up has targets never
# scraped yet, and a rollback started then would time the first scrapes' random offsets (up to a 15 s interval)
# in xorbctl's monitoring check, which a production rollback never waits for.
scraped_once() {
  local state=$1 port deadline
  port=$(jq -r '.prometheus.port' "$state/stack.json")
  deadline=$((${EPOCHREALTIME%.*} + 60))
  until curl -fsS "http://127.0.0.1:$port/api/v1/targets" 2>/dev/null |
    jq -e '.data.activeTargets | length > 0 and all(.health == "up")' >/dev/null; do
    ((${EPOCHREALTIME%.*} < deadline)) || die "Prometheus of $state has not scraped every target up within 60 s"
    pause 0.2
  done
}

# bare_dumps SIDE REP STATE: the database dumped in the two fastest forms, timed, then deleted (before any clock).
bare_dumps() {
  local side=$1 rep=$2 state=$3 port pw t0 t1 out=$WORK/bare-dump
  port=$(jq -r '.postgres.port' "$state/stack.json")
  pw=$(<"$state/secrets/db-password")
  rm -rf "$out" "$out.fc"
  [[ -e $WORK/size.json ]] ||
    PGPASSWORD=$pw psql -X -q -A -t -h 127.0.0.1 -p "$port" -U xorb -d xorb \
      -c "SELECT json_build_object('db_bytes', pg_database_size('xorb'))" >"$WORK/size.json"
  t0=${EPOCHREALTIME//[!0-9]/}
  PGPASSWORD=$pw "$PGBIN/pg_dump" -h 127.0.0.1 -p "$port" -U xorb -d xorb -Fc -Z0 -f "$out.fc" {PAUSE_FD}>&- ||
    die "bare pg_dump -Fc failed ($state)"
  t1=${EPOCHREALTIME//[!0-9]/}
  FIG[$side:dump_fc:$rep]=$(((t1 - t0) / 1000))
  rm -f "$out.fc"
  t0=${EPOCHREALTIME//[!0-9]/}
  PGPASSWORD=$pw "$PGBIN/pg_dump" -h 127.0.0.1 -p "$port" -U xorb -d xorb -Fd -Z0 -j "$(nproc)" -f "$out" {PAUSE_FD}>&- ||
    die "bare pg_dump -Fd failed ($state)"
  t1=${EPOCHREALTIME//[!0-9]/}
  FIG[$side:dump_fd:$rep]=$(((t1 - t0) / 1000))
  rm -rf "$out"
}

# --- stable's streams, as JetStream stream configurations (converted before any clock starts) ----------------
STREAMS_JSON=$WORK/stable-streams.jsonl
awk '
  /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
  /^  - name:/ { n++; sub(/^  - /, "    ") }
  n && /^    [a-z_]+:/ {
    line = $0
    sub(/^    /, "", line)
    key = line; sub(/:.*/, "", key)
    val = line; sub(/^[a-z_]+:[[:space:]]*/, "", val); sub(/[[:space:]]+#.*$/, "", val)
    printf "%d\t%s\t%s\n", n, key, val
  }' "releases/$TO/nats/streams.yaml" |
  jq -Rrn '
    [inputs | split("\t")] | group_by(.[0] | tonumber)[] |
    reduce .[] as [$i, $k, $v] ({};
      ($v | if startswith("\"") or startswith("[") then fromjson else . end) as $x |
      if   $k == "max_age_secs" then .max_age = (($x | tonumber) * 1000000000)
      elif $k == "replicas"     then .num_replicas = ($x | tonumber)
      elif $k == "max_msgs" or $k == "max_bytes" then .[$k] = ($x | tonumber)
      else .[$k] = $x end) |
    tojson' >"$STREAMS_JSON"
if [[ ! -s $STREAMS_JSON ]] || ! jq -e 'select(.name and .subjects)' "$STREAMS_JSON" >/dev/null; then
  die "cannot read the streams of releases/$TO/nats/streams.yaml"
fi

# Stable's configuration of ROLE, as KEY=VALUE lines (later lines win).
stable_config() {
  local role=$1 f
  for f in "releases/$TO/config/xorb-config.env" "releases/$TO/config/$role.env"; do
    if [[ -e $f ]]; then grep -Ev '^[[:space:]]*(#|$)' "$f" || true; fi
  done
  printf '%s\n' EVIDENCE_SYSTEM_ENABLED=false TENANT_ISOLATION_MODE=basic
}
declare -A STABLE_ENV=()
for role in "${STABLE_ROLES[@]}"; do
  STABLE_ENV[$role]=$(stable_config "$role")
done

# ======================================= (a) xorbctl =========================================================
declare -A FIG=() # "side:metric:rep" -> milliseconds
METRICS=(p1 p2 p21 p22 critical p3 p4 p5 total cpu)

run_xorbctl() { # REP
  local rep=$1 state=$WORK/a$1/state
  mkdir -p "$WORK/a$rep"
  say "rep $rep, xorbctl: stack up $FROM --demo-data"
  stack_up "$state"
  bare_dumps a "$rep" "$state"
  scraped_once "$state"
  say "rep $rep, xorbctl: rollback"
  local t0 t1 c0
  busy
  c0=$BUSY
  t0=${EPOCHREALTIME//[!0-9]/}
  if ! "$XORBCTL" --state-dir "$state" rollback --from "$FROM" --to "$TO" --yes >"$WORK/a$rep/rollback.log" 2>&1 {PAUSE_FD}>&-; then
    tail -n 40 "$WORK/a$rep/rollback.log" >&2
    die "xorbctl rollback failed (rep $rep)"
  fi
  t1=${EPOCHREALTIME//[!0-9]/}
  busy
  FIG[a:cpu:$rep]=$(((BUSY - c0) * 1000 / HZ))
  "$XORBCTL" --state-dir "$state" report latest --format json >"$WORK/a$rep/report.json"
  local status
  status=$(jq -r '.status.state? // .status' "$WORK/a$rep/report.json")
  [[ $status == succeeded ]] || die "xorbctl's report says $status (rep $rep)"
  local vals
  vals=$(jq -r '
    def ph($p): [.phases[] | select(.phase == $p)][0];
    [ ph("assessment").duration_ms,
      ph("services").duration_ms,
      ([ph("services").steps[] | select(.id != "2.config.apply") | .duration_ms] | add),
      ([ph("services").steps[] | select(.id == "2.config.apply") | .duration_ms] | add),
      ph("database").duration_ms,
      ph("infrastructure").duration_ms,
      ph("verification").duration_ms,
      ([ph("database").steps[] | select(.id == "3.db.backup" or .id == "3.db.proof") | .duration_ms] | add)
    ] | map(tostring) | join(" ")' "$WORK/a$rep/report.json")
  local p1 p2 p21 p22 p3 p4 p5 proven
  read -r p1 p2 p21 p22 p3 p4 p5 proven <<<"$vals"
  for v in "$p1" "$p2" "$p21" "$p22" "$p3" "$p4" "$p5" "$proven"; do
    [[ $v =~ ^[0-9]+$ ]] || die "the report lacks a phase or step duration (rep $rep): $vals"
  done
  FIG[a:p1:$rep]=$p1 FIG[a:p2:$rep]=$p2 FIG[a:p21:$rep]=$p21 FIG[a:p22:$rep]=$p22 FIG[a:p5:$rep]=$p5
  FIG[a:p3:$rep]=$p3 FIG[a:p4:$rep]=$p4 FIG[a:critical:$rep]=$((p1 + p2)) FIG[a:proven:$rep]=$proven
  FIG[a:total:$rep]=$(((t1 - t0) / 1000))
  FIG[a:report_total:$rep]=$(jq -r '.duration_ms' "$WORK/a$rep/report.json")
  # Every step's time, for the table's footnote (where xorbctl's time goes).
  jq -r '.phases[].steps[] | "\(.id) \(.duration_ms)"' "$WORK/a$rep/report.json" >"$WORK/a$rep/steps.txt"
  # What xorbctl left each service configured with, to check the baseline applies the same (see the end).
  jq -r '.services[] | .name as $n | .config | to_entries[] | "\($n) \(.key)=\(.value)"' "$state/stack.json" |
    sort >"$WORK/a$rep/final-config.txt"
  say "rep $rep, xorbctl: stack down"
  teardown "$state" || die "teardown of $state failed"
}

# ======================================= (b) baseline ========================================================
# Everything between the baseline's clocks is what the runbook's script would do: no function here writes
# stack.json, journals, plans or probes. It is written to be quick: outside the polls' own waits it forks only
# curl, psql, one jq (reading stack.json) and one awk; JSON answers are matched with bash patterns (xorb-svc
# writes compact JSON with sorted keys), and waits use `read -t` on a FIFO instead of forking sleep.
# http [curl args...] URL: sets CODE and BODY (one fork).
http() {
  local resp
  resp=$(curl -s --max-time 10 -w '\n%{http_code}' "$@") || true
  CODE=${resp##*$'\n'}
  BODY=${resp%$'\n'*}
}
# http_as TOKEN [curl args...] URL: the same with a bearer token that reaches curl on stdin, never on argv.
http_as() {
  local token=$1
  shift
  http -K - "$@" <<<"header = \"Authorization: Bearer $token\""
}

# start_stable ROLE PORT CONFIG: starts the role on stable in the background with exactly the runbook
# environment (CONFIG: KEY=VALUE lines, plus the connections); sets BASE_PIDS[ROLE]. The environment is built
# with builtins in the child, so no secret reaches an argv.
start_stable() {
  local role=$1 port=$2 config=$3 log=$B_STATE/services/$1/$1.log
  (
    for v in $(compgen -e); do
      case $v in PATH | HOME | LANG | RUST_LOG | RUST_BACKTRACE) ;; *) unset "$v" 2>/dev/null || true ;; esac
    done
    while IFS= read -r kv; do
      # shellcheck disable=SC2163 # KEY=VALUE, exported by a builtin: no argv sees it
      if [[ $kv == *=* ]]; then export "$kv"; fi
    done <<<"$config"
    export DATABASE_URL="postgres://xorb:$B_DBPW@127.0.0.1:$B_PGPORT/xorb"
    export REDIS_URL="redis://:$B_REDISPW@127.0.0.1:$B_REDISPORT/0"
    export NATS_URL="nats://127.0.0.1:$B_NATSPORT"
    export XORB_LISTEN_ADDR="127.0.0.1:$port"
    export XORB_EVIDENCE_DIR="$B_STATE/evidence"
    exec "$SVC" --role "$role" --release "$TO" >>"$log" 2>&1 </dev/null {PAUSE_FD}>&-
  ) &
  BASE_PIDS[$role]=$!
}

# rollout_status ROLE PORT: polls health until 200 with stable's release, like `kubectl rollout status`.
rollout_status() {
  local role=$1 port=$2 pid=${BASE_PIDS[$1]}
  local deadline=$((${EPOCHREALTIME//[!0-9]/} + ROLLOUT_TIMEOUT * 1000000))
  while :; do
    http --max-time 3 "http://127.0.0.1:$port/api/v1/health"
    [[ $CODE == 200 && $BODY == *"\"release\":\"$TO\""* ]] && return 0
    alive "$pid" || die "baseline: $role ($TO) exited; see $B_STATE/services/$role/$role.log"
    ((${EPOCHREALTIME//[!0-9]/} < deadline)) || die "baseline: $role not healthy on $TO within ${ROLLOUT_TIMEOUT}s: $BODY"
    pause "$HEALTH_POLL"
  done
}

# Row count of every public table and a schema fingerprint, in one psql session.
integrity_scan() {
  PGPASSWORD=$B_DBPW PGCONNECT_TIMEOUT=10 \
    psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$B_PGPORT" -U xorb -d xorb <<'SQL'
SELECT tablename,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM public.%I', tablename), false, true, '')))[1]::text
FROM pg_tables WHERE schemaname = 'public' ORDER BY 1;
SELECT '#schema', md5(coalesce(string_agg(table_name || '.' || column_name || ':' || data_type, ','
                                          ORDER BY table_name, column_name), ''))
FROM information_schema.columns WHERE table_schema = 'public';
SQL
}

# psql on the baseline's database, the password through the environment. Extra arguments go to psql.
bpsql() {
  PGPASSWORD=$B_DBPW PGCONNECT_TIMEOUT=10 \
    psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$B_PGPORT" -U xorb -d xorb "$@"
}

# The runbook's data_integrity_check.py --full-scan: count and content hash of every public table, one session.
full_scan() {
  bpsql <<'SQL'
SELECT tablename,
       (xpath('/row/n/text()', query_to_xml(format(
          'SELECT count(*)::text || '' '' || coalesce(sum(hashtextextended(t::text, 0)), 0)::text AS n FROM public.%I t',
          tablename), false, true, '')))[1]::text
FROM pg_tables WHERE schemaname = 'public' ORDER BY 1;
SQL
}

# alembic with the rc1 release's migrations (the scripts that know the live revision), as the runbook runs it.
balembic() {
  DATABASE_URL="postgres://xorb:$B_DBPW@127.0.0.1:$B_PGPORT/xorb" \
    "$ROOT/.venv/bin/alembic" -c "$ROOT/migrations/alembic.ini" "$@" {PAUSE_FD}>&-
}

# redis-cli with the password in its environment (REDISCLI_AUTH), never on argv.
bredis() {
  REDISCLI_AUTH=$B_REDISPW redis-cli -h 127.0.0.1 -p "$B_REDISPORT" "$@"
}

# JetStream's API spoken over bash's /dev/tcp (NATS is a text protocol: no nats CLI needed).
# nats_open: one connection (NATS_FD) with a reply inbox. nats_request SUBJECT JSON: sets JS_REPLY.
nats_open() {
  local line
  exec {NATS_FD}<>"/dev/tcp/127.0.0.1/$B_NATSPORT"
  IFS= read -r -t 5 line <&"$NATS_FD" || die "baseline: no INFO from NATS"
  printf 'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"name":"bench-baseline"}\r\nSUB _INBOX.bench 1\r\n' >&"$NATS_FD"
}
nats_request() {
  local subject=$1 json=$2 line
  # LC_ALL=C: ${#json} counts bytes, as PUB wants.
  printf 'PUB %s _INBOX.bench %d\r\n%s\r\n' "$subject" "${#json}" "$json" >&"$NATS_FD"
  JS_REPLY=
  while IFS= read -r -t 5 line <&"$NATS_FD"; do
    line=${line%$'\r'}
    case $line in
      PING) printf 'PONG\r\n' >&"$NATS_FD" ;;
      MSG\ *) IFS= read -r -t 5 JS_REPLY <&"$NATS_FD"; JS_REPLY=${JS_REPLY%$'\r'}; break ;;
      -ERR*) die "baseline: NATS said $line" ;;
    esac
  done
}
nats_close() { exec {NATS_FD}>&-; }

# `nats stream rm NAME --force` ("stream not found" counts as removed).
delete_stream() {
  local name=$1
  nats_open
  # shellcheck disable=SC2016 # $JS is NATS's subject prefix, not a variable
  nats_request '$JS.API.STREAM.DELETE.'"$name" ''
  nats_close
  [[ $JS_REPLY == *'"success":true'* || $JS_REPLY == *'"err_code":10059'* ]] ||
    die "baseline: removing stream $name: ${JS_REPLY:-no answer}"
}

# Creates stable's streams over one NATS connection ("name already in use" = present).
mapfile -t STREAM_DEFS <"$STREAMS_JSON"
mapfile -t STREAM_NAMES < <(jq -r '.name' "$STREAMS_JSON")
create_streams() {
  local i name
  nats_open
  for i in "${!STREAM_DEFS[@]}"; do
    name=${STREAM_NAMES[$i]}
    # shellcheck disable=SC2016 # $JS is NATS's subject prefix, not a variable
    nats_request '$JS.API.STREAM.CREATE.'"$name" "${STREAM_DEFS[$i]}"
    [[ $JS_REPLY == *'"type":"io.nats.jetstream.api.v1.stream_create_response"'* ]] ||
      die "baseline: no answer from JetStream for stream $name"
    if [[ $JS_REPLY == *'"error":{'* && $JS_REPLY != *'"err_code":10058'* ]]; then
      die "baseline: creating stream $name: $JS_REPLY"
    fi
  done
  nats_close
}

run_baseline() { # REP
  local rep=$1
  B_WORK=$WORK/b$rep
  B_STATE=$B_WORK/state
  mkdir -p "$B_WORK"
  say "rep $rep, baseline: stack up $FROM --demo-data"
  stack_up "$B_STATE"
  local sj=$B_STATE/stack.json
  # Connection details and secrets, read before the clock starts (files only; nothing is printed).
  B_DBPW=$(<"$B_STATE/secrets/db-password")
  B_REDISPW=$(<"$B_STATE/secrets/redis-password")
  read -r B_PGPORT B_REDISPORT B_NATSPORT B_PROMPORT < <(jq -r '"\(.postgres.port) \(.redis.port) \(.nats.port) \(.prometheus.port)"' "$sj")
  for v in "$B_PGPORT" "$B_REDISPORT" "$B_NATSPORT" "$B_PROMPORT"; do [[ $v =~ ^[0-9]+$ ]] || die "stack.json lacks a server port"; done
  bare_dumps b "$rep" "$B_STATE"
  scraped_once "$B_STATE"
  local tok_a tok_b
  if ! tok_a=$(jq -er --arg t "$SMOKE_TENANT" '.[$t]' "$B_STATE/secrets/tenants.json") ||
    ! tok_b=$(jq -er --arg t "$OTHER_TENANT" '.[$t]' "$B_STATE/secrets/tenants.json"); then
    die "secrets/tenants.json lacks $SMOKE_TENANT or $OTHER_TENANT (demo data)"
  fi
  say "rep $rep, baseline: rollback in plain bash"

  local t0 t1 t2 t3 t3b t3c t4 c0 role kind name p i s
  declare -A port=() pid=() start=() config=()
  # ---------------- phase 1: assessment
  busy
  c0=$BUSY
  t0=${EPOCHREALTIME//[!0-9]/}
  mkdir -p "$B_WORK/capture"
  cp "$sj" "$B_WORK/capture/stack.json"
  integrity_scan >"$B_WORK/capture/integrity-before.txt"
  local releases
  releases=$("$SVC" --list-releases)
  [[ $releases == *"\"name\": \"$TO\""* ]] || die "baseline: $SVC does not provide $TO"
  create_streams
  # ---------------- phase 2.1: images, in the runbook's order
  t1=${EPOCHREALTIME//[!0-9]/}
  while read -r kind name p i s; do
    case $kind in
      S) port[$name]=$p pid[$name]=$i start[$name]=$s ;;
      C) config[$name]+=$p$'\n' ;;
    esac
  done < <(jq -r '.services[] | .name as $n
      | "S \($n) \(.port) \(.proc.pid) \(.proc.start_time)", (.config | to_entries[] | "C \($n) \(.key)=\(.value)")' \
    "$B_WORK/capture/stack.json")
  for role in "${ORDER[@]}"; do
    [[ -n ${port[$role]:-} ]] || die "stack.json has no $role"
    stop "${pid[$role]}" "${start[$role]}"
    [[ $role == control-plane ]] && continue # stable has no control plane: removed
    start_stable "$role" "${port[$role]}" "${config[$role]:-}"
    rollout_status "$role" "${port[$role]}"
  done
  # ---------------- phase 2.2: stable's configuration
  t2=${EPOCHREALTIME//[!0-9]/}
  for role in "${STABLE_ROLES[@]}"; do
    stop "${BASE_PIDS[$role]}"
    start_stable "$role" "${port[$role]}" "${STABLE_ENV[$role]}"
    rollout_status "$role" "${port[$role]}"
  done
  # ---------------- phase 3: database
  t3=${EPOCHREALTIME//[!0-9]/}
  local dbw=$B_WORK/db
  mkdir -p "$dbw"
  PGPASSWORD=$B_DBPW "$PGBIN/pg_dump" -h 127.0.0.1 -p "$B_PGPORT" -U xorb -d xorb >"$dbw/rollback-db-backup.sql" {PAUSE_FD}>&- ||
    die "baseline: pg_dump failed"
  balembic current >"$dbw/alembic-current.txt" 2>&1 || die "baseline: alembic current failed"
  balembic history --verbose >"$dbw/alembic-history.txt" 2>&1 || die "baseline: alembic history failed"
  # What the downgrades destroy, copied out first (the runbook's rollback_*_data.py).
  bpsql >/dev/null <<SQL || die "baseline: copying out the data the downgrade destroys failed"
\\copy evidence TO '$dbw/evidence.csv' CSV
\\copy tenant_quotas TO '$dbw/tenant_quotas.csv' CSV
\\copy usage_records TO '$dbw/usage_records.csv' CSV
\\copy audit_chain TO '$dbw/audit_chain.csv' CSV
\\copy (SELECT id, isolation_mode FROM tenants) TO '$dbw/isolation_modes.csv' CSV
SQL
  balembic downgrade 1a5be11 >"$dbw/alembic-downgrade.txt" 2>&1 || { cat "$dbw/alembic-downgrade.txt" >&2; die "baseline: alembic downgrade failed"; }
  bpsql -c '\dt' >/dev/null || die "baseline: psql \\dt failed"
  [[ $(bpsql -c 'SELECT version_num FROM alembic_version') == 1a5be11 ]] || die "baseline: schema is not 1a5be11"
  full_scan >"$dbw/integrity-full.txt" || die "baseline: full integrity scan failed"
  # ---------------- phase 4: infrastructure
  t3b=${EPOCHREALTIME//[!0-9]/}
  delete_stream xorb-tenant-streams
  bredis --rdb "$B_WORK/redis-backup.rdb" >/dev/null 2>&1 || die "baseline: redis-cli --rdb failed"
  bredis -n 1 flushdb >/dev/null && bredis -n 2 flushdb >/dev/null || die "baseline: redis flushdb failed"
  [[ $(bredis ping) == PONG ]] || die "baseline: redis does not answer PONG"
  bredis config get '*' >/dev/null || die "baseline: redis config get failed"
  promtool check rules "releases/$TO/monitoring/alert-rules.yml" >/dev/null 2>&1 || die "baseline: promtool check rules failed"
  amtool check-config "releases/$TO/monitoring/alertmanager.yml" >/dev/null 2>&1 || die "baseline: amtool check-config failed"
  http -X POST "http://127.0.0.1:$B_PROMPORT/-/reload"
  [[ $CODE == 200 ]] || die "baseline: Prometheus reload answered $CODE"
  http "http://127.0.0.1:$B_PROMPORT/-/healthy"
  [[ $CODE == 200 ]] || die "baseline: Prometheus is not healthy ($CODE)"
  # ---------------- phase 5: verification
  t3c=${EPOCHREALTIME//[!0-9]/}
  local api=http://127.0.0.1:${port[api]}
  for role in "${STABLE_ROLES[@]}"; do # health
    http --max-time 3 "http://127.0.0.1:${port[$role]}/api/v1/health"
    [[ $CODE == 200 ]] || die "baseline check health: $role answered $CODE: $BODY"
  done
  http "$api/api/v1/info" # info
  [[ $CODE == 200 && $BODY == *"\"release\":\"$TO\""* ]] || die "baseline check info: $CODE $BODY"
  http_as "$tok_a" -H 'Content-Type: application/json' \
    --data "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[${port[api]}]}]}" "$api/api/v1/ptaas/sessions" # smoke
  [[ $CODE == 201 && $BODY =~ \"id\":\"([0-9a-f-]{36})\" ]] ||
    die "baseline check smoke: POST /api/v1/ptaas/sessions answered $CODE: $BODY"
  local sid=${BASH_REMATCH[1]}
  local deadline=$((${EPOCHREALTIME//[!0-9]/} + 60000000))
  while :; do
    http_as "$tok_a" "$api/api/v1/ptaas/sessions/$sid"
    [[ $CODE == 200 && $BODY == *'"status":"completed"'* ]] && break
    ((${EPOCHREALTIME//[!0-9]/} < deadline)) || die "baseline check smoke: session $sid did not complete within 60 s"
    pause "$HEALTH_POLL"
  done
  [[ $BODY == *"\"port\":${port[api]},\"state\":\"open\""* ]] ||
    die "baseline check smoke: session $sid did not find 127.0.0.1:${port[api]} open: $BODY"
  http_as "$tok_b" "$api/api/v1/ptaas/sessions/$sid" # tenant isolation
  [[ $CODE == 404 ]] || die "baseline check tenant isolation: $OTHER_TENANT got HTTP $CODE for $SMOKE_TENANT's session"
  http "$api/api/v1/info" # evidence legacy
  [[ $CODE == 200 && $BODY == *'"evidence_system":false'* ]] || die "baseline check evidence legacy: $BODY"
  # quota: skipped, stable has no quota system (no control plane)
  integrity_scan >"$B_WORK/integrity-after.txt" # integrity quick
  local lost
  lost=$(awk -F'|' 'NR == FNR { if ($1 != "#schema") before[$1] = $2; next }
                    ($1 in before) && $2 + 0 < before[$1] + 0 { printf "%s %s->%s ", $1, before[$1], $2 }' \
    "$B_WORK/capture/integrity-before.txt" "$B_WORK/integrity-after.txt")
  [[ -z $lost ]] || die "baseline check integrity: rows lost: $lost"
  full_scan >"$B_WORK/integrity-full-after.txt" || die "baseline: full integrity scan failed" # --full-scan --report
  t4=${EPOCHREALTIME//[!0-9]/}
  busy
  FIG[b:cpu:$rep]=$(((BUSY - c0) * 1000 / HZ))

  FIG[b:p1:$rep]=$(((t1 - t0) / 1000)) FIG[b:p21:$rep]=$(((t2 - t1) / 1000)) FIG[b:p22:$rep]=$(((t3 - t2) / 1000))
  FIG[b:p2:$rep]=$(((t3 - t1) / 1000)) FIG[b:critical:$rep]=$(((t3 - t0) / 1000))
  FIG[b:p3:$rep]=$(((t3b - t3) / 1000)) FIG[b:p4:$rep]=$(((t3c - t3b) / 1000))
  FIG[b:p5:$rep]=$(((t4 - t3c) / 1000)) FIG[b:total:$rep]=$(((t4 - t0) / 1000))
  rm -rf "$dbw" "$B_WORK/redis-backup.rdb"
  say "rep $rep, baseline: stopping its $TO processes, then stack down"
  teardown "$B_STATE" || die "teardown of $B_STATE failed"
}

# ======================================= the runs =============================================================
for ((rep = 1; rep <= REPS; rep++)); do
  if ((rep % 2)); then
    run_xorbctl "$rep"
    run_baseline "$rep"
  else
    run_baseline "$rep"
    run_xorbctl "$rep"
  fi
done

# The baseline must end where xorbctl ends: the same services with the same configuration.
for role in "${STABLE_ROLES[@]}"; do
  awk -v r="$role" -F= 'NF > 1 { k = $1; sub(/^[^=]*=/, ""); v[k] = $0 } END { for (k in v) print r " " k "=" v[k] }' \
    <<<"${STABLE_ENV[$role]}"
done | sort >"$WORK/baseline-final-config.txt"
for ((rep = 1; rep <= REPS; rep++)); do
  diff "$WORK/a$rep/final-config.txt" "$WORK/baseline-final-config.txt" >&2 ||
    die "xorbctl (rep $rep, <) and the baseline (>) do not end with the same configuration"
done

# ======================================= the table ============================================================
median() { # values...
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
reps_of() { # side metric
  local r out=()
  for ((r = 1; r <= REPS; r++)); do out+=("${FIG[$1:$2:$r]}"); done
  printf '%s\n' "${out[*]}"
}
declare -A LABEL=(
  [p1]="phase 1 assessment"
  [p2]="phase 2 services"
  [p21]="  2.1 images + cp removal"
  [p22]="  2.2 configuration"
  [critical]="critical path (1 + 2)"
  [p3]="phase 3 database"
  [p4]="phase 4 infrastructure"
  [p5]="phase 5 verification"
  [total]="total (wall)"
  [cpu]="busy CPU (ms, all cores)"
)
{
  db_size=$(jq -r '.db_bytes // empty' "$WORK/size.json" 2>/dev/null || true)
  printf '\nrollback %s -> %s, --demo-data%s, %s reps, %s cores; medians in ms\n' "$FROM" "$TO" \
    "${SCALE:+ --scale $SCALE}${db_size:+ ($((db_size / 1048576)) MB of database)}" "$REPS" "$(nproc)"
  printf '%-28s %10s %10s %9s   %-22s %-22s\n' metric xorbctl baseline ratio "xorbctl reps" "baseline reps"
  for m in "${METRICS[@]}"; do
    # shellcheck disable=SC2046
    a=$(median $(reps_of a "$m"))
    # shellcheck disable=SC2046
    b=$(median $(reps_of b "$m"))
    awk -v l="${LABEL[$m]}" -v a="$a" -v b="$b" -v ar="$(reps_of a "$m")" -v br="$(reps_of b "$m")" 'BEGIN {
      printf "%-28s %10.1f %10.1f %9s   %-22s %-22s\n", l, a, b, (b > 0 ? sprintf("%.2f", a / b) : "-"), ar, br }'
  done
  # shellcheck disable=SC2046
  printf '%-28s %10.1f   (xorbctl report duration_ms; wall minus this = process start, plan, lock, journal)\n' \
    "xorbctl report total" "$(median $(reps_of a report_total))"
  # shellcheck disable=SC2046
  fc=$(median $(reps_of a dump_fc) $(reps_of b dump_fc))
  # shellcheck disable=SC2046
  fd=$(median $(reps_of a dump_fd) $(reps_of b dump_fd))
  # shellcheck disable=SC2046
  proven=$(median $(reps_of a proven))
  bare=$(awk -v a="$fc" -v b="$fd" 'BEGIN { print (a < b ? a : b) }')
  printf '\n%-28s %10.1f   reps %s\n' "bare pg_dump -Fc -Z0" "$fc" "$(reps_of a dump_fc) $(reps_of b dump_fc)"
  printf '%-28s %10.1f   reps %s\n' "bare pg_dump -Fd -Z0 -j$(nproc)" "$fd" "$(reps_of a dump_fd) $(reps_of b dump_fd)"
  awk -v p="$proven" -v b="$bare" -v r="$(reps_of a proven)" 'BEGIN {
    printf "%-28s %10.1f   %.2fx the fastest bare dump; reps %s\n", "xorbctl backup + proof", p, (b > 0 ? p / b : 0), r }'
  # shellcheck disable=SC2046
  awk -v c="$(median $(reps_of a cpu))" -v b="$(median $(reps_of b total))" -v n="$(nproc)" 'BEGIN {
    printf "xorbctl'"'"'s work over %d cores: at least %.1f ms of wall time even with every core busy (%.2fx the baseline'"'"'s wall)\n", n, c / n, (b > 0 ? c / n / b : 0) }'
  printf '\nxorbctl steps of at least 100 ms, rep 1 (ms):'
  awk '$2 >= 100 { printf " %s %s;", $1, $2 }' "$WORK/a1/steps.txt"
  printf '\n'
  printf 'xorbctl phases and steps: its report (ms, rounded down); baseline: bash clocks (EPOCHREALTIME).\n'
  printf 'baseline phase 1 includes creating stable streams over /dev/tcp; phase 5: health, info, smoke, isolation, evidence, counts, full scan.\n'
}
