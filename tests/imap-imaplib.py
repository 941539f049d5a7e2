#!/usr/bin/env python3
"""Drive popgate's IMAP front end with Python's imaplib, a real third-party client.

usage: imap-imaplib.py HOST PORT CA_FILE USER PASSWORD
STARTTLS (verified against CA_FILE), LOGIN, SELECT, FETCH, APPEND, NOOP, LOGOUT;
prints "imaplib: ok".
"""
import imaplib
import ssl
import sys


def main():
    host, port, ca_file, user, password = sys.argv[1:6]
    imap = imaplib.IMAP4(host, int(port), timeout=30)
    assert "STARTTLS" in imap.capabilities, imap.capabilities
    context = ssl.create_default_context(cafile=ca_file)
    typ, _ = imap.starttls(ssl_context=context)
    assert typ == "OK", typ
    # imaplib quotes the password itself (with \" and \\ escapes).
    typ, data = imap.login(user, password)
    assert typ == "OK", (typ, data)
    typ, data = imap.capability()
    assert typ == "OK" and b"IDLE" in data[0], data
    typ, data = imap.select("INBOX")
    assert typ == "OK", (typ, data)
    count = int(data[0])
    assert count >= 1, count
    typ, data = imap.fetch("1", "(RFC822)")
    assert typ == "OK" and b"Subject: seed" in data[0][1], data
    message = b"Subject: from imaplib\r\n\r\n" + b"x" * 100000 + b"\r\n"
    typ, data = imap.append("INBOX", None, None, message)
    assert typ == "OK", (typ, data)
    typ, data = imap.noop()
    assert typ == "OK", (typ, data)
    typ, data = imap.fetch(str(count + 1), "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == message, (typ, len(data[0][1]))
    typ, _ = imap.logout()
    assert typ == "BYE", typ
    print("imaplib: ok")


if __name__ == "__main__":
    main()
