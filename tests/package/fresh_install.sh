#!/usr/bin/env bash
# Tries the README's "Install on a home server" on a fresh Debian 12: builds a
# bookworm root file system with debootstrap, boots it with systemd-nspawn
# and runs steps 2-8 inside, as root, the way the README writes them: install
# the .deb, create the PostgreSQL role and database, check the config, enable
# and start the units, let a user in group digestd run digestctl, submit a
# job and wait for it, turn on [metrics] listen and check through the HTTP
# API of Debian's Prometheus that it scrapes the installed digestd. Then
# checks that the journal finds a job's lines by JOB_KEY.
#
# Not run by CI or scripts/test: it needs root, debootstrap and
# systemd-nspawn (apt-get install debootstrap systemd-container), a Debian
# mirror, and a few minutes. Ollama is the fake from the build (target
# fake_ollama), started here on 127.0.0.1:11434.
#
#   sudo tests/package/fresh_install.sh DEB FAKE_OLLAMA [MIRROR]
#
#   DEB          digestd_VERSION_ARCH.deb (scripts/package OUTDIR prints it)
#   FAKE_OLLAMA  build/tests/support/fake_ollama/fake_ollama
#   MIRROR       Debian mirror for debootstrap and apt in the machine
#                (default http://deb.debian.org/debian)
#
# The machine shares this host's network (so it reaches the fake and its
# mirror), which means ports 5432, 9090, 9464 and 11434 on 127.0.0.1 must be
# free here. FRESH_KEEP=1 leaves the machine running and its root file system
# in place (the last lines say how to enter and remove it).
# FRESH_CACHE=FILE.tar saves the debootstrapped tree there the first time and
# starts from it afterwards, which saves the download. Exits 0 when
# every step passed; each step prints what it ran and the lines that matter.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '16,21p' "$0" >&2; exit 2; }
deb=$(realpath "$1") fake=$(realpath "$2") mirror=${3:-http://deb.debian.org/debian}
[ "$(id -u)" = 0 ] || { echo "fresh_install.sh: run it as root (debootstrap, nspawn)" >&2; exit 2; }
for tool in debootstrap systemd-nspawn nsenter curl ss; do
  command -v "$tool" >/dev/null ||
    { echo "fresh_install.sh: $tool is missing; apt-get install debootstrap systemd-container curl" >&2; exit 2; }
done
for port in 5432 9090 9464 11434; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "fresh_install.sh: port $port is in use on this host; the machine shares its network" >&2
    exit 2
  fi
done

root=$(mktemp -d /var/tmp/digestd-fresh.XXXXXX)
chmod 0755 "$root"  # the machine's /: mktemp made it 0700, which locks out its system users
nspawn_pid="" fake_pid=""
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo; echo "=== $*"; }
cleanup() {
  if [ "${FRESH_KEEP:-0}" = 1 ] && [ -n "$nspawn_pid" ]; then
    echo "kept: the machine runs as nspawn pid $nspawn_pid, root $root"
    echo "  the fake Ollama runs as pid $fake_pid (kill $fake_pid)"
    echo "  enter: nsenter -t $(leader) -a /bin/bash -l"
    echo "  stop:  kill -RTMIN+4 $(leader); then rm -rf $root"
    return
  fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -RTMIN+4 "$(leader)" 2>/dev/null || true  # systemd: power off
    for _ in $(seq 60); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  if [ -n "$fake_pid" ]; then kill "$fake_pid" 2>/dev/null || true; fi
  rm -rf "$root"
}
trap cleanup EXIT
# The machine's PID 1 (systemd), a child of systemd-nspawn.
leader() { pgrep -P "$nspawn_pid" | head -1; }
# Runs a shell command line inside the machine as root, with a login-like
# environment.
in_machine() {
  nsenter -t "$(leader)" -a -- /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/bash -c "cd /root && $1"
}
# Polls a command inside the machine until it succeeds or `secs` pass.
wait_in_machine() {
  local secs=$1 what=$2
  for _ in $(seq "$secs"); do
    in_machine "$what" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

if [ -n "${FRESH_CACHE:-}" ] && [ -f "$FRESH_CACHE" ]; then
  step "a fresh bookworm tree from $FRESH_CACHE"
  tar -xpf "$FRESH_CACHE" -C "$root"
  chmod 0755 "$root"
else
  step "debootstrap bookworm from $mirror into $root"
  debootstrap --include=dbus,systemd-sysv bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log" >&2; rm -f "$root.debootstrap.log"; fail "debootstrap failed"; }
  rm -f "$root.debootstrap.log"
  if [ -n "${FRESH_CACHE:-}" ]; then tar -cpf "$FRESH_CACHE" -C "$root" .; fi
fi
echo fresh >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 fresh\n' >"$root/etc/hosts"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
EOF
mkdir -p "$root/root/debs"
cp "$deb" "$root/root/debs/"
debname=$(basename "$deb")

step "boot it: systemd-nspawn -b (host network)"
# --register=no --keep-unit: no machined or system bus needed on the host.
systemd-nspawn -D "$root" -M digestd-fresh --register=no --keep-unit -b \
  >"$root/root/nspawn-console.log" 2>&1 </dev/null &
nspawn_pid=$!
for _ in $(seq 60); do [ -n "$(leader)" ] && break; sleep 1; done
wait_in_machine 300 'systemctl is-system-running | grep -qE "running|degraded"' ||
  fail "the machine did not finish booting in 300 s: $(in_machine 'systemctl is-system-running; systemctl list-jobs --no-pager' 2>&1)"
in_machine 'systemctl is-system-running || true; head -1 /etc/os-release'

step "fake Ollama on 127.0.0.1:11434"
"$fake" --port 11434 >/dev/null 2>&1 &
fake_pid=$!
wait_in_machine 30 'exec 3<>/dev/tcp/127.0.0.1/11434' || fail "the fake Ollama does not listen"

step "README preamble: apt install sudo curl"
in_machine 'apt-get update -qq && apt-get install -y -qq sudo curl >/dev/null' || fail "apt-get install sudo curl"

step "README step 2: apt install ./$debname"
in_machine "cd ~/debs && apt install -y ./$debname 2>&1 | grep -E 'digestd|user|group|rror'" ||
  fail "apt install ./$debname"
in_machine 'id digestd && ls -ld /run/digestd /var/lib/digestd /etc/digestd/digestd.conf' ||
  fail "the package did not create the user and directories"

step "README step 3: the database"
in_machine 'apt-get install -y -qq postgresql >/dev/null' || fail "apt install postgresql"
in_machine "sudo -u postgres psql -c 'CREATE ROLE digestd LOGIN' -c 'CREATE DATABASE digestd OWNER digestd'" ||
  fail "creating the role and database"
in_machine "sudo -u digestd psql 'postgresql:///digestd?host=/run/postgresql' -c 'SELECT current_user'" |
  grep -q digestd || fail "psql as digestd"
out=$(in_machine 'sudo -u digestd digestd --config /etc/digestd/digestd.conf --migrate-only 2>&1') ||
  fail "--migrate-only: $out"
echo "$out"
grep -q "schema digestd is at version" <<<"$out" || fail "--migrate-only did not report the schema version"

step "README step 4: --check-config"
in_machine 'sudo digestd --config /etc/digestd/digestd.conf --check-config' || fail "--check-config"

step "README step 5: enable and start"
in_machine 'sudo systemctl enable --now digestd.socket digestd.service' || fail "systemctl enable --now"
wait_in_machine 30 'systemctl is-active digestd' || fail "digestd is not active: $(in_machine 'journalctl -u digestd -b --no-pager | tail -20')"
in_machine 'systemctl status digestd --no-pager | grep -E "Active|Status"'

step "README steps 6 and 7: a user in group digestd"
in_machine 'useradd -m appuser && sudo usermod -aG digestd appuser' || fail "useradd/usermod"
in_machine "su - appuser -c 'digestctl status'" | tee "$root/root/status.txt" || fail "digestctl status as appuser"
grep -qE '^backend .* up +breaker closed' "$root/root/status.txt" || fail "status has no backend up, breaker closed line"
grep -qE '^db +up' "$root/root/status.txt" || fail "status has no db up line"
in_machine "su - appuser -c \"digestctl submit summarize --key test:1 --input '{\\\"text\\\":\\\"Ada opened the ledger. The keeper watched.\\\"}'\"" ||
  fail "digestctl submit"
out=$(in_machine "su - appuser -c 'digestctl result test:1 --wait 60s'") || fail "digestctl result: $out"
echo "$out"
head -1 <<<"$out" | grep -q 'test:1  summarize  done' || fail "test:1 did not finish done"

step "README step 8: Prometheus scrapes /metrics"
in_machine "sed -i 's/^listen = \"\"/listen = \"127.0.0.1:9464\"/' /etc/digestd/digestd.conf && grep -n '^listen' /etc/digestd/digestd.conf" ||
  fail "setting [metrics] listen"
in_machine 'sudo digestd --config /etc/digestd/digestd.conf --check-config && sudo systemctl restart digestd' ||
  fail "restart with [metrics] listen"
in_machine 'apt-get install -y -qq --no-install-recommends prometheus >/dev/null' || fail "apt install prometheus"
cat >>"$root/etc/prometheus/prometheus.yml" <<'EOF'

  - job_name: digestd
    static_configs:
      - targets: ['127.0.0.1:9464']
EOF
in_machine 'promtool check config /etc/prometheus/prometheus.yml && sudo systemctl reload prometheus' ||
  fail "prometheus config"
query='curl -s -G http://127.0.0.1:9090/api/v1/query --data-urlencode '\''query=up{job="digestd"}'\'''
wait_in_machine 90 "$query | grep -q '\"1\"\]'" || fail "Prometheus does not see digestd up: $(in_machine "$query")"
in_machine "$query"; echo
in_machine 'curl -s "http://127.0.0.1:9090/api/v1/targets?scrapePool=digestd"' | grep -o '"health":"[a-z]*"'

step "journald: a job's lines by JOB_KEY (at [log] level debug)"
in_machine "sed -i 's/^level = \"info\"/level = \"debug\"/' /etc/digestd/digestd.conf && digestctl reload >/dev/null" ||
  fail "reload with level debug"
in_machine "su - appuser -c \"digestctl submit summarize --key book:7/ch:3 --input '{\\\"text\\\":\\\"Ada opened the ledger.\\\"}' >/dev/null && digestctl result book:7/ch:3 --wait 60s >/dev/null\"" ||
  fail "submit book:7/ch:3"
wait_in_machine 10 'journalctl -u digestd JOB_KEY=book:7/ch:3 --no-pager | grep -q "ended done"' ||
  fail "journalctl -u digestd JOB_KEY=book:7/ch:3 finds no 'ended done' line"
in_machine 'journalctl -u digestd JOB_KEY=book:7/ch:3 --no-pager -o cat'

echo
echo "fresh install: every step passed"
