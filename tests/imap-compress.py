#!/usr/bin/env python3
"""COMPRESS=DEFLATE (RFC 4978) through popgate with Python's imaplib wrapped in zlib.

usage: imap-compress.py HOST PORT USER PASSWORD UPSTREAM_PORT [POPGATE_PID]
A plain session FETCHes every message; a compressed one (raw deflate, wbits=-15) does
SELECT, the same FETCH (bodies byte-identical), COMPRESS again (NO [COMPRESSIONACTIVE]),
IDLE (a message APPENDed directly upstream is pushed at once) and LOGOUT. Prints the
octets each FETCH took on the wire and "imap-compress: ok". With POPGATE_PID it only
compresses a session, sends popgate SIGTERM and expects popgate's own BYE, compressed.
"""
import os
import signal
import imaplib
import sys
import zlib

# imaplib refuses commands it does not know.
imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


class WireIMAP(imaplib.IMAP4):
    """imaplib with its socket reads counted and, after COMPRESS, (de)compressed."""

    def __init__(self, host, port):
        self.wire_in = 0
        self.buf = b""
        self.inflate = None
        self.deflate = None
        super().__init__(host, int(port), timeout=120)

    def _fill(self):
        data = self.file.read1(65536)
        if not data:
            return False
        self.wire_in += len(data)
        self.buf += self.inflate.decompress(data) if self.inflate else data
        return True

    def read(self, size):
        while len(self.buf) < size and self._fill():
            pass
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def readline(self):
        while b"\n" not in self.buf and self._fill():
            pass
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def send(self, data):
        if self.deflate:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK" and not self.inflate:
            self.inflate = zlib.decompressobj(wbits=-15)
            self.deflate = zlib.compressobj(wbits=-15)
            # Anything already read past the OK was compressed.
            self.buf = self.inflate.decompress(self.buf)
        return typ, data


def fetch_all(imap):
    typ, data = imap.select("INBOX")
    assert typ == "OK", (typ, data)
    before = imap.wire_in
    typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    bodies = [item[1] for item in data if isinstance(item, tuple)]
    return bodies, imap.wire_in - before


def shutdown_bye(host, port, user, password, pid):
    imap = WireIMAP(host, port)
    typ, _ = imap.login(user, password)
    assert typ == "OK", typ
    typ, data = imap.compress()
    assert typ == "OK", (typ, data)
    typ, data = imap.noop()
    assert typ == "OK", (typ, data)
    os.kill(pid, signal.SIGTERM)
    line = imap.readline()
    assert line == b"* BYE Server shutting down.\r\n", line
    print("imap-compress: bye")


def main():
    host, port, user, password, upstream_port = sys.argv[1:6]
    if len(sys.argv) > 6:
        shutdown_bye(host, port, user, password, int(sys.argv[6]))
        return

    plain = WireIMAP(host, port)
    typ, _ = plain.login(user, password)
    assert typ == "OK", typ
    plain_bodies, plain_wire = fetch_all(plain)
    plain.logout()

    imap = WireIMAP(host, port)
    typ, _ = imap.login(user, password)
    assert typ == "OK", typ
    typ, data = imap.capability()
    caps = [c for c in data[0].split() if c.startswith(b"COMPRESS=")]
    assert caps == [b"COMPRESS=DEFLATE"], data
    typ, data = imap.compress()
    assert typ == "OK", (typ, data)
    typ, data = imap.capability()
    assert typ == "OK" and data[0].split().count(b"COMPRESS=DEFLATE") == 1, data
    typ, data = imap.compress()
    assert typ == "NO" and b"[COMPRESSIONACTIVE]" in data[0], (typ, data)
    bodies, wire = fetch_all(imap)
    assert len(bodies) == len(plain_bodies) and len(bodies) >= 2, (len(bodies), len(plain_bodies))
    assert bodies == plain_bodies, "bodies differ inside compression"

    # IDLE inside compression: the push arrives without the client sending anything.
    tag = imap._new_tag().decode()
    imap.send(("%s IDLE\r\n" % tag).encode())
    cont = imap.readline()
    assert cont.startswith(b"+"), cont
    other = imaplib.IMAP4(host, int(upstream_port), timeout=60)
    other.login(user, password)
    other.append("INBOX", None, None, b"Subject: pushed\r\n\r\nwhile idling\r\n")
    other.logout()
    for _ in range(100):
        line = imap.readline()
        assert line, "connection closed while idling"
        if line.rstrip().endswith(b"EXISTS"):
            break
    else:
        raise AssertionError("no EXISTS while idling")
    imap.send(b"DONE\r\n")
    for _ in range(100):
        line = imap.readline()
        if line.startswith(tag.encode()):
            assert line.split()[1] == b"OK", line
            break
    typ, _ = imap.logout()
    assert typ == "BYE", typ
    print("fetch wire octets: plain=%d compressed=%d" % (plain_wire, wire))
    print("imap-compress: ok")


if __name__ == "__main__":
    main()
