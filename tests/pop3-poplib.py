#!/usr/bin/env python3
"""Drive popgate's POP3 front end with Python's poplib, a real third-party client.

usage: pop3-poplib.py HOST PORT USER PASSWORD EXPECTED_COUNT
Lists, retrieves every message, deletes message 1 and QUITs; prints "poplib: ok".
"""
import poplib
import sys


def main():
    host, port, user, password, expected = sys.argv[1:6]
    pop = poplib.POP3(host, int(port), timeout=30)
    caps = pop.capa()
    assert "UIDL" in caps and "TOP" in caps and "PIPELINING" in caps, caps
    pop.user(user)
    pop.pass_(password)
    count, size = pop.stat()
    assert count == int(expected), (count, expected)
    resp, listing, _ = pop.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == size, (sizes, size)
    resp, uidls, _ = pop.uidl()
    assert len(uidls) == count
    for n in range(1, count + 1):
        resp, lines, octets = pop.retr(n)
        assert resp.startswith(b"+OK"), resp
        # poplib strips CRLF and the dot-stuffing; octets counts line + CRLF.
        got = sum(len(line) + 2 for line in lines)
        assert got == sizes[n - 1] or got == sizes[n - 1] + 2, (n, got, sizes[n - 1])
    resp, lines, _ = pop.top(1, 0)
    assert resp.startswith(b"+OK")
    pop.dele(1)
    pop.quit()
    print("poplib: ok")


if __name__ == "__main__":
    main()
