#!/usr/bin/env bash
# The README's first command: install what is missing, build, then start a throwaway
# Dovecot seeded from data/demo-mail, popgate in front of it, and run a narrated POP3
# session through popgate. Interactive by default (popgate stays up until Ctrl-C);
# `--non-interactive` (or no terminal on stdin, or CI set) exits by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ -f build-demo/build.ninja ]; then
  meson setup --reconfigure build-demo >/dev/null
else
  meson setup build-demo >/dev/null
fi
meson compile -C build-demo src/popgate:executable tests/popgate-demo:executable >/dev/null

export G_TEST_SRCDIR="$PWD/tests"
export POPGATE_BIN="$PWD/build-demo/src/popgate"
export POPGATE_DEMO_MAIL="$PWD/data/demo-mail"
exec build-demo/tests/popgate-demo "$@"
