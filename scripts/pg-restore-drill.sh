#!/usr/bin/env bash
# A PostgreSQL restore drill (docs/backups.md): proves that a dump of the database at URL
# restores into a database this release can serve.
#   1. pg_dump of URL (custom format);
#   2. pg_restore into a scratch database made for the drill on the same server;
#   3. `shipshape migrate status` against the scratch database (the shipshape on PATH, or
#      SHIPSHAPE_BIN): every migration this binary needs is there;
#   4. the rows of every table counted in both and printed, `TABLE N` a line; any difference
#      fails the drill.
# The scratch database is dropped at the end, failed drill or not.
# Needs pg_dump, pg_restore and psql at least as new as the server, and a role that may
# create databases. Usage: scripts/pg-restore-drill.sh postgres://USER:PASS@HOST:PORT/DB
set -euo pipefail
URL=${1:?usage: scripts/pg-restore-drill.sh postgres://USER:PASS@HOST:PORT/DB}
BIN=${SHIPSHAPE_BIN:-shipshape}
for tool in pg_dump pg_restore psql python3; do
    command -v "$tool" >/dev/null || { echo "pg-restore-drill: $tool is not installed" >&2; exit 1; }
done
command -v "$BIN" >/dev/null || [ -x "$BIN" ] || { echo "pg-restore-drill: no shipshape at $BIN (set SHIPSHAPE_BIN)" >&2; exit 1; }

scratch="shipshape_drill_$(date -u +%Y%m%d%H%M%S)_$$"
# The same URL with the scratch database's name (its query string, sslmode included, kept).
scratch_url=$(python3 -c '
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(url._replace(path="/" + sys.argv[2])))' "$URL" "$scratch")
work=$(mktemp -d)
cleanup() {
    psql "$URL" -qAtX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null \
        || echo "pg-restore-drill: could not drop the scratch database $scratch: drop it by hand" >&2
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> pg_dump"
pg_dump --format=custom --no-owner --no-privileges --file="$work/dump" "$URL"
echo "==> pg_restore into $scratch"
psql "$URL" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $scratch" >/dev/null
pg_restore --no-owner --no-privileges --exit-on-error --dbname="$scratch_url" "$work/dump"
echo "==> shipshape migrate status"
status=$(DATABASE_URL=$scratch_url DATABASE_DIRECT_URL='' "$BIN" migrate status)
echo "$status"
if grep -qw pending <<<"$status"; then
    echo "pg-restore-drill: FAILED: the restored database lacks migrations this release needs" >&2
    exit 1
fi

echo "==> rows per table"
tables=$(psql "$URL" -qAtX -v ON_ERROR_STOP=1 -c \
    "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
differ=0
for table in $tables; do
    source_rows=$(psql "$URL" -qAtX -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM $table")
    restored_rows=$(psql "$scratch_url" -qAtX -v ON_ERROR_STOP=1 -c "SELECT count(*) FROM $table")
    if [ "$source_rows" = "$restored_rows" ]; then
        echo "$table $restored_rows"
    else
        echo "$table $restored_rows (the source has $source_rows)"
        differ=1
    fi
done
[ "$differ" -eq 0 ] || { echo "pg-restore-drill: FAILED: row counts differ" >&2; exit 1; }
echo "pg-restore-drill: OK, the dump restores and this release can serve it"
