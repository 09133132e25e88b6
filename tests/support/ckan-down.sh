#!/usr/bin/env bash
# Stop what ckan-up.sh DIR started: the CKAN server, redis and the private PostgreSQL
# cluster. Keeps all data (a later ckan-up.sh DIR is a warm restart). Idempotent.
#   ckan-down.sh DIR [--purge]     --purge also deletes DIR (and a /tmp PostgreSQL dir)
set -uo pipefail

[ $# -ge 1 ] || { echo "usage: $0 DIR [--purge]" >&2; exit 2; }
DIR=$1
[ -d "$DIR" ] || exit 0
PGBIN=${PGBIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
[ -n "$PGBIN" ] && [ -x "$PGBIN/pg_ctl" ] || PGBIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")
asdb() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# stop_pid FILE NAME: TERM, wait up to 10 s, then KILL.
stop_pid() {
    local f=$1 pid
    [ -s "$f" ] || { rm -f "$f"; return 0; }
    pid=$(cat "$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[ckan-down] $2 (pid $pid) ignored TERM; killing" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$f"
}

stop_pid "$DIR/server.pid" "CKAN" &
stop_pid "$DIR/redis.pid" "redis" &
if [ -f "$DIR/pgdata/PG_VERSION" ] && [ -x "$PGBIN/pg_ctl" ]; then
    pgdata=$(readlink -f "$DIR/pgdata")
    if asdb "$PGBIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
        asdb "$PGBIN/pg_ctl" -D "$pgdata" -m fast -w -t 60 stop >/dev/null \
            || echo "[ckan-down] pg_ctl stop failed for $pgdata" >&2
    fi
fi
wait

if [ "${2:-}" = "--purge" ]; then
    for l in "$DIR/pgdata" "$DIR/pgsock"; do
        if [ -L "$l" ]; then
            t=$(dirname "$(readlink -f "$l")")
            case "$t" in /tmp/ckan-vault-pg.*) rm -rf "$t" ;; esac
        fi
    done
    rm -rf "$DIR"
fi
exit 0
