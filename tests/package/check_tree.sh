#!/usr/bin/env bash
# Checks an installed digestd tree: exactly the expected files (no more, no
# fewer), the binaries executable, the config file as shipped, the man pages
# and changelog valid gzip, the changelog's version the package's, and a
# unit whose ExecStart binary and --config file exist in the tree.
#
#   check_tree.sh ROOT PREFIX SOURCE_DIR VERSION
#
# ROOT is the directory the tree was installed or unpacked into ("" for a
# `cmake --install --prefix` without DESTDIR); PREFIX is the install prefix
# (/usr for the Debian package). The config file is expected in /etc/digestd
# for PREFIX /usr and in PREFIX/etc/digestd otherwise.
set -euo pipefail
root=${1%/} prefix=$2 src=$3 version=$4
if [ "$prefix" = /usr ]; then etc=/etc; else etc=$prefix/etc; fi
fail=0
bad() {
  echo "FAIL: $*" >&2
  fail=1
}

doc=$prefix/share/doc/digestd
expected=$(sort <<EOF2
$prefix/bin/digestctl
$prefix/bin/digestd
$prefix/lib/systemd/system/digestd.service
$prefix/lib/systemd/system/digestd.socket
$prefix/lib/sysusers.d/digestd.conf
$prefix/lib/tmpfiles.d/digestd.conf
$etc/digestd/digestd.conf
$doc/README.md
$doc/changelog.gz
$doc/copyright
$doc/examples/remote-backends.conf
$prefix/share/man/man1/digestctl.1.gz
$prefix/share/man/man5/digestd.conf.5.gz
$prefix/share/man/man8/digestd.8.gz
EOF2
)
# Every file and symlink under the tree's top directories, relative to ROOT.
tops=$(printf '%s\n' "$prefix" "$etc" | sort -u)
actual=$(for t in $tops; do
  [ -e "$root$t" ] && find "$root$t" \( -type f -o -type l \) -printf '%p\n'
done | sed "s|^$root||" | sort -u)
missing=$(comm -23 <(echo "$expected") <(echo "$actual"))
extra=$(comm -13 <(echo "$expected") <(echo "$actual"))
[ -z "$missing" ] || bad "missing from the tree: $(echo $missing)"
[ -z "$extra" ] || bad "not expected in the tree: $(echo $extra)"

for b in digestd digestctl; do
  [ -x "$root$prefix/bin/$b" ] || bad "$prefix/bin/$b is not executable"
done
cmp -s "$root$etc/digestd/digestd.conf" "$src/conf/digestd.conf" ||
  bad "$etc/digestd/digestd.conf differs from conf/digestd.conf"
cmp -s "$root$prefix/lib/sysusers.d/digestd.conf" "$src/systemd/digestd.sysusers" ||
  bad "the sysusers.d snippet differs from systemd/digestd.sysusers"
cmp -s "$root$prefix/lib/tmpfiles.d/digestd.conf" "$src/systemd/digestd.tmpfiles" ||
  bad "the tmpfiles.d snippet differs from systemd/digestd.tmpfiles"
for gz in "$root$prefix"/share/man/man*/*.gz "$root$doc/changelog.gz"; do
  [ -f "$gz" ] && { gzip -t "$gz" || bad "$gz is not valid gzip"; }
done
if [ -f "$root$doc/changelog.gz" ]; then
  top=$(gzip -dc "$root$doc/changelog.gz" | sed -n '1s/^digestd (\([^)]*\)).*/\1/p')
  [ "$top" = "$version" ] ||
    bad "packaging/deb/changelog's latest entry is ${top:-missing}, the version is $version: add an entry"
fi

unit=$root$prefix/lib/systemd/system/digestd.service
if [ -f "$unit" ]; then
  grep -qE '@[A-Z_]+@' "$unit" && bad "digestd.service still has a template placeholder: $(grep -E '@[A-Z_]+@' "$unit")"
  exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
  bin=${exec_start%% *}
  [ "$bin" = "$prefix/bin/digestd" ] || bad "ExecStart runs $bin, not $prefix/bin/digestd"
  [ -x "$root$bin" ] || bad "ExecStart's $bin does not exist in the tree"
  conf=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
  [ "$conf" = "$etc/digestd/digestd.conf" ] || bad "ExecStart reads ${conf:-no config}, not $etc/digestd/digestd.conf"
  [ -f "$root$conf" ] || bad "ExecStart's config $conf does not exist in the tree"
fi

[ "$fail" = 0 ] && echo "tree under ${root:-/} (prefix $prefix): $(echo "$expected" | wc -l) files as expected, ExecStart=$exec_start"
exit "$fail"
