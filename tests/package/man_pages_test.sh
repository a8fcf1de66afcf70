#!/usr/bin/env bash
# The man pages say what the programs and the config file do:
#   - groff formats each page without a warning (groff -man -ww);
#   - every --option in `digestd --help` and `digestctl --help`, and every
#     digestctl command, appears in digestd(8) or digestctl(1);
#   - digestd.conf(5) has an entry ".B key = default" under ".SS [section]"
#     for exactly the keys of conf/digestd.conf, with the same default (a
#     default shown as "text ..." must start the real one).
#
#   man_pages_test.sh SOURCE_DIR DIGESTD_BIN DIGESTCTL_BIN
set -euo pipefail
src=$1 digestd=$2 digestctl=$3
fail=0
bad() {
  echo "FAIL: $*" >&2
  fail=1
}

for page in "$src"/man/*.[0-9]; do
  out=$(groff -man -Tutf8 -ww -z "$page" 2>&1) || bad "groff failed on $page"
  [ -z "$out" ] || bad "groff warns about $page: $out"
done

# Options from the usage texts (an option written \-\-name in roff).
check_options() {  # page, help text
  local page=$1 opt
  for opt in $(grep -o -- '--[a-z][a-z-]*' <<<"$2" | sort -u); do
    grep -qF -- "${opt//-/\\-}" "$page" || bad "$(basename "$page") does not mention $opt"
  done
}
check_options "$src/man/digestd.8" "$("$digestd" --help)"
ctl_help=$("$digestctl" --help)
check_options "$src/man/digestctl.1" "$ctl_help"
for cmd in $(sed -n '/^commands:/,/^$/p' <<<"$ctl_help" | awk 'NR > 1 && $1 ~ /^[a-z]+$/ { print $1 }' | sort -u); do
  grep -qE "^\.(B|BR|BI) \"?$cmd\b|\\\\fB$cmd\b" "$src/man/digestctl.1" ||
    bad "digestctl.1 has no entry for the command $cmd"
done

# Keys and defaults: "[section] key = value", one per line, from each file.
conf_keys() {
  awk '/^\[[a-z_]+\]$/ { s = $0; next }
       s != "" && /^[a-z_]+ = / { print s " " $0 }' "$src/conf/digestd.conf"
}
man_keys() {
  awk '/^\.SS "\[[a-z_]+\]"$/ { s = $2; gsub(/"/, "", s); next }
       s != "" && /^\.B [a-z_]+ = / { sub(/^\.B /, ""); print s " " $0 }' \
    "$src/man/digestd.conf.5" |
    sed -e 's/\\(dq/"/g' -e 's/\\-/-/g' -e 's/\\e/\\/g' -e 's/\\~/ /g'
}
declare -A want have
while IFS= read -r line; do want[${line%% = *}]=${line#* = }; done < <(conf_keys)
while IFS= read -r line; do have[${line%% = *}]=${line#* = }; done < <(man_keys)
[ "${#want[@]}" -gt 50 ] || bad "found only ${#want[@]} keys in conf/digestd.conf"
for k in "${!want[@]}"; do
  if [ -z "${have[$k]+x}" ]; then
    bad "digestd.conf.5 has no entry for $k"
  elif [ "${have[$k]}" != "${want[$k]}" ]; then
    shown=${have[$k]}
    if [[ $shown == *' ..."' ]] && [[ ${want[$k]} == "${shown% ...\"}"* ]]; then continue; fi
    bad "digestd.conf.5 shows $k = $shown, conf/digestd.conf has ${want[$k]}"
  fi
done
for k in "${!have[@]}"; do
  [ -n "${want[$k]+x}" ] || bad "digestd.conf.5 documents $k, which conf/digestd.conf does not have"
done

[ "$fail" = 0 ] && echo "man pages: ${#want[@]} config keys, options and commands documented"
exit "$fail"
