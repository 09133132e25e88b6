#!/usr/bin/env bash
# Start a throw-away CKAN 2.11.6 on loopback for the integration tests.
#
#   ckan-up.sh DIR [CKAN_PORT=5000] [PG_PORT=5434] [REDIS_PORT=6380]
#   ckan-up.sh --prepare          only build/reuse the shared venv and the template instance
#
# Everything lives in DIR: a private PostgreSQL cluster (DIR/pgdata, socket in DIR/pgsock),
# redis (DIR/redis.pid), ckan.ini, storage, server.pid/server.log, and the secrets
# (pg.password, datastore.password, admin.password, admin.token; all 0600).
# The virtualenv is shared: $CKAN_VAULT_TEST_CACHE/ckan-venv-2.11.6 (built once, under flock).
# Idempotent: a second run reuses what exists and (re)starts what is not running;
# a warm restart takes a few seconds. Stop with ckan-down.sh DIR.
# A new DIR is seeded from a template instance (built once per version of this script in
# $CKAN_VAULT_TEST_CACHE/ckan-template-*): same secrets and admin token as the template,
# fresh copy of its database. That makes a fresh instance about 6 s instead of 30 s.
# CKAN_VAULT_NO_TEMPLATE=1 builds DIR from scratch (own secrets).
# Never touches the system PostgreSQL cluster or a system redis.
set -euo pipefail

CKAN_VERSION=2.11.6
PYTHON=${CKAN_VAULT_PYTHON:-python3}
if [ -z "${CKAN_VAULT_TEST_CACHE:-}" ]; then
    if [ -d /work/cache ] && [ -w /work/cache ]; then CKAN_VAULT_TEST_CACHE=/work/cache/test
    else CKAN_VAULT_TEST_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/ckan-vault-test; fi
fi
VENV=$CKAN_VAULT_TEST_CACHE/ckan-venv-$CKAN_VERSION
SELF=$(readlink -f "${BASH_SOURCE[0]}")
SUPPORT=$(dirname "$SELF")
TEMPLATE=$CKAN_VAULT_TEST_CACHE/ckan-template-$CKAN_VERSION-$(sha256sum "$SELF" | cut -c1-12)
T_START=$SECONDS

log() { echo "[ckan-up +$((SECONDS - T_START))s] $*" >&2; }
die() { echo "[ckan-up] error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found; install: $2 (or run: bash .ci/run install)"; }

# ------------------------------------------------------------------ shared venv
prepare_venv() {
    [ -f "$VENV/.complete" ] && [ -x "$VENV/bin/ckan" ] && return 0
    need "$PYTHON" "python3 (>= 3.9) with venv support (apt-get install python3-venv)"
    need flock "util-linux"
    mkdir -p "$CKAN_VAULT_TEST_CACHE"
    local lock=$CKAN_VAULT_TEST_CACHE/ckan-venv-$CKAN_VERSION.lock
    exec 9>"$lock"
    log "waiting for venv lock $lock"
    flock 9
    if [ ! -f "$VENV/.complete" ] || [ ! -x "$VENV/bin/ckan" ]; then
        log "building $VENV (pip install ckan[requirements]==$CKAN_VERSION; about a minute)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (apt-get install python3-venv)"
        "$VENV/bin/python" -m pip install -q -U pip
        if ! "$VENV/bin/pip" install -q "ckan[requirements]==$CKAN_VERSION"; then
            rm -rf "$VENV"
            die "pip install ckan failed (needs network to PyPI and gcc, libpq-dev, python3-dev)"
        fi
        touch "$VENV/.complete"
        log "venv ready"
    fi
    flock -u 9
    exec 9>&-
}

