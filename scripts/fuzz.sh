#!/usr/bin/env bash
# Fuzz every target under libFuzzer for MINUTES minutes each (default 10).
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]
#
# Builds build-fuzz with clang, -Dfuzzing=true and ASan+UBSan; each target starts from its
# seeds in tests/fuzz/corpus/<target> (never written to: new inputs go to
# build-fuzz/corpus/<target>), and crashes land in build-fuzz/crashes/<target>/. Turn each
# crash into a regression seed (copy it into tests/fuzz/corpus/<target>/) and fix it.
# Ends with one line per target: minutes, executions and crashes; exit 1 if any crashed.
#
# SPDX-License-Identifier: GPL-3.0-or-later
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
shift || true
build=build-fuzz

if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure "$build" >/dev/null
else
  CC=clang meson setup "$build" -Dfuzzing=true -Dbuildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
meson compile -C "$build" >/dev/null

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for dir in tests/fuzz/corpus/*/; do
    targets+=("$(basename "$dir")")
  done
fi

summary=()
status=0
for target in "${targets[@]}"; do
  exe="$build/tests/fuzz/fuzz-$target"
  [ -x "$exe" ] || { echo "fuzz.sh: no target $exe" >&2; exit 2; }
  work="$build/corpus/$target"
  crashes="$build/crashes/$target"
  mkdir -p "$work" "$crashes"
  log="$build/fuzz-$target.log"
  echo "== fuzz-$target for $minutes min"
  # -fork keeps fuzzing after a crash so one run reports them all; each crash is saved.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
    "$exe" -max_total_time=$((minutes * 60)) -timeout=10 -rss_limit_mb=2048 \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -artifact_prefix="$crashes/" "$work" "tests/fuzz/corpus/$target" >"$log" 2>&1 || true
  n_crashes=$(find "$crashes" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  execs=$(grep -oE 'exec/s:? [0-9]+' "$log" | tail -1 || true)
  total=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  summary+=("fuzz-$target: $minutes min, ${total:-?} runs (${execs:-?}), $n_crashes crashes")
  [ "$n_crashes" -eq 0 ] || status=1
done

echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
