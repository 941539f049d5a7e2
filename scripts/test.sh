#!/usr/bin/env bash
# The whole test suite, as the README's second command and CI run it:
# install what is missing, then build and test twice — a normal build with warnings as
# errors, and an ASan+UBSan build of the same suite in its own build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0

run_suite() {
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    rm -rf "$dir"
    meson setup "$dir" "$@" >/dev/null
  fi
  meson compile -C "$dir"
  local rc=0
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" || rc=$?
  # Count from meson's own JSON log so the closing line matches what ran.
  local counts
  counts=$(python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
ok = bad = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("result") in ("OK", "EXPECTEDFAIL"):
        ok += 1
    else:
        bad += 1
print(ok, bad)
PY
)
  # CI shows only the tail of this output: name each failed test there, with the end
  # of its log, so a failure that does not reproduce can still be read.
  python3 - "$dir/meson-logs/testlog.json" <<'PY' >>"$failures"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("result") in ("OK", "EXPECTEDFAIL"):
        continue
    print("---- %s: %s (%s)" % (sys.argv[1].split("/")[0], r.get("name"), r.get("result")))
    out = (r.get("stdout") or "").splitlines()
    print("\n".join(out[-40:]))
PY
  passed=$((passed + ${counts% *}))
  failed=$((failed + ${counts#* }))
  return $rc
}

status=0
failures=$(mktemp)
trap 'rm -f "$failures"' EXIT
echo "== build (werror) and tests"
run_suite build-test --werror -Dbuildtype=debugoptimized || status=1
echo "== ASan+UBSan build and tests"
run_suite build-asan --werror -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false || status=1

if [ -s "$failures" ]; then
  echo "== failed tests, last lines of each log"
  cat "$failures"
fi
echo "popgate: $passed passed, $failed failed"
exit $status