need redis-server "redis-server"
need psql "postgresql-client"
PGBIN=${PGBIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || PGBIN=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries (initdb) not found; install: postgresql"
if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "user postgres missing (apt-get install postgresql)"; fi
prepare_venv

# ------------------------------------------------------------------ template
# ensure_template: build the template instance if needed (exclusive lock), then hold
# a shared lock on fd 8 until the copy below is done.
ensure_template() {
    exec 8>"$TEMPLATE.lock"
    flock -s 8
    if [ ! -f "$TEMPLATE/.complete" ] || [ ! -f "$TEMPLATE/pgdata/PG_VERSION" ]; then
        flock 8   # upgrade to exclusive
        if [ ! -f "$TEMPLATE/.complete" ] || [ ! -f "$TEMPLATE/pgdata/PG_VERSION" ]; then
            log "building template instance $TEMPLATE (once; about 30 s)"
            bash "$SUPPORT/ckan-down.sh" "$TEMPLATE" --purge >&2 || true
            local ports
            ports=$("$VENV/bin/python" -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
            # The server runs once so that it writes its JS translations into storage/i18n.
            # shellcheck disable=SC2086
            CKAN_VAULT_NO_TEMPLATE=1 bash "$SELF" "$TEMPLATE" $ports >/dev/null \
                || die "building the template instance failed"
            bash "$SUPPORT/ckan-down.sh" "$TEMPLATE" >&2
            rm -f "$TEMPLATE/.configured" "$TEMPLATE/ports" "$TEMPLATE"/*.log
            touch "$TEMPLATE/.complete"
            log "template ready"
            # Drop templates made by older versions of this script (if nobody holds them).
            local old
            for old in "$CKAN_VAULT_TEST_CACHE"/ckan-template-*/; do
                old=${old%/}
                [ "$old" = "$TEMPLATE" ] && continue
                # shellcheck disable=SC2094
                ( flock -n 7 || exit 0
                  bash "$SUPPORT/ckan-down.sh" "$old" --purge >/dev/null 2>&1
                  rm -f "$old.lock" ) 7>"$old.lock" || true
            done
        fi
        flock -s 8
    fi
}
# --prepare: build the shared venv and the template instance, nothing else.
if [ "${1:-}" = "--prepare" ]; then
    ensure_template
    flock -u 8; exec 8>&-
    echo "CKAN_VENV=$VENV"
    echo "CKAN_TEMPLATE=$TEMPLATE"
    exit 0
fi

[ $# -ge 1 ] || { sed -n '2,17p' "$SELF" >&2; exit 2; }
DIR=$1
CP=${2:-5000}
PP=${3:-5434}
RP=${4:-6380}
for p in "$CP" "$PP" "$RP"; do [[ "$p" =~ ^[0-9]+$ ]] || die "bad port: $p"; done

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1
asdb() { if [ "$IS_ROOT" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
ckan() { "$VENV/bin/ckan" "$@"; }
INI=$DIR/ckan.ini
URL=http://127.0.0.1:$CP

# Secrets: random, written 0600, never passed on a command line.
secret() {  # secret FILE -> creates FILE with a random hex string if missing
    [ -s "$1" ] && return 0
    ( umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$1.tmp" && mv "$1.tmp" "$1" )
}

# If the ports changed since the last run, stop everything and reconfigure.
if [ -f "$DIR/ports" ] && [ "$(cat "$DIR/ports")" != "$CP $PP $RP" ]; then
    log "ports changed ($(cat "$DIR/ports") -> $CP $PP $RP): restarting"
    bash "$SUPPORT/ckan-down.sh" "$DIR" >&2 || true
    rm -f "$DIR/.configured"
fi

SEED=0
if [ "${CKAN_VAULT_NO_TEMPLATE:-0}" != 1 ] && [ ! -e "$DIR/pgdata" ] && [ ! -e "$INI" ]; then
    ensure_template
    SEED=1
fi

# ------------------------------------------------------------------ PostgreSQL
# The postgres user must reach the data and socket dirs. If it cannot traverse DIR
# (e.g. DIR under /root) or the socket path would be too long, keep them in a private
# /tmp dir and link them from DIR.
if [ ! -e "$DIR/pgdata" ]; then
    use_tmp=0
    [ $(( ${#DIR} + 24 )) -gt 100 ] && use_tmp=1
    if [ "$IS_ROOT" = 1 ] && ! runuser -u postgres -- test -x "$DIR"; then use_tmp=1; fi
    if [ "$use_tmp" = 1 ]; then
        t=$(mktemp -d /tmp/ckan-vault-pg.XXXXXX)
        chmod 711 "$t"
        mkdir -p "$t/pgdata" "$t/pgsock"
        ln -s "$t/pgdata" "$DIR/pgdata"
        ln -s "$t/pgsock" "$DIR/pgsock"
        log "PostgreSQL dirs in $t (postgres cannot use $DIR directly)"
    else
        mkdir -p "$DIR/pgdata" "$DIR/pgsock"
    fi
fi
PGDATA_DIR=$(readlink -f "$DIR/pgdata")
PGSOCK=$(readlink -f "$DIR/pgsock")
mkdir -p "$PGDATA_DIR" "$PGSOCK"
if [ "$SEED" = 1 ]; then
    log "seeding $DIR from template"
    cp -a "$(readlink -f "$TEMPLATE/pgdata")/." "$PGDATA_DIR/"
    rm -f "$PGDATA_DIR/postmaster.pid" "$PGDATA_DIR/postgres.log"
    for f in ckan.ini pg.password datastore.password admin.password admin.token; do
        cp -p "$TEMPLATE/$f" "$DIR/$f"
    done
    cp -a "$TEMPLATE/storage" "$DIR/storage"
    flock -u 8; exec 8>&-
fi
if [ "$IS_ROOT" = 1 ]; then chown postgres: "$PGDATA_DIR" "$PGSOCK"; fi
chmod 700 "$PGDATA_DIR" "$PGSOCK"

if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    log "initdb $PGDATA_DIR"
    asdb "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
fi
if ! asdb "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PP"
    asdb "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/postgres.log" -w -t 60 \
        -o "-p $PP -k '$PGSOCK' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null \
        || { tail -n 30 "$PGDATA_DIR/postgres.log" >&2; die "PostgreSQL did not start (port $PP busy?)"; }
fi
psql_su() { psql -X -q -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PP" -U postgres "$@"; }

secret "$DIR/pg.password"
secret "$DIR/datastore.password"
PG_PW=$(<"$DIR/pg.password")
DS_PW=$(<"$DIR/datastore.password")
# SQL (with the passwords) goes over stdin; \gexec creates the databases only if missing.
psql_su -d postgres <<SQL
SELECT 'CREATE ROLE ckan_default LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ckan_default') \gexec
SELECT 'CREATE ROLE datastore_default LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'datastore_default') \gexec
ALTER ROLE ckan_default PASSWORD '$PG_PW';
ALTER ROLE datastore_default PASSWORD '$DS_PW';
SELECT 'CREATE DATABASE ckan_default OWNER ckan_default ENCODING ''UTF8'' TEMPLATE template0' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ckan_default') \gexec
SELECT 'CREATE DATABASE datastore_default OWNER ckan_default ENCODING ''UTF8'' TEMPLATE template0' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'datastore_default') \gexec
SQL

# ------------------------------------------------------------------ redis
redis_alive() { [ -s "$DIR/redis.pid" ] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null; }
if ! redis_alive; then
    log "starting redis on 127.0.0.1:$RP"
    rm -f "$DIR/redis.pid"
    redis-server --bind 127.0.0.1 --port "$RP" --daemonize yes --pidfile "$DIR/redis.pid" \
        --dir "$DIR" --logfile "$DIR/redis.log" --save '' --appendonly no >/dev/null
    for _ in $(seq 50); do redis_alive && break; sleep 0.1; done
    redis_alive || { tail -n 20 "$DIR/redis.log" >&2 || true; die "redis did not start (port $RP busy?)"; }
fi

# ------------------------------------------------------------------ ckan.ini
mkdir -p "$DIR/storage"
if [ ! -f "$INI" ] || [ ! -f "$DIR/.configured" ]; then
    if [ ! -f "$INI" ]; then
        log "ckan generate config"
        ( umask 077; ckan generate config "$INI" >/dev/null )
    fi
    chmod 600 "$INI"
    # config-tool WITHOUT -c (with -c it connects to the default DB first).
    # Options go through a 0600 merge file because two of them carry passwords.
    ( umask 077; cat > "$DIR/.ini-merge" <<INI
[app:main]
sqlalchemy.url = postgresql://ckan_default:$PG_PW@127.0.0.1:$PP/ckan_default
ckan.datastore.write_url = postgresql://ckan_default:$PG_PW@127.0.0.1:$PP/datastore_default
ckan.datastore.read_url = postgresql://datastore_default:$DS_PW@127.0.0.1:$PP/datastore_default
ckan.site_url = $URL
solr_url = http://127.0.0.1:1/solr/ckan
ckan.redis.url = redis://127.0.0.1:$RP/0
ckan.storage_path = $DIR/storage
ckan.plugins = activity datastore
ckan.auth.create_user_via_api = false
INI
    )
    log "ckan config-tool"
    ckan config-tool "$INI" -f "$DIR/.ini-merge" >/dev/null
    rm -f "$DIR/.ini-merge"
    echo "$CP $PP $RP" > "$DIR/ports"
    touch "$DIR/.configured"
fi

# ------------------------------------------------------------------ database, datastore, admin
if [ ! -s "$DIR/admin.token" ]; then
    log "ckan db init"
    ckan -c "$INI" db init >"$DIR/db-init.log" 2>&1 || { tail -n 40 "$DIR/db-init.log" >&2; die "ckan db init failed"; }
    log "datastore set-permissions"
    ckan -c "$INI" datastore set-permissions 2>>"$DIR/db-init.log" | psql_su -d datastore_default >/dev/null
    # A small DataStore table (as the write user would create it), so the DataStore
    # database has rows to back up. (datastore_create itself needs a dataset, i.e. Solr.)
    psql_su -d datastore_default <<'SQL'
SET ROLE ckan_default;
CREATE TABLE IF NOT EXISTS "0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001" (
    _id serial PRIMARY KEY, _full_text tsvector, name text, value numeric);
INSERT INTO "0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001" (name, value)
    SELECT 'alpha', 3.14 WHERE NOT EXISTS (SELECT FROM "0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001");
INSERT INTO "0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001" (name, value) SELECT 'beta', 2.72 WHERE (SELECT count(*) FROM "0f6a2c1e-9b1d-4a53-8d0c-5ad3c0e7a001") < 2;
SQL
    secret "$DIR/admin.password"
    log "sysadmin admin"
    # Run the real CLI in-process so the password stays out of argv; 'y' answers "Create new user?".
    printf 'y\n' | "$VENV/bin/python" -c '
import sys
from ckan.cli.cli import ckan
ini, pwfile = sys.argv[1], sys.argv[2]
pw = open(pwfile).read().strip()
ckan.main(args=["-c", ini, "sysadmin", "add", "admin", "email=admin@example.invalid",
                "password=" + pw, "fullname=CI admin"], prog_name="ckan")
' "$INI" "$DIR/admin.password" >>"$DIR/db-init.log" 2>&1 || { tail -n 40 "$DIR/db-init.log" >&2; die "creating sysadmin failed"; }
    log "admin token"
    ( umask 077
      ckan -c "$INI" user token add -q admin ci-admin 2>>"$DIR/db-init.log" | tail -n1 > "$DIR/admin.token.tmp" )
    [ -s "$DIR/admin.token.tmp" ] || { tail -n 40 "$DIR/db-init.log" >&2; die "ckan user token add failed"; }
    mv "$DIR/admin.token.tmp" "$DIR/admin.token"
fi

# Some files in storage so that storage backups have content (CKAN's resource layout).
if [ ! -e "$DIR/storage/resources/abc/def/ghijklmnopqrstuvwxyz0123456789ab" ]; then
    mkdir -p "$DIR/storage/resources/abc/def" "$DIR/storage/storage/uploads/user"
    printf 'id,name,value\n1,alpha,3.14\n2,beta,2.72\n' > "$DIR/storage/resources/abc/def/ghijklmnopqrstuvwxyz0123456789ab"
    cp "$DIR/storage/resources/abc/def/ghijklmnopqrstuvwxyz0123456789ab" "$DIR/storage/resources/abc/def/example.csv"
    printf 'not really a png\n' > "$DIR/storage/storage/uploads/user/2024-01-01-000000.000000avatar.png"
fi

# ------------------------------------------------------------------ CKAN server
if [ "${CKAN_UP_NO_SERVER:-0}" = 1 ]; then log "not starting the server (CKAN_UP_NO_SERVER=1)"; exit 0; fi
server_alive() { [ -s "$DIR/server.pid" ] && kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; }
# wait_ok SECONDS: poll status_show until success, or the server pid dies, or timeout.
wait_ok() {
    "$VENV/bin/python" - "$URL" "$DIR/server.pid" "$1" <<'PY'
import json, os, sys, time, urllib.request
url, pidfile, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
pid = int(open(pidfile).read().strip())
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        print("server process %d died" % pid, file=sys.stderr); sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/api/3/action/status_show", timeout=5) as r:
            if json.load(r).get("success"):
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
print("no answer from %s within %ss" % (url, limit), file=sys.stderr); sys.exit(1)
PY
}
if server_alive && wait_ok 5 2>/dev/null; then
    log "CKAN already running (pid $(cat "$DIR/server.pid"))"
else
    if server_alive; then kill "$(cat "$DIR/server.pid")" 2>/dev/null || true; sleep 1; fi
    log "starting CKAN on $URL"
    # setsid: own session, no terminal; survives the caller, stopped by ckan-down.sh.
    setsid "$VENV/bin/ckan" -c "$INI" run --host 127.0.0.1 --port "$CP" --disable-reloader --threaded \
        </dev/null >>"$DIR/server.log" 2>&1 &
    echo $! > "$DIR/server.pid"
    if ! wait_ok 120; then
        echo "----- tail of $DIR/server.log" >&2
        tail -n 40 "$DIR/server.log" >&2
        die "CKAN did not come up on $URL"
    fi
fi
log "ready"

echo "CKAN_URL=$URL"
echo "CKAN_INI=$INI"
echo "CKAN_ADMIN_TOKEN_FILE=$DIR/admin.token"
echo "CKAN_STORAGE=$DIR/storage"
echo "CKAN_PG_PORT=$PP"
echo "CKAN_PG_SOCKET_DIR=$PGSOCK"
echo "CKAN_PG_PASSWORD_FILE=$DIR/pg.password"
echo "CKAN_REDIS_PORT=$RP"
echo "CKAN_VENV=$VENV"
