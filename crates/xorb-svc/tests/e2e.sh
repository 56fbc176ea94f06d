#!/usr/bin/env bash
# End-to-end check of xorb-svc against real servers, loopback only.
#
#   crates/xorb-svc/tests/e2e.sh            (run as root: PostgreSQL runs as the postgres user)
#
# Starts throwaway PostgreSQL 15, Redis and nats-server -js on free 127.0.0.1 ports in a temp
# dir, migrates with the Alembic project (migrations/, venv from scripts/setup-python), and walks
# stable -> expand to rc1 -> rc1 -> roll back to stable, asserting along the way. Everything it
# started is stopped on exit. Needs: postgresql-15, redis-server, nats-server, python3, openssl,
# promtool, curl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
VENV=${VENV:-$ROOT/.venv}
BIN=$ROOT/target/debug/xorb-svc
STABLE=v2025.07-stable
RC1=v2025.08-rc1

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "  ok   $*"; }
bad() { fail=$((fail + 1)); echo "  FAIL $*"; }
check() { # check DESCRIPTION COMMAND...
  local d=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi
}
step() { echo "== $*"; }

for tool in "$PGBIN/initdb" redis-server nats-server python3 openssl promtool curl; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[ -x "$VENV/bin/alembic" ] || { echo "no Alembic venv at $VENV (run scripts/setup-python)" >&2; exit 2; }

step "build"
(cd "$ROOT" && cargo build -q -p xorb-svc)

