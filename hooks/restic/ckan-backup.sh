#!/usr/bin/env bash
# ckan-vault under restic: each CKAN database as a pg_dump stream (`ckan-vault stdin-dump`),
# then ckan.ini and the storage directory as files, wrapped in ckan-vault's hooks.
#
# Environment (restic's own variables as usual):
#   RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE (or RESTIC_PASSWORD_COMMAND)   required
#   CKAN_VAULT_CONFIG     ckan-vault's configuration (default /etc/ckan-vault/ckan-vault.toml);
#                         its [repository] must be this restic repository
#   CKAN_VAULT_DBS        databases to dump (default "main datastore"; "main" without DataStore)
#   CKAN_VAULT_FILES      files and directories to back up (default: none)
#   CKAN_VAULT_PRUNE=1    prune after retention (default: retention only)
#   CKAN_VAULT, RESTIC    the programs (default: from PATH)
#
# Retention: `hook post-backup` applies ckan-vault's [retention] to the snapshots this script
# makes (tag `ckan`, one history per database and one for the files). `restic forget` cannot
# do it here: restic sees the run lock this script holds in the repository and refuses.
#
# Fail-closed: restic >= 0.17 runs `--stdin-from-command` and saves no snapshot when
# ckan-vault exits non-zero. Older restic (Debian 12 has 0.14) reads the dump from a pipe
# whose write end this script holds open: restic sees the end of the stream only after
# stdin-dump succeeded; otherwise it is stopped before it can save a snapshot.
#
# restic prune: only for a repository that ckan-vault feeds through stdin-dump alone. Never
# run restic prune on a vault that `ckan-vault backup` writes to (rustic_core writes without
# restic's locks); use `ckan-vault forget --prune` there.
set -euo pipefail

CKAN_VAULT=${CKAN_VAULT:-ckan-vault}
RESTIC=${RESTIC:-restic}
DBS=${CKAN_VAULT_DBS:-main datastore}
FILES=${CKAN_VAULT_FILES:-}
POST=(hook post-backup --owner-pid $$)
if [ "${CKAN_VAULT_PRUNE:-0}" = 1 ]; then POST+=(--prune); fi
: "${RESTIC_REPOSITORY:?set RESTIC_REPOSITORY}"

finish() {
    local rc=$?
    "$CKAN_VAULT" --quiet hook finally --owner-pid $$ || true
    exit "$rc"
}
fail() {
    echo "ckan-backup: $1" >&2
    "$CKAN_VAULT" --quiet hook failed --owner-pid $$ --message "$1" || true
    exit 1
}

# Checks databases, vault and temp space; takes the run lock for this script ($$).
"$CKAN_VAULT" hook pre-backup --owner-pid $$ || fail "pre-backup checks failed"
trap finish EXIT

if "$RESTIC" backup --help 2>/dev/null | grep -q -- '--stdin-from-command'; then
    NEW_RESTIC=1
else
    NEW_RESTIC=0
fi

# restic < 0.17: stream through a FIFO whose write end we keep until stdin-dump succeeded.
dump_via_pipe() {
    local db=$1 dir rpid rc=0
    dir=$(mktemp -d)
    mkfifo -m 600 "$dir/pipe"
    "$RESTIC" backup --quiet --stdin --stdin-filename "$db.pgdump" \
        --tag ckan --tag "db=$db" <"$dir/pipe" &
    rpid=$!
    exec 3>"$dir/pipe"
    rm -rf "$dir"
    "$CKAN_VAULT" stdin-dump --db "$db" >&3 || rc=$?
    if [ "$rc" -ne 0 ]; then
        kill -TERM "$rpid" 2>/dev/null || true
        wait "$rpid" 2>/dev/null || true
        exec 3>&-
        return "$rc"
    fi
    exec 3>&-
    wait "$rpid"
}

for db in $DBS; do
    if [ "$NEW_RESTIC" = 1 ]; then
        "$RESTIC" backup --quiet --stdin-filename "$db.pgdump" --tag ckan --tag "db=$db" \
            --stdin-from-command -- "$CKAN_VAULT" stdin-dump --db "$db" \
            || fail "database $db: restic or ckan-vault stdin-dump failed, no snapshot saved"
    else
        dump_via_pipe "$db" \
            || fail "database $db: ckan-vault stdin-dump failed, no snapshot saved"
    fi
done

if [ -n "$FILES" ]; then
    # shellcheck disable=SC2086  # a list of paths
    "$RESTIC" backup --quiet --tag ckan --tag files $FILES || fail "restic backup of files failed"
fi

# Retention ([retention] of ckan-vault's config, for these snapshots and ckan-vault's own),
# metrics, the success ping.
"$CKAN_VAULT" "${POST[@]}" || fail "post-backup failed"
