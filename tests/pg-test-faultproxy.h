/* popgate tests — a small fault-injecting TCP proxy between popgate and the real Dovecot.
 *
 * It listens on 127.0.0.1 and relays every connection to the upstream (one thread per
 * connection, blocking sockets with every wait bounded), reading the client's (popgate's)
 * command lines as they pass. When a line's text after its tag matches the rule's glob,
 * the fault is injected at that command, once (later connections and commands pass
 * untouched):
 *  - CUT: the command is not forwarded; both connections are closed at once (the upstream
 *    died just before it);
 *  - TRUNCATE: the command goes through, then `bytes` octets of the server's response to
 *    it, then both connections are closed (the upstream died mid-reply, e.g. mid-body);
 *  - DELAY: the command is held `delay_ms` before it is forwarded (a slow upstream).
 * Everything else is relayed byte for byte. Real Dovecot behaviour otherwise: only the
 * moment of the fault is ours.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef enum
{
  PG_TEST_FAULT_CUT,
  PG_TEST_FAULT_TRUNCATE,
  PG_TEST_FAULT_DELAY,
} PgTestFaultAction;

typedef struct
{
  const char *match; /* glob on a command line after "tag ", e.g. "UID EXPUNGE *" */
  PgTestFaultAction action;
  gsize bytes;    /* TRUNCATE: response octets let through before the cut */
  guint delay_ms; /* DELAY */
} PgTestFaultRule;

typedef struct _PgTestFaultProxy PgTestFaultProxy;

/* Listen on 127.0.0.1 (an ephemeral port) and relay to host:port with `rule` (copied). */
PgTestFaultProxy *pg_test_faultproxy_new (const char *host, guint16 port,
                                          const PgTestFaultRule *rule, GError **error);
guint16 pg_test_faultproxy_get_port (PgTestFaultProxy *proxy);
/* Wait (bounded) until the fault was injected (for TRUNCATE: the connections are closed). */
gboolean pg_test_faultproxy_wait_triggered (PgTestFaultProxy *proxy, guint timeout_ms);
/* Stop relaying, close every connection, join the threads, free. */
void pg_test_faultproxy_free (PgTestFaultProxy *proxy);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestFaultProxy, pg_test_faultproxy_free)

G_END_DECLS
