#!/usr/bin/env bash
# The README's first command: install what is missing, build, then start a throwaway
# Dovecot seeded from data/demo-mail, two popgates in front of it (delete = expunge and
# keep), and show POP3 and IMAP side by side: an IMAP IDLE seeing a POP3 DELE+QUIT's
# EXPUNGE, client tags under keep, popgate's audit trace, and an old POP3 client with a
# local password in front of an OAuth2-only account (a local Authlib authorization server). Interactive by default
# (popgate stays up until Ctrl-C);
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
