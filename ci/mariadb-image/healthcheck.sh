#!/bin/sh
# The official image's healthcheck.sh, as far as docker-compose.yml uses it (--connect
# --innodb_initialized): the server answers a query.
exec mariadb --protocol=socket -uroot ${MARIADB_ROOT_PASSWORD:+-p"$MARIADB_ROOT_PASSWORD"} -e 'SELECT 1' >/dev/null
