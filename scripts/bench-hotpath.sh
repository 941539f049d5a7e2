#!/usr/bin/env bash
# Per-message cost of one benchmark path, in figures that stay repeatable on a loaded
# machine (issue 16): popgate's instructions (callgrind) or its syscalls (strace -c -f),
# and the load generator's socket reads. Runs popgate-bench at K = 1 twice, with N1 and
# N2 small messages (no large ones, no idle or 100 MB case), and prints the difference
# divided by the extra messages, so logins, SELECTs and start-up cancel out. Every run
# downloads the mailbox twice through the path (the warm-up and the measured session).
#
#   bash scripts/bench-hotpath.sh PATH callgrind|strace [N1 N2]
#   PATH: a --paths key of popgate-bench (pop3, pop3-pipelined, relay-each, relay, ...)
#
# PG_HOTPATH_STRACE="-k -e trace=write" traces with stacks instead of counting (read the
# files it keeps with PG_HOTPATH_KEEP=1). Builds build-bench/ as scripts/bench.sh does. Runs as root (the Dovecots need it).
#
# SPDX-License-Identifier: GPL-3.0-or-later
set -euo pipefail
cd "$(dirname "$0")/.."

path=${1:?path}
tool=${2:?tool: callgrind or strace}
n1=${3:-200}
n2=${4:-1000}

if [ ! -f build-bench/build.ninja ]; then
  meson setup build-bench --buildtype=release >/dev/null
fi
if [ -z "${POPGATE_REAL:-}" ]; then
  ninja -C build-bench src/popgate bench/popgate-bench >/dev/null
fi

work=$(mktemp -d /tmp/popgate-hotpath-XXXXXX)
[ -n "${PG_HOTPATH_KEEP:-}" ] && echo "keeping $work" || trap 'rm -rf "$work"' EXIT
# POPGATE_REAL: measure another popgate binary (a build of the commit before a change).
real=${POPGATE_REAL:-$PWD/build-bench/src/popgate}
cat >"$work/popgate" <<EOF
#!/bin/sh
case "$tool" in
  callgrind) exec valgrind -q --tool=callgrind --callgrind-out-file="\$PG_HOTPATH_OUT" "$real" "\$@" ;;
  strace)
    # strace does not pass its SIGTERM on to a program it started: attach to popgate
    # instead, and pass the bench's SIGTERM on by hand.
    "$real" "\$@" &
    pid=\$!
    strace -f \${PG_HOTPATH_STRACE:--c} -p "\$pid" -o "\$PG_HOTPATH_OUT" &
    tracer=\$!
    trap 'kill -TERM \$pid' TERM INT
    wait \$pid || wait \$pid
    wait \$tracer ;;
esac
EOF
chmod +x "$work/popgate"

run() {
  local n=$1
  PG_HOTPATH_OUT="$work/$tool.$n" POPGATE_BIN="$work/popgate" \
    strace -c -e trace=read,recvfrom,recvmsg,readv -o "$work/loadgen.$n" \
    build-bench/bench/popgate-bench --paths="$path" --k=1 --reps=1 --messages="$n" \
    --large-mb= --huge-mb=0 --idle-sessions=0 --output="$work/RESULTS.$n.md" \
    >"$work/bench.$n.log" 2>&1 || { cat "$work/bench.$n.log"; exit 1; }
  grep -E "rep 1:" "$work/bench.$n.log" | sed 's/^ */  /' \
    || { echo "the path did not run:"; cat "$work/bench.$n.log"; exit 1; }
}

calls() { # the count of syscall $2 in the strace -c table $1 (0 if absent)
  awk -v s="$2" '$NF == s { n = $4 } END { print n + 0 }' "$1"
}

echo "popgate-bench --paths=$path, K=1, N=$n1 then N=$n2 messages of 10 KB ($tool)"
run "$n1"
run "$n2"
extra=$(( 2 * (n2 - n1) ))
echo "per message (difference over $extra messages):"
if [ "$tool" = callgrind ]; then
  a=$(sed -n 's/^summary: *//p' "$work/callgrind.$n1")
  b=$(sed -n 's/^summary: *//p' "$work/callgrind.$n2")
  echo "  popgate instructions: $(( (b - a) / extra ))"
else
  for s in $(awk 'NR > 2 && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" { print $NF }' "$work/strace.$n2"); do
    a=$(calls "$work/strace.$n1" "$s"); b=$(calls "$work/strace.$n2" "$s")
    per=$(echo "($b - $a) / $extra" | bc -l)
    # Start-up and shutdown syscalls differ a little between runs: show what scales.
    [ "$(echo "$per >= 0.05 || $per <= -0.05" | bc -l)" = 1 ] && printf '  popgate %-16s %6.2f\n' "$s" "$per"
  done
fi
# Only socket reads: the bench's read()s are mostly /proc and files, and vary run to run.
for s in recvfrom recvmsg readv; do
  a=$(calls "$work/loadgen.$n1" "$s"); b=$(calls "$work/loadgen.$n2" "$s")
  [ "$a$b" = 00 ] || printf '  load generator %-9s %6.2f\n' "$s" "$(echo "($b - $a) / $extra" | bc -l)"
done
