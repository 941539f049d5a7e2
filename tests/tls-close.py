#!/usr/bin/env python3
"""Check that popgate ends a TLS session with a close_notify (a clean TLS shutdown).

usage: tls-close.py HOST PORT CA_FILE imap|pop3 implicit|starttls
Connects (implicit TLS, or plain and then STARTTLS/STLS), says LOGOUT/QUIT, and reads
until the server closes. A close_notify shows as a clean end of the TLS stream (recv
returns b"" and unwrap() completes); a socket closed under TLS raises SSLEOFError.
Prints "tls-close: clean" on success.
"""
import socket
import ssl
import sys


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit("connection closed before a line ended: %r" % data)
        data += chunk
    return data


def main():
    host, port, ca_file, proto, mode = sys.argv[1:6]
    context = ssl.create_default_context(cafile=ca_file)
    raw = socket.create_connection((host, int(port)), timeout=30)
    if mode == "starttls":
        greeting = read_line(raw)
        assert greeting.startswith(b"* OK" if proto == "imap" else b"+OK"), greeting
        raw.sendall(b"s STARTTLS\r\n" if proto == "imap" else b"STLS\r\n")
        reply = read_line(raw)
        assert reply.startswith(b"s OK" if proto == "imap" else b"+OK"), reply
    tls = context.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)
    if mode == "implicit":
        greeting = read_line(tls)
        assert greeting.startswith(b"* OK" if proto == "imap" else b"+OK"), greeting
    tls.sendall(b"q LOGOUT\r\n" if proto == "imap" else b"QUIT\r\n")
    try:
        while tls.recv(4096):
            pass
    except ssl.SSLEOFError as e:
        raise SystemExit("tls-close: no close_notify (%s)" % e)
    # The peer's close_notify came: our own completes the shutdown.
    try:
        tls.unwrap()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed its socket after its close_notify, as it may
    print("tls-close: clean")


if __name__ == "__main__":
    main()
