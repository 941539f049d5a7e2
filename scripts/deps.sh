#!/bin/sh
# Install every Debian package popgate's build and tests need, only if something is
# missing (idempotent: a second run installs nothing and does not touch the network).
# Dovecot is only a test upstream: the tests start their own instances by PID; the
# system service must not run (and is never started here).
#
# SPDX-License-Identifier: GPL-3.0-or-later
set -eu

PACKAGES="meson ninja-build pkg-config gcc libglib2.0-dev glib-networking libgnutls28-dev
gnutls-bin dovecot-imapd dovecot-pop3d python3 clang libclang-rt-14-dev
libsystemd-dev systemd scdoc libsoup-3.0-dev haproxy libjson-glib-dev
python3-authlib python3-flask chromium python3-prometheus-client mailutils-imap4d openssl
libical3 libxapian30 sasl2-bin"

missing=""
for pkg in $PACKAGES; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  case "$status" in
    *"ok installed"*) ;;
    *) missing="$missing $pkg" ;;
  esac
done

if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing:$missing (run as root to install)" >&2
    exit 1
  fi
  # Keep package scripts from starting dovecot.service while installing, unless a
  # policy is already in place (then leave it alone).
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=yes
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # shellcheck disable=SC2086
  apt-get install -y --no-install-recommends $missing
  if [ -n "$policy_added" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
fi

# The system service must not run: tests bind their own ports and a system Dovecot on
# 143/993/110/995 only confuses things. Stop it if some package script started it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
  systemctl stop dovecot
  systemctl disable dovecot >/dev/null 2>&1 || true
elif [ -f /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
  kill -TERM "$(cat /run/dovecot/master.pid)"
fi

# The same for GNU mailutils imap4d (tests/pg-test-imap4d.c runs its own on 127.0.0.1);
# its package enables a unit that would listen on port 143 of every interface.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet mailutils-imap4d 2>/dev/null; then
  systemctl disable --now mailutils-imap4d >/dev/null 2>&1 || true
fi

# Cyrus IMAP, the third test upstream, conflicts with dovecot-imapd as a package: its
# two packages are unpacked into a cache dir instead (their libraries, libical3 and
# libxapian30, and sasl2-bin's saslpasswd2 for the test's sasldb are in PACKAGES above).
"$(dirname "$0")/cyrus-fetch.sh"

echo "deps.sh: all build and test packages are installed"
