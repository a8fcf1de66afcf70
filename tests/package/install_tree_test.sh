#!/usr/bin/env bash
# `cmake --install` puts every file where it belongs and the unit follows
# the prefix: once with DESTDIR and prefix /usr (as the Debian package does:
# the config goes to /etc), once into a prefix of its own (config in
# PREFIX/etc). Installing again over an edited config keeps it and puts the
# shipped one beside it as digestd.conf.new.
#
#   install_tree_test.sh CMAKE BUILD_DIR SOURCE_DIR VERSION
set -euo pipefail
cmake=$1 build=$2 src=$3 version=$4
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

DESTDIR=$tmp/dest "$cmake" --install "$build" --prefix /usr >/dev/null
"$here/check_tree.sh" "$tmp/dest" /usr "$src" "$version"

prefix=$tmp/opt/digestd
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
"$here/check_tree.sh" "" "$prefix" "$src" "$version"

conf=$prefix/etc/digestd/digestd.conf
echo "# edited" >>"$conf"
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/again.log"
grep -q '^# edited$' "$conf" || { echo "FAIL: a second install overwrote the edited $conf" >&2; exit 1; }
cmp -s "$conf.new" "$src/conf/digestd.conf" || { echo "FAIL: no shipped $conf.new beside the edited config" >&2; exit 1; }
grep -q 'Keeping the edited' "$tmp/again.log" || { echo "FAIL: the install did not say it kept the edited config" >&2; exit 1; }
echo "an edited config survives a second install; the shipped one is digestd.conf.new"
