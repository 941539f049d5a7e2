/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-core.h"

#include <gio/gio.h>

G_DEFINE_QUARK (popgate - error - quark, pg_error)

guint64
pg_session_id_next (void)
{
  static guint64 next_id = 0;
  /* One main loop, one thread: no atomics needed, but keep it cheap and safe anyway. */
  return (guint64) g_atomic_pointer_add ((gpointer *) &next_id, 1) + 1;
}

gchar *
pg_address_to_string (gpointer gsocketaddress)
{
  GSocketAddress *address = gsocketaddress;

  if (G_IS_INET_SOCKET_ADDRESS (address))
    {
      GInetSocketAddress *inet = G_INET_SOCKET_ADDRESS (address);
      g_autofree gchar *ip = g_inet_address_to_string (g_inet_socket_address_get_address (inet));
      guint16 port = g_inet_socket_address_get_port (inet);

      if (g_inet_address_get_family (g_inet_socket_address_get_address (inet))
          == G_SOCKET_FAMILY_IPV6)
        return g_strdup_printf ("[%s]:%u", ip, port);
      return g_strdup_printf ("%s:%u", ip, port);
    }
  if (G_IS_UNIX_SOCKET_ADDRESS (address))
    return g_strdup ("unix");
  return g_strdup ("unknown");
}
