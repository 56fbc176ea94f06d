#!/usr/bin/env bash
# `integrity --full` and `loss` (crate xorb-integrity, release build) against the anchors, on a private PostgreSQL
# on loopback in a temporary directory, all measured in the same run:
#
#     bench/integrity.sh                      # BENCH_ROWS="1000000 5000000", BENCH_REPS=3
#     BENCH_ROWS=1000000 bench/integrity.sh
#
# Table t: bigint primary key, an int, about 100 bytes of text (every 100,000th NULL) and a timestamptz. t_before is
# a copy of t made before any change: the anchors compare t_before with t inside the database; our loss compares
# a row snapshot of t taken before the changes and kept OUTSIDE the database (a directory of files) with t.
#
# Full scan of t, against
#   pg_dump      `pg_dump -t t > /dev/null`
#   hashtext     `SELECT sum(hashtextextended(t::text, 0)) FROM t` (an in-database checksum)
# Loss, in three cases applied one after the other: 0 differences; 10 differences (4 updated, among them
# NULL → '' and a timestamp moved by 1 microsecond, 3 deleted, 3 inserted); the same with column n dropped (the
# comparison then covers the remaining columns). Against
#   fulljoin     `FULL JOIN … IS DISTINCT FROM` in the database, counted: the lower bound, no tool does less
#   reladiff-hd  reladiff (PyPI) --algorithm hashdiff, 2 threads (-j 2, as our parallelism)
#   reladiff-jd  reladiff --algorithm joindiff, 2 threads
#   pg_comparator  Debian's postgresql-comparator (extension pgcmp, checksum function ck)
# Before any loss time counts, our loss output must equal the FULL JOIN's ground truth exactly (every key and its
# class: lost, changed, added; and for the dropped column the number of non-NULL values it held): the script
# stops with an error otherwise. Every anchor's answer is checked the same way before its time counts (reladiff's
# and pg_comparator's keys and classes against the ground truth, the FULL JOIN's count, hashtext's sum): an anchor
# that fails or answers wrong is reported as FAILED with the reason and is not timed. A tool can answer wrong with
# exit status 0: reladiff's hashdiff crashes on the NULL → '' change ("'<' not supported between instances of
# 'NoneType' and 'str'") after printing part of the differences, and exits 0.
#
# Prints, per table size: the median of BENCH_REPS runs of each, and ratios anchor / ours (> 1 means ours is
# faster). Aims: full >= 1.5x pg_dump; loss >= 3x reladiff joindiff and pg_comparator.
# Needs (as root or a user that can run initdb): PostgreSQL 15 server and client, postgresql-comparator
# (scripts/install-deps --bench), python3-venv, jq, cargo. The password travels in PGPASSWORD and a 0600 file only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export LC_ALL=C

ROWS_LIST=${BENCH_ROWS:-"1000000 5000000"}
REPS=${BENCH_REPS:-3}
PGBIN=/usr/lib/postgresql/15/bin
VENV="$ROOT/bench/.venv-reladiff"

for tool in jq psql pg_dump pg_comparator python3 cargo; do
  command -v "$tool" >/dev/null || { echo "integrity.sh: $tool is missing (scripts/install-deps --bench)" >&2; exit 1; }
done

echo "Building xorb-integrity (release)…"
cargo build --release -q -p xorb-integrity
XI="$ROOT/target/release/xorb-integrity"

if [ ! -x "$VENV/bin/reladiff" ]; then
  echo "Installing reladiff into $VENV…"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'reladiff[postgresql]'
fi

