#!/usr/bin/env bash
# Runs a command with DATABASE_URL pointing at a local PostgreSQL, starting (or
# installing, from Debian's packages) the server when none answers. The test
# suite runs once on SQLite and once here: PostgreSQL is the production database.
set -euo pipefail

host=127.0.0.1 port=${GENERATOR_PG_PORT:-5432}
if ! pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "==> installing postgresql (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "==> starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && break; sleep 1; done
  # A cluster we started asks for a password over TCP: give its superuser one.
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'generator-tests'\"" >/dev/null
fi
# This machine kind's own cluster trusts local TCP connections and ignores the password.
# GENERATOR_PG_DATABASE names the database: two runs at once need two names, since
# each drops and creates test_<name>.
database=${GENERATOR_PG_DATABASE:-generator}
export DATABASE_URL="postgres://postgres:generator-tests@$host:$port/$database"
echo "==> DATABASE_URL=postgres://postgres:***@$host:$port/$database"
exec "$@"
