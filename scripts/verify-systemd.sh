#!/usr/bin/env bash
# Walk the README's "Running as a service" through a real systemd: a Debian 12 container
# (debootstrap, cached) booted with systemd-nspawn, popgate built with --prefix=/usr and
# installed into it, a throwaway Dovecot upstream on the host's 127.0.0.1. Checks: the
# unit starts (ExecStartPre --check), serves, reloads, refuses a broken reload and keeps
# running, applies a QUIT during `systemctl stop`, socket activation on 110/995 with the
# TLS key as a LoadCredential, a ListenStream drop-in, and root's --check afterwards.
#
# Not part of CI (it downloads a Debian base system once, and needs root and nspawn).
# Usage, as root:  bash scripts/verify-systemd.sh
# SPDX-License-Identifier: GPL-3.0-or-later
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${POPGATE_NSPAWN_CACHE:-/var/cache/popgate-nspawn}
BASE=$CACHE/bookworm
WORK=$(mktemp -d /tmp/popgate-systemd-XXXXXX)
ROOT=$WORK/root
UP=$WORK/upstream
NSPAWN_PID=
DOVECOT_PID=
fails=0

cleanup() {
  set +e
  [ -z "$DOVECOT_PID" ] && [ -s "$UP/run/master.pid" ] && DOVECOT_PID=$(cat "$UP/run/master.pid")
  [ -n "$NSPAWN_PID" ] && kill "$NSPAWN_PID" 2>/dev/null && wait "$NSPAWN_PID" 2>/dev/null
  [ -n "$DOVECOT_PID" ] && kill "$DOVECOT_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
expect() { # expect DESCRIPTION COMMAND... : the command must succeed
  local what=$1; shift
  if "$@" > "$WORK/last.out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' "$WORK/last.out"; fi
}
refuse() { # refuse DESCRIPTION COMMAND... : the command must fail
  local what=$1; shift
  if "$@" > "$WORK/last.out" 2>&1; then bad "$what"; else ok "$what"; fi
}

export DEBIAN_FRONTEND=noninteractive
command -v systemd-nspawn > /dev/null && command -v debootstrap > /dev/null \
  || apt-get install -y --no-install-recommends systemd-container debootstrap > /dev/null

if [ ! -x "$BASE/usr/lib/systemd/systemd" ]; then
  echo "== debootstrap into $BASE (once)"
  rm -rf "$BASE"; mkdir -p "$CACHE"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps \
    bookworm "$BASE" http://deb.debian.org/debian > "$CACHE/debootstrap.log"
  cp /etc/resolv.conf "$BASE/etc/resolv.conf"
  chroot "$BASE" apt-get update > /dev/null
  chroot "$BASE" apt-get install -y --no-install-recommends libglib2.0-0 glib-networking \
    libgnutls30 libsoup-3.0-0 libjson-glib-1.0-0 dbus-user-session libpam-systemd > /dev/null
  echo pgtest > "$BASE/etc/hostname"
fi
echo "== copy the base system"
cp -a "$BASE" "$ROOT"

echo "== build with --prefix=/usr and install into the container"
# The build directory is kept in the cache so that a second run only recompiles changes.
BUILD=$CACHE/build
[ -f "$BUILD/build.ninja" ] \
  || meson setup "$BUILD" "$SRC" --prefix=/usr -Dbuildtype=debugoptimized > "$WORK/setup.log"
ninja -C "$BUILD" > "$WORK/build.log"
DESTDIR=$ROOT meson install -C "$BUILD" > "$WORK/install.log"

echo "== a throwaway Dovecot upstream on 127.0.0.1"
mkdir -p "$UP"/{run,state,log} "$UP/mail/alice/Maildir"/{cur,new,tmp}
chmod 755 "$WORK" "$UP" # the mail user (nobody) walks into $UP/mail
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$UP/key.pem" -out "$UP/cert.pem" -days 2 \
  -subj /CN=localhost 2> /dev/null
echo "alice:{PLAIN}upsecret" > "$UP/passwd"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
IMAPS=$(port)
cat > "$UP/dovecot.conf" << EOF
instance_name = popgate-systemd-up
base_dir = $UP/run
state_dir = $UP/state
listen = 127.0.0.1
protocols = imap
log_path = $UP/log/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
ssl = required
ssl_cert = <$UP/cert.pem
ssl_key = <$UP/key.pem
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $UP/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$UP/mail/%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS
    ssl = yes
  }
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
for i in 1 2 3; do
  printf 'From: a@example.org\r\nSubject: m%s\r\nMessage-ID: <m%s@x>\r\n\r\nbody %s\r\n' \
    "$i" "$i" "$i" > "$UP/mail/alice/Maildir/new/100$i.M1P1.host"
done
chown -R nobody:nogroup "$UP/mail"
dovecot -c "$UP/dovecot.conf"
for _ in $(seq 100); do [ -s "$UP/run/master.pid" ] && break; sleep 0.1; done
DOVECOT_PID=$(cat "$UP/run/master.pid")

echo "== configure popgate as the README says"
install -d "$ROOT/etc/popgate"
cp "$ROOT/usr/share/doc/popgate/popgate.conf.example" "$ROOT/etc/popgate/popgate.conf"
cp "$UP/cert.pem" "$ROOT/etc/popgate/upstream-ca.pem"
sed -i "s|^host = imap.example.com|host = localhost\nport = $IMAPS\nca_file = /etc/popgate/upstream-ca.pem|" \
  "$ROOT/etc/popgate/popgate.conf"