TMP=$(mktemp -d /tmp/xorb-bench-integrity.XXXXXX)
chmod 755 "$TMP"
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  if [ -f "$TMP/data/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m fast -w stop >/dev/null 2>&1 || true; fi
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

PGPASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export PGPASSWORD
(umask 077; printf '%s' "$PGPASSWORD" >"$TMP/pw")
[ "$(id -u)" = 0 ] && chown postgres "$TMP/pw"
mkdir -m 700 "$TMP/data"
: >"$TMP/pg.log"
mkdir -m 700 "$TMP/sock"
[ "$(id -u)" = 0 ] && chown postgres "$TMP/data" "$TMP/pg.log" "$TMP/sock"
as_pg "$PGBIN/initdb" -D "$TMP/data" -U xorb -A scram-sha-256 -E UTF8 --no-sync --pwfile="$TMP/pw" >/dev/null
rm -f "$TMP/pw"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The table fits in shared buffers for every contender alike; durability is not what is measured.
as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/pg.log" -w -o "-p $PORT -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories=$TMP/sock -c shared_buffers=2GB -c max_wal_size=8GB -c fsync=off \
  -c synchronous_commit=off -c full_page_writes=off" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=xorb PGDATABASE=bench
psql -q -d postgres -c "CREATE DATABASE bench" >/dev/null
psql -q -c "CREATE EXTENSION pgcmp" >/dev/null
URL="postgresql://xorb@127.0.0.1:$PORT/bench" # no password: libpq takes PGPASSWORD

now() { echo "${EPOCHREALTIME/,/.}"; }
declare -A T
declare -A WHY
# time_it NAME CHECK CMD… : the median wall time of REPS runs, in seconds, into T[NAME]; output to $TMP/out.NAME.
# CHECK is a function given the output file that prints why the answer is wrong and fails, or `-` for none. A run
# that fails or answers wrong stops the timing of NAME: T[NAME] is FAILED and WHY[NAME] says why.
time_it() {
  local name=$1 check=$2
  shift 2
  local times=()
  for _ in $(seq "$REPS"); do
    local a b rc=0 why=""
    a=$(now)
    "$@" >"$TMP/out.$name" 2>"$TMP/err.$name" || rc=$?
    b=$(now)
    [ "$rc" = 0 ] || why="exit status $rc: $(tail -n 1 "$TMP/err.$name")"
    if [ -z "$why" ] && grep -q -E '(^|[] ])(ERROR|Traceback)' "$TMP/err.$name"; then
      why="reported an error: $(grep -m 1 -E '(^|[] ])(ERROR|Traceback)' "$TMP/err.$name")"
    fi
    if [ -z "$why" ] && [ "$check" != - ]; then
      why=$("$check" "$TMP/out.$name" 2>&1) && why=""
    fi
    if [ -n "$why" ]; then
      T[$name]=FAILED
      WHY[$name]=$why
      printf '  %-24s   FAILED   not timed: %s\n' "$name" "$why"
      return 0
    fi
    times+=("$(echo "$b - $a" | bc -l)")
  done
  T[$name]=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '  %-24s %8.3f s   (runs: %s)\n' "$name" "${T[$name]}" "$(printf '%.3f ' "${times[@]}")"
}
# ours NAME CMD… : our own tool; a failure of ours stops the benchmark.
ours() {
  time_it "$@"
  [ "${T[$1]}" != FAILED ] || { echo "integrity.sh: $1 (ours) failed: ${WHY[$1]}" >&2; exit 1; }
}
# ratio ANCHOR OURS (names): anchor time / our time, or why there is none.
ratio() {
  if [ "${T[$1]}" = FAILED ]; then echo "n/a ($1 FAILED: ${WHY[$1]})"; else echo "$(echo "scale=2; ${T[$1]} / ${T[$2]}" | bc -l)x"; fi
}

# The anchors' answers, as "key class" lines sorted like the ground truth.
# reladiff: "- key, …" is a row of t_before only, "+ key, …" of t only; both for one key is a changed row. A long
# value wraps onto lines of its own, which do not start with "- " or "+ ".
reladiff_answer() {
  grep -E '^[-+] -?[0-9]+,' "$1" | awk '{k = $2; sub(/,$/, "", k); s[k] = s[k] $1}
    END {for (k in s) print k, (s[k] ~ /-/ && s[k] ~ /[+]/) ? "changed" : (s[k] ~ /-/ ? "lost" : "added")}' |
    sort -n -k1,1 -k2,2
}
# pg_comparator prints what would make t equal t_before: INSERT a lost row, DELETE an added one, UPDATE a changed one.
pgcmp_answer() {
  awk '$1 == "INSERT" {print $2, "lost"} $1 == "DELETE" {print $2, "added"} $1 == "UPDATE" {print $2, "changed"}' "$1" |
    sort -n -k1,1 -k2,2
}
same_as_truth() {
  local answer
  answer=$("$1" "$2")
  if [ "$answer" != "$(cat "$TMP/truth.txt")" ]; then
    echo "answered $(printf '%s' "$answer" | grep -c . || true) of $(wc -l <"$TMP/truth.txt") differences, not the ground truth's keys and classes"
    return 1
  fi
}
check_reladiff() { same_as_truth reladiff_answer "$1"; }
check_pgcmp() { same_as_truth pgcmp_answer "$1"; }
check_count() {
  [ "$(cat "$1")" = "$(wc -l <"$TMP/truth.txt")" ] || { echo "counted $(cat "$1"), the ground truth has $(wc -l <"$TMP/truth.txt")"; return 1; }
}
check_sum() { grep -q -E '^-?[0-9]+$' "$1" || { echo "no sum in its output"; return 1; }; }

# The ground truth: every differing key with its class, from the FULL JOIN over the columns that remain.
truth() {
  local cols=$1
  psql -At -F ' ' -c "SELECT coalesce(a.id, b.id), CASE WHEN b.id IS NULL THEN 'lost' WHEN a.id IS NULL THEN 'added' ELSE 'changed' END
    FROM t_before a FULL JOIN t b ON a.id = b.id
    WHERE a.id IS NULL OR b.id IS NULL OR ($(sed 's/\([a-z][a-z]*\)/a.\1/g' <<<"$cols")) IS DISTINCT FROM ($(sed 's/\([a-z][a-z]*\)/b.\1/g' <<<"$cols"))
    ORDER BY 1, 2"
}
fulljoin_count() {
  local cols=$1
  psql -At -c "SELECT count(*) FROM t_before a FULL JOIN t b ON a.id = b.id
    WHERE a.id IS NULL OR b.id IS NULL OR ($(sed 's/\([a-z][a-z]*\)/a.\1/g' <<<"$cols")) IS DISTINCT FROM ($(sed 's/\([a-z][a-z]*\)/b.\1/g' <<<"$cols"))"
}
ours_keys() {
  jq -r '.tables[] | select(.table == "t") |
    ((.lost_keys[] | "\(.) lost"), (.changed_rows[] | "\(.key) changed"), (.added_keys[] | "\(.) added"))' "$1" | sort -n -k1,1 -k2,2
}

declare -a SUMMARY
for ROWS in $ROWS_LIST; do
  echo
  echo "== t with $ROWS rows =="
  psql -q -c "DROP TABLE IF EXISTS t, t_before" \
    -c "CREATE TABLE t (id bigint PRIMARY KEY, n int, note text, at timestamptz)" \
    -c "INSERT INTO t SELECT g, g % 1000003, CASE WHEN g % 100000 = 0 THEN NULL ELSE repeat(md5(g::text), 3) || lpad(g::text, 4, '0') END,
          '2025-08-01 00:00:00.000001+00'::timestamptz + g * interval '1 second' FROM generate_series(1, $ROWS) g" \
    -c "CREATE TABLE t_before AS TABLE t" -c "ALTER TABLE t_before ADD PRIMARY KEY (id)" \
    -c "VACUUM (FREEZE, ANALYZE) t" -c "VACUUM (FREEZE, ANALYZE) t_before" >/dev/null
  psql -At -c "SELECT 'table t: ' || pg_size_pretty(pg_relation_size('t')) || ', ' || count(*) || ' rows' FROM t"

  echo "-- full scan (0 differences)"
  # pg_dump's answer goes to /dev/null (writing it is not what is compared): its exit status is its check.
  time_it pg_dump - pg_dump -t t -f /dev/null
  time_it hashtext check_sum psql -At -c "SELECT sum(hashtextextended(t::text, 0)) FROM t"
  ours full - "$XI" full --tables t
  rm -rf "$TMP/snap"
  ours full+snapshot - "$XI" full --tables t --snapshot "$TMP/snap"
  echo "  snapshot on disk: $(du -sh "$TMP/snap" | cut -f1) (outside the database)"
  SUMMARY+=("$ROWS rows: full = $(ratio pg_dump full) faster than pg_dump, $(ratio hashtext full) hashtext; full+snapshot = $(ratio pg_dump full+snapshot) pg_dump")

  for CASE in 0 10 dropcol; do
    case $CASE in
      10)
        psql -q -c "UPDATE t SET n = n + 1 WHERE id IN (1000, 250000 % $ROWS + 1)" \
          -c "UPDATE t SET note = '' WHERE id = 100000" \
          -c "UPDATE t SET at = at + interval '1 microsecond' WHERE id = 77777" \
          -c "DELETE FROM t WHERE id IN (5, 500000 % $ROWS + 6, $ROWS)" \
          -c "INSERT INTO t VALUES ($ROWS + 1, 1, 'new', now()), ($ROWS + 2, NULL, NULL, NULL), (-1, 0, '', now())" >/dev/null
        ;;
      dropcol)
        psql -q -c "ALTER TABLE t DROP COLUMN n" >/dev/null
        ;;
    esac
    if [ "$CASE" = dropcol ]; then COLS="note, at"; RCOLS=(-c note -c at); PCOLS="note,at"; else COLS="n, note, at"; RCOLS=(-c n -c note -c at); PCOLS="n,note,at"; fi
    echo "-- loss, case $CASE"
    # Correctness first: ours against the ground truth, key by key.
    "$XI" loss --before "$TMP/snap" --tables t --list-limit 1000000 >"$TMP/loss.json"
    truth "$COLS" >"$TMP/truth.txt"
    ours_keys "$TMP/loss.json" >"$TMP/ours.txt"
    if ! diff -u "$TMP/truth.txt" "$TMP/ours.txt" >"$TMP/diff.txt"; then
      echo "integrity.sh: loss is WRONG in case $CASE (- FULL JOIN ground truth, + ours):" >&2
      cat "$TMP/diff.txt" >&2
      exit 1
    fi
    if [ "$CASE" = dropcol ]; then
      want=$(psql -At -c "SELECT count(n) FROM t_before")
      got=$(jq -r '.tables[] | select(.table == "t") | .columns_dropped[] | select(.name == "n") | .non_null_values' "$TMP/loss.json")
      [ "$want" = "$got" ] || { echo "integrity.sh: dropped column n held $want non-NULL values, loss says '$got'" >&2; exit 1; }
    fi
    echo "  loss is exact: $(wc -l <"$TMP/truth.txt") differences, the same keys and classes as the FULL JOIN"
    time_it "fulljoin.$CASE" check_count fulljoin_count "$COLS"
    time_it "reladiff-hd.$CASE" check_reladiff "$VENV/bin/reladiff" "$URL" t_before t -k id "${RCOLS[@]}" -j 2 -a hashdiff
    time_it "reladiff-jd.$CASE" check_reladiff "$VENV/bin/reladiff" "$URL" t_before t -k id "${RCOLS[@]}" -j 2 -a joindiff
    time_it "pg_comparator.$CASE" check_pgcmp pg_comparator --env-pass=PGPASSWORD --no-lock \
      "pgsql://xorb@127.0.0.1:$PORT/bench/public.t_before?id:$PCOLS" "pgsql://xorb@127.0.0.1:$PORT/bench/public.t?id:$PCOLS"
    ours "loss.$CASE" - "$XI" loss --before "$TMP/snap" --tables t
    SUMMARY+=("$ROWS rows, case $CASE: loss = ${T[loss.$CASE]} s; vs fulljoin $(ratio "fulljoin.$CASE" "loss.$CASE"), reladiff hashdiff $(ratio "reladiff-hd.$CASE" "loss.$CASE"), reladiff joindiff $(ratio "reladiff-jd.$CASE" "loss.$CASE"), pg_comparator $(ratio "pg_comparator.$CASE" "loss.$CASE")")
  done
done

echo
echo "== Ratios (anchor time / ours: above 1 means ours is faster), medians of $REPS runs; an anchor that failed or answered wrong is not timed =="
printf '%s\n' "${SUMMARY[@]}"
