#!/bin/sh
# Entrypoint of the locally built stand-in for the official mariadb image (ci/build-mariadb-image.sh).
# It honours the official image's variables the harness and docker-compose.yml use —
# MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD, MARIADB_DATABASE, MARIADB_USER,
# MARIADB_PASSWORD — and prints the same ready lines ("mariadbd: ready for connections." then
# "port: 3306"), which testcontainers waits for. Arguments are passed to mariadbd.
set -eu
if [ "${1:-mariadbd}" != mariadbd ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi
[ "${1:-}" = mariadbd ] && shift
datadir=/var/lib/mysql
mkdir -p /run/mysqld "$datadir"
chown -R mysql:mysql /run/mysqld "$datadir"
if [ ! -d "$datadir/mysql" ]; then
  if [ -z "${MARIADB_ROOT_PASSWORD:-}" ] && [ -z "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-}" ]; then
    echo "error: set MARIADB_ROOT_PASSWORD or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" >&2
    exit 1
  fi
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db --auth-root-authentication-method=normal >/dev/null
  init=/tmp/init.sql
  {
    echo "DELETE FROM mysql.global_priv WHERE User='';"
    echo "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD:-}';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD:-}';"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
    fi
    if [ -n "${MARIADB_USER:-}" ]; then
      echo "CREATE USER IF NOT EXISTS '$MARIADB_USER'@'%' IDENTIFIED BY '${MARIADB_PASSWORD:-}';"
      [ -n "${MARIADB_DATABASE:-}" ] && echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
    fi
    echo "FLUSH PRIVILEGES;"
  } > "$init"
  chown mysql "$init"
  set -- --init-file="$init" "$@"
fi
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve "$@"
