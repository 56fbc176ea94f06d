#!/usr/bin/env bash
# Peak memory (maximum resident set size) and wall time of the two whole-database passes of a rollback, on a
# private stack at production size, as bytes per row:
#
#     bench/memory.sh                          # BENCH_SCALE=2500000 (about 1 GB of database on rc1)
#     BENCH_SCALE=200000 bench/memory.sh
#
#   full   `xorbctl integrity --full --snapshot DIR`: the checksums with the row snapshot (what 3.db.backup takes)
#   loss   `xorbctl loss --before DIR --after current`: the loss assessment against it (what 5.check.loss runs);
#          nothing changed in between, so it must find 0 rows lost, changed or added (checked before any figure
#          is printed)
#
# Measured with GNU time (%M, KiB). Settings: BENCH_SCALE, BENCH_RELEASE (v2025.08-rc1), BENCH_BUILD (1; 0 uses
# target/release as it is). Needs /usr/bin/time, jq, and what `stack up` needs (scripts/install-deps,
# scripts/setup-python). Loopback only; the stack and its directory go away at the end, also on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export LC_ALL=C

SCALE=${BENCH_SCALE:-2500000}
RELEASE=${BENCH_RELEASE:-v2025.08-rc1}
BUILD=${BENCH_BUILD:-1}
die() {
  printf 'bench/memory.sh: %s\n' "$*" >&2
  exit 1
}
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE must be a positive integer"
[[ -x /usr/bin/time ]] || die "GNU time (/usr/bin/time) is not installed"
command -v jq >/dev/null || die "jq is not installed"
if [[ $BUILD != 0 ]]; then
  cargo build --workspace --bins --release -q
fi
XORBCTL=$ROOT/target/release/xorbctl
export XORB_SVC_BIN=$ROOT/target/release/xorb-svc
unset XORB_STATE_DIR

WORK=$(mktemp -d "${TMPDIR:-/tmp}/xorb-bench-memory.XXXXXX")
chmod 755 "$WORK" # the postgres user must reach its data directory
STATE=$WORK/state
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -e $STATE/stack.json ]]; then
    "$XORBCTL" --state-dir "$STATE" stack down >/dev/null 2>&1 || rc=1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '==> stack up %s --demo-data --scale %s\n' "$RELEASE" "$SCALE" >&2
"$XORBCTL" --state-dir "$STATE" stack up --release "$RELEASE" --demo-data --scale "$SCALE" >"$WORK/up.log" 2>&1 ||
  { cat "$WORK/up.log" >&2; die "stack up failed"; }

# measure NAME CMD...: runs CMD under GNU time; sets WALL (s) and RSS (KiB).
measure() {
  local name=$1
  shift
  /usr/bin/time -f '%e %M' -o "$WORK/$name.time" "$@" >"$WORK/$name.json" 2>"$WORK/$name.err" ||
    { cat "$WORK/$name.err" >&2; die "$name failed"; }
  read -r WALL RSS <"$WORK/$name.time"
}

printf '==> integrity --full --snapshot\n' >&2
measure full "$XORBCTL" --state-dir "$STATE" integrity --full --snapshot "$WORK/snapshot" --output json
FULL_WALL=$WALL FULL_RSS=$RSS
ROWS=$(jq '[.tables[].rows] | add' "$WORK/full.json")
[[ $ROWS =~ ^[0-9]+$ && $ROWS -gt 0 ]] || die "no row count in the full scan's output"

printf '==> loss --before snapshot --after current\n' >&2
measure loss "$XORBCTL" --state-dir "$STATE" loss --before "$WORK/snapshot" --after current --output json
LOSS_WALL=$WALL LOSS_RSS=$RSS
DIFF=$(jq '[.tables[] | (.lost // 0) + (.changed // 0) + (.added // 0)] | add' "$WORK/loss.json")
[[ $DIFF == 0 ]] || die "the loss assessment found $DIFF differences where nothing changed: $(head -c 2000 "$WORK/loss.json")"

DB=$(du -sb "$STATE/postgres/data" | cut -f1)
SNAP=$(du -sb "$WORK/snapshot" | cut -f1)
awk -v rows="$ROWS" -v db="$DB" -v snap="$SNAP" -v fw="$FULL_WALL" -v fr="$FULL_RSS" -v lw="$LOSS_WALL" -v lr="$LOSS_RSS" \
  -v scale="$SCALE" -v rel="$RELEASE" -v cores="$(nproc)" 'BEGIN {
  printf "\n%s --scale %s: %d rows, %.0f MB of PostgreSQL data directory, snapshot %.0f MB (%.1f bytes/row), %d cores\n",
    rel, scale, rows, db / 1048576, snap / 1048576, snap / rows, cores
  printf "%-34s %8s %12s %14s\n", "pass", "wall s", "peak RSS MB", "peak B/row"
  printf "%-34s %8.1f %12.1f %14.1f\n", "integrity --full --snapshot", fw, fr / 1024, fr * 1024 / rows
  printf "%-34s %8.1f %12.1f %14.1f\n", "loss --before snapshot", lw, lr / 1024, lr * 1024 / rows
}'
