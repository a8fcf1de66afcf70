#!/usr/bin/env bash
# Checks the Debian package, then installs it on this machine, runs it and
# removes it again (scripts/test runs this after scripts/package):
#
#   1. unpacked (dpkg-deb -x), the tree is exactly what check_tree.sh expects,
#      with an ExecStart that exists in it; the control data has the conffile,
#      the maintainer scripts and library dependencies from dpkg-shlibdeps;
#   2. lintian reports no errors (warnings are shown);
#   3. as root: `apt-get install ./digestd_*.deb` creates the digestd user and
#      group and /run/digestd, /var/lib/digestd; `digestd --check-config`
#      accepts the installed config; the man pages resolve; the installed
#      digestd runs as user digestd against a throwaway PostgreSQL with its
#      socket in /run/digestd, and a user in group digestd (only then) can
#      use digestctl; reinstalling keeps an edited config; `apt-get purge`
#      removes the package, its config and directories. The user and group,
#      which Debian packages leave behind, are removed too when this test
#      created them, so the machine is left as it was.
#
# Step 3 is skipped (with a line saying so) when not running as root, and
# when a digestd package is already installed (it would be replaced).
#
#   deb_test.sh DEB SOURCE_DIR VERSION
set -euo pipefail
deb=$(realpath "$1") src=$(realpath "$2") version=$3
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
daemon_pid=""
pg_env=""
installed_here=0
user_existed=1
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_env" ]; then "$src/scripts/pg-throwaway" stop --env-file "$pg_env" || true; fi
  if [ "$installed_here" = 1 ] && dpkg-query -W -f='${db:Status-Status}' digestd 2>/dev/null | grep -q installed; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq digestd >/dev/null 2>&1 || true
  fi
  if [ "$user_existed" = 0 ]; then
    userdel digestd 2>/dev/null || true
    groupdel digestd 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo "--- $*"; }

step "contents of $(basename "$deb")"
dpkg-deb -x "$deb" "$tmp/root"
"$here/check_tree.sh" "$tmp/root" /usr "$src" "$version"
dpkg-deb -e "$deb" "$tmp/control"
[ "$(cat "$tmp/control/conffiles")" = /etc/digestd/digestd.conf ] ||
  fail "conffiles is not exactly /etc/digestd/digestd.conf: $(cat "$tmp/control/conffiles")"
for s in postinst prerm postrm; do
  [ -x "$tmp/control/$s" ] || fail "no executable maintainer script $s"
done
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libuv1 libpq5 libcurl4 libsystemd0 libmicrohttpd12 libstdc++6; do
  grep -q "\b$lib\b" <<<"$depends" || fail "Depends lacks $lib (from dpkg-shlibdeps): $depends"
done
echo "control: conffiles, postinst, prerm, postrm; Depends: $depends"

step "lintian"
lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian reports errors (above)"
echo "lintian: no errors"

if [ "$(id -u)" -ne 0 ]; then
  echo "--- installing the package: skipped (needs root; CI runs as root)"
  exit 0
fi
if dpkg-query -W -f='${db:Status-Status}' digestd 2>/dev/null | grep -q installed; then
  echo "--- installing the package: skipped (a digestd package is installed on this machine)"
  exit 0
fi

