#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb from a staged tree (no packaging tool to
# install): target/debian/snowplow-relay_<version>_<arch>.deb. Prints its path.
#   /usr/bin/snowplow-relay                    the release binary, stripped here (the
#                                              release profile keeps symbols for profiles)
#   /lib/systemd/system/snowplow-relay.service systemd/snowplow-relay.service, for /usr/bin
#   /etc/snowplow-relay/config.toml            config/snowplow-relay.toml, a conffile
#   /usr/share/doc/snowplow-relay/             README, CHANGELOG, docs/, copyright
# and the maintainer scripts of packaging/debian/ (a fresh install starts nothing).
#
# Usage: scripts/build-deb.sh [BINARY]    default target/release/snowplow-relay (built if
#        missing); DEB_VERSION sets the package version (default: the crate's).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/snowplow-relay}
[ -x "$bin" ] || cargo build --release --locked --quiet
version=${DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs (binutils' objdump; without it, any).
depends="libc6"
if command -v objdump >/dev/null 2>&1; then
  glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
  [ -z "$glibc" ] || depends="libc6 (>= $glibc)"
fi

# A stage of its own and the package moved into place whole: two builds at once (the
# systemd and fresh-machine tests run side by side in .ci/run) neither mix their trees
# nor let a reader see half a package.
mkdir -p target/debian
stage=$(mktemp -d target/debian/stage.XXXXXX)
trap 'rm -rf "$stage" "$stage.deb"' EXIT
chmod 0755 "$stage"
doc="$stage/usr/share/doc/snowplow-relay"
install -D -s -m 0755 "$bin" "$stage/usr/bin/snowplow-relay"
install -d "$stage/lib/systemd/system" "$stage/etc/snowplow-relay" "$doc/docs" "$stage/DEBIAN"
sed 's#/usr/local/bin/snowplow-relay#/usr/bin/snowplow-relay#g' systemd/snowplow-relay.service \
  >"$stage/lib/systemd/system/snowplow-relay.service"
install -m 0644 config/snowplow-relay.toml "$stage/etc/snowplow-relay/config.toml"
install -m 0644 README.md CHANGELOG.md packaging/debian/copyright "$doc/"
install -m 0644 docs/*.md "$doc/docs/"
chmod 0644 "$stage/lib/systemd/system/snowplow-relay.service"
echo /etc/snowplow-relay/config.toml >"$stage/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
  packaging/debian/control.in >"$stage/DEBIAN/control"
deb="target/debian/snowplow-relay_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$stage.deb" >/dev/null
mv -f "$stage.deb" "$deb"
echo "$PWD/$deb"
