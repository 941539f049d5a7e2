#!/usr/bin/env bash
# The benchmark in one command (issue 7): install what is missing, build an optimised
# popgate and the load generator in build-bench/, then start an upstream Dovecot, popgate
# and Dovecot's POP3-over-imapc gateway, measure, and write bench/results/RESULTS.md.
# Runs as root (the Dovecot instances drop privileges themselves); roughly 20 minutes on
# 2 cores with the defaults. Arguments go to popgate-bench (try --help, or --smoke);
# --scale 10000 runs only the 10,000-idle-session scenario (see bench/README.md).
#
# SPDX-License-Identifier: GPL-3.0-or-later
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

if [ -f build-bench/build.ninja ]; then
  meson setup --reconfigure build-bench --buildtype=release >/dev/null
else
  meson setup build-bench --buildtype=release >/dev/null
fi
ninja -C build-bench src/popgate bench/popgate-bench
exec build-bench/bench/popgate-bench "$@"
