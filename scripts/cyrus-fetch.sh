#!/bin/sh
# Unpack Debian's Cyrus IMAP (cyrus-imapd + cyrus-common) into a cache directory for the
# `cyrus` integration test (tests/pg-test-cyrus.c), without installing it: the package
# conflicts with dovecot-imapd, which the other tests need. Its libraries come from
# deps.sh's PACKAGES; this only fetches the two packages themselves, once (a tree that is
# already unpacked is left alone and the network is not touched).
#
# Usage: scripts/cyrus-fetch.sh [DIR]   (default /var/cache/popgate-test/cyrus; the test
# reads PG_TEST_CYRUS_ROOT, with the same default)
#
# SPDX-License-Identifier: GPL-3.0-or-later
set -eu

dir=${1:-${PG_TEST_CYRUS_ROOT:-/var/cache/popgate-test/cyrus}}
master="$dir/usr/lib/cyrus/bin/master"

if [ -x "$master" ]; then
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/popgate-cyrus-fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
# A machine whose package lists are older than the archive's current version: update once.
if ! (cd "$work" && apt-get download cyrus-imapd cyrus-common); then
  apt-get update
  (cd "$work" && apt-get download cyrus-imapd cyrus-common)
fi
mkdir -p "$work/root"
for deb in "$work"/cyrus-imapd_*.deb "$work"/cyrus-common_*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
if [ ! -x "$work/root/usr/lib/cyrus/bin/master" ]; then
  echo "cyrus-fetch.sh: no usr/lib/cyrus/bin/master in the unpacked packages" >&2
  exit 1
fi
# Only a complete tree takes the final name, so a half-done run is redone next time.
mkdir -p "$(dirname "$dir")"
rm -rf "$dir"
mv "$work/root" "$dir"
echo "cyrus-fetch.sh: Cyrus IMAP unpacked into $dir"
