/* SPDX-License-Identifier: GPL-3.0-or-later */
#include "popgate/pg-core.h"

#include <gio/gio.h>
#include <string.h>

G_DEFINE_QUARK (popgate - error - quark, pg_error)

guint64
pg_session_id_next (void)
{
  static guint64 next_id = 0;
  /* One main loop, one thread: no atomics needed, but keep it cheap and safe anyway. */
  return (guint64) g_atomic_pointer_add ((gpointer *) &next_id, 1) + 1;
}

gchar *
pg_host_port_to_string (const char *host, guint port)
{
  /* Only an IPv6 literal has a colon; a name or an IPv4 address goes as it is. */
  if (strchr (host, ':') != NULL)
    return g_strdup_printf ("[%s]:%u", host, port);
  return g_strdup_printf ("%s:%u", host, port);
}

gchar *
pg_address_to_string (gpointer gsocketaddress)
{
  GSocketAddress *address = gsocketaddress;

  if (G_IS_INET_SOCKET_ADDRESS (address))
    {
      GInetSocketAddress *inet = G_INET_SOCKET_ADDRESS (address);
      g_autofree gchar *ip = g_inet_address_to_string (g_inet_socket_address_get_address (inet));

      return pg_host_port_to_string (ip, g_inet_socket_address_get_port (inet));
    }
  if (G_IS_UNIX_SOCKET_ADDRESS (address))
    return g_strdup ("unix");
  return g_strdup ("unknown");
}

gsize
pg_format_decimal (char *out, guint64 value)
{
  char digits[PG_DECIMAL_MAX_LEN];
  gsize n = 0;

  do
    digits[n++] = (char) ('0' + value % 10);
  while ((value /= 10) != 0);
  for (gsize i = 0; i < n; i++)
    out[i] = digits[n - 1 - i];
  return n;
}
