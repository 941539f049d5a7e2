/* popgate tests — a TCP relay in front of a real upstream that cuts one connection at an
 * exact command: the real server's behaviour up to the cut, a lost connection at the worst
 * moment (say, after QUIT's UID STORE was answered and before its UID EXPUNGE reaches the
 * server), and plain relaying for every later connection (the next login).
 *
 * It runs in its own thread with blocking, bounded waits, listens on 127.0.0.1 and relays
 * to 127.0.0.1:upstream_port.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct _PgTestCutProxy PgTestCutProxy;

/* Relay to upstream_port; the first time a chunk from the client contains `needle` (e.g.
 * " UID EXPUNGE "), that chunk is dropped and both sides of that connection are closed. */
PgTestCutProxy *pg_test_cut_proxy_new (guint16 upstream_port, const char *needle, GError **error);
guint16 pg_test_cut_proxy_get_port (PgTestCutProxy *proxy);
/* TRUE once the cut happened. */
gboolean pg_test_cut_proxy_has_cut (PgTestCutProxy *proxy);
void pg_test_cut_proxy_free (PgTestCutProxy *proxy);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (PgTestCutProxy, pg_test_cut_proxy_free)

G_END_DECLS