step "apt-get install ./$(basename "$deb")"
getent passwd digestd >/dev/null || user_existed=0
installed_here=1
cp "$deb" "$tmp/"
# apt reads local packages as user _apt: the copy sits in a directory it may enter.
chmod 755 "$tmp"
(cd "$tmp" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$(basename "$deb")" \
  >"$tmp/apt.log" 2>&1) || { cat "$tmp/apt.log" >&2; fail "apt-get install failed"; }
getent passwd digestd >/dev/null || fail "the postinst did not create user digestd"
getent group digestd >/dev/null || fail "the postinst did not create group digestd"
for d in /run/digestd /var/lib/digestd; do
  [ "$(stat -c '%U:%G %a' "$d" 2>/dev/null)" = "digestd:digestd 750" ] ||
    fail "$d is $(stat -c '%U:%G %a' "$d" 2>&1), not digestd:digestd 750"
done
/usr/bin/digestd --check-config --config /etc/digestd/digestd.conf
for page in 1:digestctl 5:digestd.conf 8:digestd; do
  man -w "${page%%:*}" "${page#*:}" >/dev/null || fail "man ${page%%:*} ${page#*:} does not resolve"
done
out=$(systemd-analyze verify /usr/lib/systemd/system/digestd.service /usr/lib/systemd/system/digestd.socket 2>&1) ||
  true
[ -z "$out" ] || fail "systemd-analyze verify on the installed units: $out"
echo "user and group digestd, /run/digestd and /var/lib/digestd exist; the config checks; man pages and units verify"

step "the installed digestd as user digestd, socket in /run/digestd"
pg_env=$tmp/pg.env
"$src/scripts/pg-throwaway" start --env-file "$pg_env" >/dev/null
# shellcheck disable=SC1090
. "$pg_env"
sed -e "s|^conninfo = .*|conninfo = \"host=$PGHOST port=$PGPORT user=postgres dbname=digestd\"|" \
  -e 's|^kind = "ollama"|kind = "extractive"|' /etc/digestd/digestd.conf >"$tmp/run.conf"
chmod 644 "$tmp/run.conf"
(cd / && exec runuser -u digestd -- /usr/bin/digestd --config "$tmp/run.conf") 2>"$tmp/digestd.log" &
daemon_pid=$!
gid=$(getent group digestd | cut -d: -f3)
as_member() { setpriv --reuid=65534 --regid=65534 --groups="$gid" -- /usr/bin/digestctl "$@"; }
for _ in $(seq 200); do
  as_member ping >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$tmp/digestd.log" >&2; fail "digestd exited"; }
  sleep 0.05
done
as_member ping >/dev/null || { cat "$tmp/digestd.log" >&2; fail "digestctl ping as a member of group digestd"; }
[ "$(stat -c '%U:%G %a' /run/digestd/control.sock)" = "digestd:digestd 660" ] ||
  fail "the socket is $(stat -c '%U:%G %a' /run/digestd/control.sock)"
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups -- /usr/bin/digestctl ping >/dev/null 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "a user outside group digestd got exit $rc from digestctl ping, not 3"
as_member submit noop --key pkg-test --input '{"sleep_ms":10}' >/dev/null
as_member result pkg-test --wait 10s | grep -q ' done ' || fail "the noop job did not finish"
as_member status | grep -q . || fail "digestctl status printed nothing"
as_member drain >/dev/null
wait "$daemon_pid" || { cat "$tmp/digestd.log" >&2; fail "digestd did not exit 0 after drain"; }
daemon_pid=""
echo "digestd ran as user digestd; a group member's digestctl worked, another user's got exit 3; a job ran; drained"

step "reinstall keeps an edited config; purge removes everything"
echo "# edited by deb_test" >>/etc/digestd/digestd.conf
(cd "$tmp" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall \
  "./$(basename "$deb")" >"$tmp/apt.log" 2>&1) || { cat "$tmp/apt.log" >&2; fail "reinstall failed"; }
grep -q '^# edited by deb_test$' /etc/digestd/digestd.conf || fail "the reinstall overwrote the edited config"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq digestd >"$tmp/apt.log" 2>&1 ||
  { cat "$tmp/apt.log" >&2; fail "apt-get purge failed"; }
installed_here=0
for p in /usr/bin/digestd /etc/digestd /run/digestd /var/lib/digestd /usr/lib/systemd/system/digestd.service; do
  [ ! -e "$p" ] || fail "$p is still there after purge"
done
echo "an edited config survived a reinstall; purge left no file behind"
