#!/usr/bin/env bash
# Build an image tagged mariadb:11.4 from Debian's mariadb-server, for machines that have a Docker
# engine but cannot pull images (no registry). The harness's Docker path and docker-compose.yml
# use it as they would use the official image. Needs root, debootstrap and a running dockerd.
#   ci/build-mariadb-image.sh [TAG]     (default mariadb:11.4)
set -euo pipefail
tag=${1:-mariadb:11.4}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /tmp/mariadb-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "[image] debootstrap bookworm with mariadb-server into $work (a few minutes)"
debootstrap --variant=minbase --include=mariadb-server,mariadb-client bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
install -m 0755 "$here/mariadb-image/docker-entrypoint.sh" "$work/rootfs/usr/local/bin/docker-entrypoint.sh"
install -m 0755 "$here/mariadb-image/healthcheck.sh" "$work/rootfs/usr/local/bin/healthcheck.sh"
rm -rf "$work/rootfs/var/lib/mysql"/* "$work/rootfs/var/cache/apt/archives"/*.deb
echo "[image] importing as $tag"
tar -C "$work/rootfs" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["mariadbd"]' \
  --change 'EXPOSE 3306' \
  - "$tag"
docker image inspect "$tag" --format '[image] {{.RepoTags}} {{.Size}} bytes'
