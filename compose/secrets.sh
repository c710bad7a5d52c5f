#!/bin/sh
# The compose stack's passwords, made by the one-shot `secrets` service before anything else starts.
#
# Each of the four passwords is taken from the environment (.env) when set there; otherwise the one made at
# the first start is kept; otherwise a random one is made now. So `docker compose up` works without a .env
# file and no password is ever a default baked into a file. Values are never printed: read one with e.g.
#   docker compose exec grafana cat /run/coinpulse-secrets/grafana_admin_password
#
# Files, on the stack's own `secrets` volume (mounted read-only by the services that need it):
#   postgres_password, collector_db_password, grafana_db_password, grafana_admin_password   (0644: read by
#       the postgres, psql and grafana processes of their images, which run as different users)
#   migrate.pgpass, collector.pgpass   libpq password files (PGPASSFILE) for `coinpulse migrate` and
#       `coinpulse run`: 0600 and owned by the collector image's user (10001), as libpq requires
set -eu
umask 077
dir=${COINPULSE_SECRETS_DIR:-/run/coinpulse-secrets}
owner=${COINPULSE_SECRETS_OWNER:-10001:10001}
mkdir -p "$dir"

random() {  # 32 characters from [A-Za-z0-9]: about 190 bits
  value=""
  while [ "${#value}" -lt 32 ]; do
    value="$value$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  done
  printf '%.32s' "$value"
}

write() {  # write NAME from stdin, atomically
  cat >"$dir/$1.tmp"
  mv "$dir/$1.tmp" "$dir/$1"
}

put() {  # put NAME VARIABLE
  eval "given=\${$2:-}"
  if [ -n "$given" ]; then
    printf '%s' "$given" | write "$1"
    echo "secrets: $1 from $2"
  elif [ -s "$dir/$1" ]; then
    echo "secrets: $1 kept ($2 not set)"
  else
    random | write "$1"
    echo "secrets: $1 generated ($2 not set); read it with: docker compose exec grafana cat /run/coinpulse-secrets/$1"
  fi
  chmod 0644 "$dir/$1"
}

pgpass() {  # pgpass NAME USER PASSWORD-FILE: one line for any host, port and database; \ and : escaped
  escaped=$(sed -e 's/\\/\\\\/g' -e 's/:/\\:/g' "$3")
  printf '*:*:*:%s:%s\n' "$2" "$escaped" | write "$1"
  chown "$owner" "$dir/$1"
  chmod 0600 "$dir/$1"
}

put postgres_password POSTGRES_PASSWORD
put collector_db_password COINPULSE_COLLECTOR_DB_PASSWORD
put grafana_db_password COINPULSE_GRAFANA_DB_PASSWORD
put grafana_admin_password GRAFANA_ADMIN_PASSWORD
pgpass migrate.pgpass postgres "$dir/postgres_password"
pgpass collector.pgpass coinpulse_collector "$dir/collector_db_password"
chmod 0755 "$dir"