echo "== boot the container"
systemd-nspawn -D "$ROOT" -b --register=no --keep-unit --machine=pgtest \
  > "$WORK/console.log" 2>&1 < /dev/null &
NSPAWN_PID=$!
INIT=
for _ in $(seq 100); do
  INIT=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
  [ -n "$INIT" ] && nsenter -t "$INIT" -a systemctl is-system-running --wait > /dev/null 2>&1 && break
  sleep 0.3
done
[ -n "$INIT" ] || { cat "$WORK/console.log"; echo "FAIL the container did not boot"; exit 1; }
C() { nsenter -t "$INIT" -a "$@"; }
pop3() { # pop3 PORT [tls]: log in as alice, print STAT
  python3 - "$@" << 'EOF'
import poplib, ssl, sys
port = int(sys.argv[1])
if len(sys.argv) > 2:
    p = poplib.POP3_SSL("localhost", port, timeout=20,
                        context=ssl.create_default_context(cafile=sys.argv[2]))
else:
    p = poplib.POP3("127.0.0.1", port, timeout=20)
p.user("alice"); p.pass_("upsecret"); print(p.stat()); p.quit()
EOF
}

expect "--check passes on the edited example" C popgate --config /etc/popgate/popgate.conf --check
expect "systemctl enable --now popgate.service" C systemctl enable --now popgate.service
expect "a POP3 login through the service" pop3 1110
expect "systemctl reload popgate" C systemctl reload popgate
C cp /etc/popgate/popgate.conf /etc/popgate/good.conf
echo "bogus_key = 1" >> "$ROOT/etc/popgate/popgate.conf"
refuse "a broken config fails the reload" C systemctl reload popgate
expect "... and the old config keeps running" C systemctl is-active popgate
expect "... and the journal names the key" \
  sh -c "nsenter -t $INIT -a journalctl -u popgate --no-pager | grep -q 'bogus_key: unknown key'"
C cp /etc/popgate/good.conf /etc/popgate/popgate.conf

# DELE 3, then QUIT while `systemctl stop` waits for the session.
python3 - "$WORK/ready" > "$WORK/quit.out" << 'EOF' &
import poplib, sys, time
p = poplib.POP3("127.0.0.1", 1110, timeout=30)
p.user("alice"); p.pass_("upsecret"); p.dele(3)
open(sys.argv[1], "w").close()
time.sleep(3)
print(p.quit())
EOF
QUITTER=$!
for _ in $(seq 100); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
C systemctl stop popgate
wait "$QUITTER" || true
expect "a QUIT during stop is answered +OK" grep -q "+OK" "$WORK/quit.out"
expect "... and applied upstream (2 messages left)" python3 -c "
import imaplib, sys, re
m = imaplib.IMAP4_SSL('localhost', $IMAPS, ssl_context=__import__('ssl').create_default_context(cafile='$UP/cert.pem'))
m.login('alice', 'upsecret'); typ, n = m.select('INBOX'); m.logout(); sys.exit(0 if n[0] == b'2' else 1)"

echo "== socket activation with the key as a credential"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$ROOT/etc/popgate/key.pem" \
  -out "$ROOT/etc/popgate/cert.pem" -days 2 -subj /CN=localhost 2> /dev/null
chmod 600 "$ROOT/etc/popgate/key.pem"
sed -i 's|^#cert = /etc/popgate/cert.pem|cert = /etc/popgate/cert.pem|;
        s|^#key = /etc/popgate/key.pem|key = /run/credentials/popgate.service/key.pem|' \
  "$ROOT/etc/popgate/popgate.conf"
mkdir -p "$ROOT/etc/systemd/system/popgate.service.d"
printf '[Service]\nLoadCredential=key.pem:/etc/popgate/key.pem\n' \
  > "$ROOT/etc/systemd/system/popgate.service.d/credential.conf"
C systemctl daemon-reload
C systemctl disable popgate.service > /dev/null 2>&1
expect "systemctl enable --now popgate.socket popgate-pop3s.socket" \
  C systemctl enable --now popgate.socket popgate-pop3s.socket
expect "POP3 on 110 starts the service" pop3 110
expect "POP3S on 995 with the credential key" pop3 995 "$ROOT/etc/popgate/cert.pem"
expect "the log says the socket replaces [pop3] listen" \
  sh -c "nsenter -t $INIT -a journalctl -u popgate --no-pager | grep -q 'the config.s \[pop3\] listen is not used'"
expect "root's --check after the service ran (state owned by the dynamic user)" \
  C popgate --config /etc/popgate/popgate.conf --check
mkdir -p "$ROOT/etc/systemd/system/popgate.socket.d"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:2110\n' \
  > "$ROOT/etc/systemd/system/popgate.socket.d/address.conf"
C systemctl daemon-reload
C systemctl stop popgate.service popgate.socket popgate-pop3s.socket
C systemctl start popgate.socket popgate-pop3s.socket
expect "a ListenStream drop-in moves the socket" pop3 2110
expect "systemd-analyze security popgate.service scores OK" \
  sh -c "nsenter -t $INIT -a systemd-analyze security popgate.service --no-pager | grep -q 'Overall exposure level for popgate.service: [0-2]\.'"

echo "== $fails failed"
[ "$fails" -eq 0 ]