T=$(mktemp -d /tmp/xorb-svc-e2e.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  set +e
  for f in "$T"/run/*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    kill -TERM "$p" 2>/dev/null
  done
  sleep 1
  [ -f "$T/pg/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg/data" -m fast -w stop >/dev/null
  [ -f "$T/redis.pid" ] && kill "$(cat "$T/redis.pid")" 2>/dev/null
  [ -f "$T/nats.pid" ] && kill "$(cat "$T/nats.pid")" 2>/dev/null
  sleep 0.5
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
mkdir -p "$T/run" "$T/logs"

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r PGPORT REDISPORT NATSPORT API CP ORCH WORKER SCHED SPARE OPENPORT CLOSEDPORT <<<"$(free_ports 11)"

step "servers (postgres :$PGPORT, redis :$REDISPORT, nats :$NATSPORT)"
PGPW=$(openssl rand -hex 16)
REDISPW=$(openssl rand -hex 16)
mkdir -p "$T/pg" && chown postgres:postgres "$T/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$T/pg/data" -A trust -U postgres >/dev/null
cat >>"$T/pg/data/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$T/pg'
EOF
sed -i 's/^host\(.*\)127.0.0.1\/32\(.*\)trust/host\1127.0.0.1\/32\2scram-sha-256/' "$T/pg/data/pg_hba.conf"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$T/pg/data" -l "$T/pg/log" -w start >/dev/null
psql -h "$T/pg" -p "$PGPORT" -U postgres -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE xorb LOGIN CREATEROLE PASSWORD '$PGPW'" -c "CREATE DATABASE xorb OWNER xorb"
cat >"$T/redis.conf" <<EOF
bind 127.0.0.1
port $REDISPORT
dir $T
requirepass $REDISPW
daemonize yes
pidfile $T/redis.pid
logfile $T/redis.log
save ""
EOF
redis-server "$T/redis.conf"
mkdir -p "$T/nats"
nats-server -js -a 127.0.0.1 -p "$NATSPORT" -sd "$T/nats" -l "$T/nats.log" -P "$T/nats.pid" &
sleep 1

export DATABASE_URL="postgres://xorb:$PGPW@127.0.0.1:$PGPORT/xorb"
export REDIS_URL="redis://:$REDISPW@127.0.0.1:$REDISPORT/0"
export NATS_URL="nats://127.0.0.1:$NATSPORT"
export XORB_EVIDENCE_DIR="$T/evidence"
export XORB_CONTROL_PLANE_URL="http://127.0.0.1:$CP"
export PGPASSWORD=$PGPW
sql() { psql -h 127.0.0.1 -p "$PGPORT" -U xorb xorb -Atq -v ON_ERROR_STOP=1 -c "$1"; }
alembic() { (cd "$ROOT/migrations" && "$VENV/bin/alembic" "$@" >>"$T/logs/alembic.log" 2>&1); }

# A NATS request over the text protocol (no nats CLI needed): natsreq SUBJECT [PAYLOAD]
natsreq() {
  python3 - "$NATSPORT" "$1" "${2:-}" <<'EOF'
import socket, sys
port, subj, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
s = socket.create_connection(("127.0.0.1", port), timeout=5); f = s.makefile("rb"); f.readline()
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _r.1 1\r\nPUB %s _r.1 %d\r\n%s\r\n' % (subj.encode(), len(body), body))
while True:
    line = f.readline()
    if line.startswith(b"MSG"):
        n = int(line.split()[-1]); print(f.read(n).decode()); break
    if not line or line.startswith(b"-ERR"):
        sys.exit(1)
EOF
}
stream_create() { # NAME SUBJECT RETENTION (the fields of the contract's streams.yaml)
  natsreq "\$JS.API.STREAM.CREATE.$1" "{\"name\":\"$1\",\"subjects\":[\"$2\"],\"retention\":\"$3\",\"storage\":\"file\",\"max_age\":86400000000000,\"max_msgs\":-1,\"max_bytes\":-1,\"num_replicas\":1}" | grep -q stream_create_response
}
stream_delete() { natsreq "\$JS.API.STREAM.DELETE.$1" | grep -q '"success":true'; }

# Loopback listeners: OPENPORT accepts; CLOSEDPORT has nobody.
python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $OPENPORT)); s.listen(64); s.settimeout(0.5)
end = time.time() + 900
while time.time() < end:
    try: c, _ = s.accept(); c.close()
    except socket.timeout: pass
" &
echo $! >"$T/run/listener.pid"

svc_start() { # ROLE RELEASE PORT [VAR=VALUE...]
  local role=$1 rel=$2 port=$3; shift 3
  env XORB_LISTEN_ADDR="127.0.0.1:$port" "$@" "$BIN" --role "$role" --release "$rel" \
    >>"$T/logs/$role.log" 2>&1 &
  echo $! >"$T/run/$role.pid"
}
svc_stop() {
  local f="$T/run/$1.pid"
  [ -f "$f" ] || return 0
  local p; p=$(cat "$f")
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  rm -f "$f"
}
wait_healthy() { # PORT
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$1/api/v1/health")" = 200 ] && return 0
    sleep 0.2
  done
  return 1
}
post_session() { # TOKEN JSON -> prints "CODE BODY"
  curl -s -w '\n%{http_code}' -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
    -d "$2" "127.0.0.1:$API/api/v1/ptaas/sessions"
}
code_of() { tail -n1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
session_state() { # TOKEN ID -> "status findings..."
  curl -s -H "Authorization: Bearer $1" "127.0.0.1:$API/api/v1/ptaas/sessions/$2" |
    json 'd["status"], " ".join("%s:%s" % (f["port"], f["state"]) for f in d["findings"])'
}
wait_completed() { # TOKEN ID
  for _ in $(seq 50); do
    [[ "$(session_state "$1" "$2")" == completed* ]] && return 0
    sleep 0.2
  done
  return 1
}

step "stable schema (alembic upgrade 1a5be11), streams, tenants"
alembic upgrade 1a5be11
stream_create xorb-jobs 'xorb.jobs.>' workqueue
stream_create xorb-events 'xorb.events.>' limits
TA=tok-a-$(openssl rand -hex 16)
TB=tok-b-$(openssl rand -hex 16)
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
sql "INSERT INTO tenants (slug, name, token_sha256) VALUES ('alpha', 'Alpha', '$(sha "$TA")'), ('beta', 'Beta', '$(sha "$TB")')"
BETA=$(sql "SELECT id FROM tenants WHERE slug = 'beta'")

step "stable services"
svc_start api $STABLE "$API"
svc_start orchestrator $STABLE "$ORCH"
svc_start worker $STABLE "$WORKER"
svc_start scheduler $STABLE "$SCHED"
for p in $API $ORCH $WORKER $SCHED; do check "stable :$p healthy" wait_healthy "$p"; done
check "info names stable and 1a5be11" bash -c "curl -s 127.0.0.1:$API/api/v1/info | grep -q '\"schema_revision\":\"1a5be11\"'"

n0=$(sql "SELECT count(*) FROM ptaas_sessions")
r=$(post_session "$TA" '{"targets":[{"host":"127.0.0.1","ports":[80]},{"host":"10.0.0.1","ports":[80]}]}')
check "out-of-scope target -> 422" test "$(code_of "$r")" = 422
r=$(post_session "$TA" '{"targets":[{"host":"example.com","ports":[80]}]}')
check "host name -> 422" test "$(code_of "$r")" = 422
r=$(post_session "$TA" '{"targets":[{"host":"127.0.0.1","ports":[0]}]}')
check "port 0 -> 422" test "$(code_of "$r")" = 422
check "nothing inserted by refused requests" test "$(sql 'SELECT count(*) FROM ptaas_sessions')" = "$n0"
r=$(post_session "not-a-token" '{"targets":[{"host":"127.0.0.1","ports":[80]}]}')
check "unknown token -> 401" test "$(code_of "$r")" = 401

r=$(post_session "$TA" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT,$CLOSEDPORT]}]}")
check "create -> 201" test "$(code_of "$r")" = 201
S1=$(body_of "$r" | json 'd["id"]')
check "session completes" wait_completed "$TA" "$S1"
st=$(session_state "$TA" "$S1")
check "open and closed findings" bash -c "[[ '$st' == *' $OPENPORT:open'* && '$st' == *' $CLOSEDPORT:closed'* ]]"
check "other tenant gets 404" test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TB" "127.0.0.1:$API/api/v1/ptaas/sessions/$S1")" = 404
check "audit_log row for the session" test "$(sql "SELECT count(*) FROM audit_log WHERE detail->>'session_id' = '$S1'")" = 1
for p in $API $ORCH $WORKER $SCHED; do
  check "promtool check metrics :$p" bash -c "curl -s 127.0.0.1:$p/metrics | promtool check metrics"
done
check "metrics use the route template" bash -c "curl -s 127.0.0.1:$API/metrics | grep -q 'route=\"/api/v1/ptaas/sessions/{id}\"'"

step "refusals at start"
set +e
XORB_LISTEN_ADDR=127.0.0.1:$SPARE "$BIN" --role api --release $RC1 >>"$T/logs/refusals.log" 2>&1
check "rc1 on 1a5be11 exits 3" test $? = 3
XORB_LISTEN_ADDR=127.0.0.1:$SPARE "$BIN" --role control-plane --release $STABLE >>"$T/logs/refusals.log" 2>&1
check "stable control-plane exits 2" test $? = 2
env -u DATABASE_URL XORB_LISTEN_ADDR=127.0.0.1:$SPARE "$BIN" --role api --release $STABLE >>"$T/logs/refusals.log" 2>&1
check "missing DATABASE_URL exits 2" test $? = 2
set -e
check "--list-releases lists both" bash -c "'$BIN' --list-releases | grep -q '\"v2025.08-rc1\"'"

step "expand to rc1 (alembic upgrade head) under running stable services"
alembic upgrade head
check "schema at 8d9a2c3" test "$(sql 'SELECT version_num FROM alembic_version')" = 8d9a2c3
r=$(post_session "$TA" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT]}]}")
S2=$(body_of "$r" | json 'd["id"]')
check "stable still completes sessions on the rc1 schema" wait_completed "$TA" "$S2"

step "rc1 services"
stream_create xorb-tenant-streams 'xorb.tenant.*.jobs' workqueue
for r in api orchestrator worker scheduler; do svc_stop $r; done
svc_start control-plane $RC1 "$CP"
check "control plane healthy" wait_healthy "$CP"
svc_start api $RC1 "$API" TENANT_ISOLATION_MODE=advanced EVIDENCE_SYSTEM_ENABLED=true CIRCUIT_BREAKER_ENABLED=true
svc_start orchestrator $RC1 "$ORCH"
svc_start worker $RC1 "$WORKER" EVIDENCE_SYSTEM_ENABLED=true
svc_start scheduler $RC1 "$SCHED"
for p in $API $ORCH $WORKER $SCHED; do check "rc1 :$p healthy" wait_healthy "$p"; done
check "api health names the control plane" bash -c "curl -s 127.0.0.1:$API/api/v1/health | grep -q '\"control_plane\":\"up\"'"
r=$(post_session "$TA" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT,$CLOSEDPORT]}]}")
check "rc1 create -> 201" test "$(code_of "$r")" = 201
S3=$(body_of "$r" | json 'd["id"]')
check "rc1 session completes" wait_completed "$TA" "$S3"
check "key file is 0600" test "$(stat -c %a "$XORB_EVIDENCE_DIR/signing-key.pem")" = 600
nrec=0
for j in "$XORB_EVIDENCE_DIR"/records/*.json; do
  nrec=$((nrec + 1))
  check "openssl verifies $(basename "$j")" openssl pkeyutl -verify -pubin -inkey "$XORB_EVIDENCE_DIR/signing-key.pub.pem" -rawin -in "$j" -sigfile "${j%.json}.sig"
done
check "one evidence record per finding" test "$nrec" = 2
EV=$(curl -s -H "Authorization: Bearer $TA" "127.0.0.1:$API/api/v1/ptaas/sessions/$S3" | json 'd["findings"][0]["evidence_id"]')
check "evidence readable by its tenant" test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TA" "127.0.0.1:$API/api/v1/evidence/$EV")" = 200
check "evidence hidden from other tenants" test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TB" "127.0.0.1:$API/api/v1/evidence/$EV")" = 404
check "session hidden from other tenants (RLS)" test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TB" "127.0.0.1:$API/api/v1/ptaas/sessions/$S3")" = 404
sql "INSERT INTO tenant_quotas (tenant_id, max_sessions_per_hour) VALUES ('$BETA', 1)"
r1=$(post_session "$TB" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT]}]}")
r2=$(post_session "$TB" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT]}]}")
check "quota: first session 201" test "$(code_of "$r1")" = 201
check "quota: second session 429" test "$(code_of "$r2")" = 429
check "usage_records written" test "$(sql "SELECT count(*) FROM usage_records WHERE tenant_id = '$BETA'")" = 1
for p in $API $CP $ORCH $WORKER $SCHED; do
  check "promtool check metrics rc1 :$p" bash -c "curl -s 127.0.0.1:$p/metrics | promtool check metrics"
done

step "roll back: services to stable (rc1 configuration still set), then schema, then streams"
for r in api orchestrator control-plane worker scheduler; do svc_stop $r; done
RC1ENV=(TENANT_ISOLATION_MODE=advanced EVIDENCE_SYSTEM_ENABLED=true CIRCUIT_BREAKER_ENABLED=true)
svc_start api $STABLE "$API" "${RC1ENV[@]}"
svc_start orchestrator $STABLE "$ORCH" "${RC1ENV[@]}"
svc_start worker $STABLE "$WORKER" "${RC1ENV[@]}"
svc_start scheduler $STABLE "$SCHED" "${RC1ENV[@]}"
for p in $API $ORCH $WORKER $SCHED; do check "stable :$p healthy on 8d9a2c3" wait_healthy "$p"; done
check "stable reports basic isolation, no evidence" bash -c "curl -s 127.0.0.1:$API/api/v1/info | grep -q '\"evidence_system\":false.*\"tenant_isolation_mode\":\"basic\"'"
alembic downgrade 1a5be11
check "schema back at 1a5be11" test "$(sql 'SELECT version_num FROM alembic_version')" = 1a5be11
stream_delete xorb-tenant-streams
check "stable api healthy after the schema rollback" wait_healthy "$API"
r=$(post_session "$TA" "{\"targets\":[{\"host\":\"127.0.0.1\",\"ports\":[$OPENPORT]}]}")
S4=$(body_of "$r" | json 'd["id"]')
check "stable completes sessions after the rollback" wait_completed "$TA" "$S4"

step "shutdown and logs"
for r in api orchestrator worker scheduler; do svc_stop $r; done
check "every service logged a clean stop" test "$(grep -l 'INFO xorb_svc::roles: stopped' "$T"/logs/*.log | wc -l)" -ge 4
check "no password in any log" bash -c "! grep -rqF -e '$PGPW' -e '$REDISPW' '$T/logs'"
check "no bearer token in any log" bash -c "! grep -rqF -e '$TA' -e '$TB' '$T/logs'"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
