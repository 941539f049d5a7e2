/* PgStateStore: load and save PgClientState by key; the file backend lives here, the
 * imap-metadata backend in pg-state-metadata.c.
 *
 * The file backend reads synchronously on the main loop (one read of a record of a few KB,
 * PG_STATE_MAX_ENCODED at most, once at login). Its writes — write, fsync, rename, fsync of
 * the directory — run in GIO's worker pool (g_task_run_in_thread): the one exception to
 * "one thread", so that a slow disk's fsync does not stall every session. A worker touches
 * only its task's own data (each thread function says why two never race). The API is
 * async-shaped so the imap-metadata backend, which needs network round trips, fits the
 * same calls.
 *
 * SPDX-License-Identifier: GPL-3.0-or-later */
#include "pg-state-private.h"

#include "popgate/pg-core.h"
#include "popgate/pg-limits.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct _PgStateStore
{
  GObject parent_instance;

  PgStateBackend backend;
  gchar *path;      /* owned: the directory of the file backend, else NULL */
  GBytes *mac_key;  /* owned: the file backend's record key (PG_STATE_KEY_FILE) */
  gint64 key_mtime; /* when the key was made: older unkeyed records are legacy, accepted */
};

/* The record key in the state directory: PG_STATE_MAC_KEY_LEN random bytes, 0600. */
#define PG_STATE_KEY_FILE "state.key"
#define PG_STATE_MAC_KEY_LEN 32
/* A temp file of an interrupted save ("<hash>.state.XXXXXX", GLib's pattern) older than
 * this is left over from a crash: no save takes that long, even in another process that
 * shares the directory. */
#define PG_STATE_STALE_TEMP_S (10 * 60)

G_DEFINE_FINAL_TYPE (PgStateStore, pg_state_store, G_TYPE_OBJECT)

static void
pg_state_store_finalize (GObject *object)
{
  PgStateStore *self = PG_STATE_STORE (object);

  g_free (self->path);
  g_clear_pointer (&self->mac_key, g_bytes_unref);
  G_OBJECT_CLASS (pg_state_store_parent_class)->finalize (object);
}

static void
pg_state_store_class_init (PgStateStoreClass *klass)
{
  G_OBJECT_CLASS (klass)->finalize = pg_state_store_finalize;
}

static void
pg_state_store_init (PgStateStore *self)
{
}

gboolean
pg_state_store_check_dir (const char *path, gboolean any_owner, GError **error)
{
  GStatBuf st;

  /* stat, not lstat: with DynamicUser=yes systemd makes /var/lib/popgate a symlink to
   * /var/lib/private/popgate (a root-only 0700 parent); the directory it names is what
   * must be ours and closed to others. */
  if (g_stat (path, &st) != 0)
    {
      int saved_errno = errno;

      if (saved_errno == ENOENT)
        return TRUE; /* created at start, 0700 */
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] path %s: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (!S_ISDIR (st.st_mode))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] path %s: not a directory", path);
      return FALSE;
    }
  /* Who can write here can forge a record ("pending expunge 1:*") or replace the key. */
  if (!any_owner && st.st_uid != geteuid ())
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "[state] path %s: owned by uid %u, not by the service user (uid %u); "
                   "chown it to the user popgate runs as",
                   path, (guint) st.st_uid, (guint) geteuid ());
      return FALSE;
    }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "[state] path %s: writable by group or others (mode %04o); chmod 0700 it", path,
                   (guint) (st.st_mode & 07777));
      return FALSE;
    }
  return TRUE;
}

/* Read the record key, or make it on first start (O_EXCL: two starting processes cannot
 * both make one). */
static GBytes *
pg_state_store_load_key (const char *dir, gint64 *out_mtime, GError **error)
{
  g_autofree gchar *path = g_build_filename (dir, PG_STATE_KEY_FILE, NULL);
  guint8 key[PG_STATE_MAC_KEY_LEN];
  struct stat st;
  gsize got = 0;
  int fd;

  fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0 && errno == ENOENT)
    {
      g_autoptr (GFile) random = g_file_new_for_path ("/dev/urandom");
      g_autoptr (GFileInputStream) in = g_file_read (random, NULL, error);

      if (in == NULL
          || !g_input_stream_read_all (G_INPUT_STREAM (in), key, sizeof key, &got, NULL, error)
          || got != sizeof key)
        {
          if (error != NULL && *error == NULL)
            g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] key: short read of randomness");
          return NULL;
        }
      fd = g_open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
      if (fd >= 0)
        {
          gboolean ok = write (fd, key, sizeof key) == (ssize_t) sizeof key && fsync (fd) == 0;
          int saved_errno = errno;

          g_close (fd, NULL);
          memset (key, 0, sizeof key);
          if (!ok)
            {
              g_unlink (path);
              g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] key %s: %s", path,
                           g_strerror (saved_errno));
              return NULL;
            }
        }
      memset (key, 0, sizeof key);
      fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    }
  if (fd < 0)
    {
      int saved_errno = errno;
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] key %s: %s", path,
                   g_strerror (saved_errno));
      return NULL;
    }
  if (fstat (fd, &st) != 0 || !S_ISREG (st.st_mode) || st.st_uid != geteuid ()
      || (st.st_mode & 077) != 0 || st.st_size != PG_STATE_MAC_KEY_LEN
      || read (fd, key, sizeof key) != (ssize_t) sizeof key)
    {
      g_close (fd, NULL);
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "[state] key %s: must be a %d-byte regular file of the service user, "
                   "mode 0600",
                   path, PG_STATE_MAC_KEY_LEN);
      return NULL;
    }
  g_close (fd, NULL);
  *out_mtime = (gint64) st.st_mtime;
  {
    GBytes *bytes = g_bytes_new (key, sizeof key);
    memset (key, 0, sizeof key);
    return bytes;
  }
}

/* Remove temp files that a crash during a save left behind. */
static void
pg_state_store_clean_temps (const char *dir)
{
  g_autoptr (GDir) d = g_dir_open (dir, 0, NULL);
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;
  const char *name;

  if (d == NULL)
    return;
  while ((name = g_dir_read_name (d)) != NULL)
    {
      const char *dot = strstr (name, ".state.");
      g_autofree gchar *path = NULL;
      GStatBuf st;

      /* "<64 hex>.state.XXXXXX" exactly: nothing else in the directory is touched. */
      if (dot == NULL || dot - name != 64 || strlen (dot) != strlen (".state.XXXXXX"))
        continue;
      path = g_build_filename (dir, name, NULL);
      if (g_lstat (path, &st) == 0 && S_ISREG (st.st_mode)
          && now - (gint64) st.st_mtime > PG_STATE_STALE_TEMP_S)
        g_unlink (path);
    }
}

PgStateStore *
pg_state_store_new_file (const char *path, GError **error)
{
  PgStateStore *self;
  GStatBuf st;
  g_autoptr (GBytes) mac_key = NULL;
  gint64 key_mtime = 0;

  g_return_val_if_fail (path != NULL && *path != '\0', NULL);

  /* 0700: the records name users and what they read. */
  if (g_mkdir_with_parents (path, 0700) != 0)
    {
      int saved_errno = errno;

      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG,
                   "[state] path %s: cannot create the directory: %s", path,
                   g_strerror (saved_errno));
      return NULL;
    }
  if (g_stat (path, &st) != 0 || !S_ISDIR (st.st_mode))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_CONFIG, "[state] path %s: not a directory", path);
      return NULL;
    }
  if (!pg_state_store_check_dir (path, FALSE, error))
    return NULL;
  mac_key = pg_state_store_load_key (path, &key_mtime, error);
  if (mac_key == NULL)
    return NULL;
  pg_state_store_clean_temps (path);
  self = g_object_new (PG_TYPE_STATE_STORE, NULL);
  self->backend = PG_STATE_BACKEND_FILE;
  self->path = g_strdup (path);
  self->mac_key = g_steal_pointer (&mac_key);
  self->key_mtime = key_mtime;
  return self;
}

PgStateStore *
pg_state_store_new_imap_metadata (void)
{
  PgStateStore *self = g_object_new (PG_TYPE_STATE_STORE, NULL);

  self->backend = PG_STATE_BACKEND_IMAP_METADATA;
  return self;
}

PgStateStore *
pg_state_store_new (PgConfig *config, GError **error)
{
  switch (config->state.backend)
    {
    case PG_STATE_BACKEND_FILE:
      return pg_state_store_new_file (config->state.path, error);
    case PG_STATE_BACKEND_IMAP_METADATA:
      return pg_state_store_new_imap_metadata ();
    }
  g_return_val_if_reached (NULL);
}

PgStateBackend
pg_state_store_get_backend (PgStateStore *self)
{
  return self->backend;
}

/* A file name safe for any user, mailbox and tag: the SHA-256 of the three, NUL-separated
 * (none of them holds a NUL, so distinct keys give distinct inputs). The readable key is
 * inside the file and checked on load. */
gchar *
pg_state_store_get_file_path (PgStateStore *self, const PgStateKey *key)
{
  g_autoptr (GChecksum) sum = NULL;
  g_autofree gchar *name = NULL;

  if (self->backend != PG_STATE_BACKEND_FILE)
    return NULL;
  sum = g_checksum_new (G_CHECKSUM_SHA256);
  g_checksum_update (sum, (const guchar *) key->user, (gssize) strlen (key->user) + 1);
  g_checksum_update (sum, (const guchar *) key->mailbox, (gssize) strlen (key->mailbox) + 1);
  g_checksum_update (sum, (const guchar *) key->tag, (gssize) strlen (key->tag));
  name = g_strconcat (g_checksum_get_string (sum), ".state", NULL);
  return g_build_filename (self->path, name, NULL);
}

/* --- load ---------------------------------------------------------------------------- */

void
pg_state_load_result_free (PgStateLoadResult *result)
{
  if (result == NULL)
    return;
  pg_client_state_free (result->state);
  g_free (result);
}

PgStateLoadResult *
pg_state_load_result_new (const PgStateKey *key, PgClientState *state, guint32 uidvalidity)
{
  PgStateLoadResult *result = g_new0 (PgStateLoadResult, 1);

  result->state = state;
  if (state == NULL)
    result->status = PG_STATE_LOAD_NEW;
  else if (state->uidvalidity != uidvalidity)
    result->status = PG_STATE_LOAD_UIDVALIDITY_CHANGED;
  else
    result->status = PG_STATE_LOAD_FOUND;
  return result;
}

/* Decode a record and check that it is the one for key. */
PgClientState *
pg_state_decode_for_key (const void *data, gsize len, const char *source, const PgStateKey *key,
                         GError **error)
{
  return pg_state_decode_for_key_keyed (data, len, source, key, NULL, TRUE, error);
}

PgClientState *
pg_state_decode_for_key_keyed (const void *data, gsize len, const char *source,
                               const PgStateKey *key, GBytes *mac_key, gboolean accept_crc,
                               GError **error)
{
  g_autoptr (PgStateKey) stored = NULL;
  g_autoptr (PgClientState) state
      = pg_client_state_decode_keyed (data, len, source, mac_key, accept_crc, &stored, error);

  if (state == NULL)
    return NULL;
  if (!pg_state_key_equal (stored, key))
    {
      g_autofree gchar *want = pg_state_key_to_log (key);
      g_autofree gchar *got = pg_state_key_to_log (stored);

      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "%s: state record belongs to %s, not to %s",
                   source, got, want);
      return NULL;
    }
  return g_steal_pointer (&state);
}

/* Read at most PG_STATE_MAX_ENCODED bytes of a regular file. FALSE without error: the
 * file does not exist. */
static gboolean
pg_state_store_read_file (const char *path, GBytes **out_bytes, gint64 *out_mtime, GError **error)
{
  g_autoptr (GByteArray) buf = NULL;
  struct stat st;
  int fd;
  int saved_errno;

  fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0)
    {
      saved_errno = errno;
      if (saved_errno == ENOENT)
        return FALSE;
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno), "state file %s: %s",
                   path, g_strerror (saved_errno));
      return FALSE;
    }
  if (fstat (fd, &st) != 0 || !S_ISREG (st.st_mode))
    {
      g_set_error (error, PG_ERROR, PG_ERROR_PROTOCOL, "state file %s: not a regular file", path);
      g_close (fd, NULL);
      return FALSE;
    }
  if (st.st_size > PG_STATE_MAX_ENCODED)
    {
      g_set_error (error, PG_ERROR, PG_ERROR_LIMIT,
                   "state file %s: %" G_GINT64_FORMAT " bytes, more than %u", path,
                   (gint64) st.st_size, (guint) PG_STATE_MAX_ENCODED);
      g_close (fd, NULL);
      return FALSE;
    }
  /* Straight into the buffer, the whole file at once (a ledger's record is tens of KiB: it
   * was read 4 KiB a call at every login), one byte more than fstat() said, so that a file
   * that grew since is read on and still caught by the limit. */
  buf = g_byte_array_sized_new ((guint) st.st_size + 1);
  for (;;)
    {
      guint len = buf->len;
      gsize room = len < (gsize) st.st_size + 1 ? (gsize) st.st_size + 1 - len : 4096;
      ssize_t n;

      g_byte_array_set_size (buf, len + (guint) room);
      n = read (fd, buf->data + len, room);
      saved_errno = errno;
      g_byte_array_set_size (buf, len + (guint) MAX (n, 0));
      if (n < 0 && saved_errno == EINTR)
        continue;
      if (n < 0)
        {
          g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                       "state file %s: %s", path, g_strerror (saved_errno));
          g_close (fd, NULL);
          return FALSE;
        }
      if (n == 0)
        break;
      if (buf->len > PG_STATE_MAX_ENCODED)
        {
          g_set_error (error, PG_ERROR, PG_ERROR_LIMIT, "state file %s: more than %u bytes", path,
                       (guint) PG_STATE_MAX_ENCODED);
          g_close (fd, NULL);
          return FALSE;
        }
    }
  g_close (fd, NULL);
  *out_bytes = g_byte_array_free_to_bytes (g_steal_pointer (&buf));
  if (out_mtime != NULL)
    *out_mtime = (gint64) st.st_mtime;
  return TRUE;
}

static void
pg_state_store_file_load (PgStateStore *self, GTask *task, const PgStateKey *key,
                          guint32 uidvalidity)
{
  g_autofree gchar *path = pg_state_store_get_file_path (self, key);
  g_autofree gchar *source = g_strdup_printf ("state file %s", path);
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (GError) error = NULL;
  PgClientState *state = NULL;
  gsize len = 0;
  const void *data;
  gint64 mtime = 0;

  if (!pg_state_store_read_file (path, &bytes, &mtime, &error))
    {
      if (error != NULL)
        g_task_return_error (task, g_steal_pointer (&error));
      else
        g_task_return_pointer (task, pg_state_load_result_new (key, NULL, uidvalidity),
                               (GDestroyNotify) pg_state_load_result_free);
      return;
    }
  data = g_bytes_get_data (bytes, &len);
  /* An unkeyed record is legacy (accepted) only if it is older than the key. */
  state = pg_state_decode_for_key_keyed (data, len, source, key, self->mac_key,
                                         mtime < self->key_mtime, &error);
  if (state == NULL)
    {
      g_task_return_error (task, g_steal_pointer (&error));
      return;
    }
  g_task_return_pointer (task, pg_state_load_result_new (key, state, uidvalidity),
                         (GDestroyNotify) pg_state_load_result_free);
}

void
pg_state_store_load_async (PgStateStore *self, PgUpstream *upstream, const PgStateKey *key,
                           guint32 uidvalidity, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;

  g_return_if_fail (PG_IS_STATE_STORE (self));
  g_return_if_fail (key != NULL);

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, pg_state_store_load_async);
  if (g_task_return_error_if_cancelled (task))
    return;
  switch (self->backend)
    {
    case PG_STATE_BACKEND_FILE:
      pg_state_store_file_load (self, task, key, uidvalidity);
      return;
    case PG_STATE_BACKEND_IMAP_METADATA:
      pg_state_metadata_load (task, upstream, key, uidvalidity);
      return;
    }
}

gboolean
pg_state_store_load_finish (PgStateStore *self, GAsyncResult *result, PgStateLoadStatus *out_status,
                            PgClientState **out_state, GError **error)
{
  g_autoptr (PgStateLoadResult) loaded = NULL;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_state_store_load_async,
                        FALSE);

  loaded = g_task_propagate_pointer (G_TASK (result), error);
  if (loaded == NULL)
    return FALSE;
  if (out_status != NULL)
    *out_status = loaded->status;
  if (out_state != NULL)
    *out_state = g_steal_pointer (&loaded->state);
  return TRUE;
}

/* --- save ---------------------------------------------------------------------------- */

/* GLib 2.74's g_file_set_contents_full() with CONSISTENT | DURABLE writes a temporary file
 * in the same directory with the mode given, fsync()s it, rename()s it over the old one and
 * fsync()s the directory (seen with strace; on btrfs it skips the file fsync, which that
 * file system makes unnecessary for a rename). So a crash leaves the old or the new
 * record, never a mixture, and a completed save survives. */
typedef struct
{
  gchar *path;   /* owned */
  GBytes *bytes; /* owned */
} PgStateFileWrite;

static void
pg_state_file_write_free (PgStateFileWrite *write)
{
  g_free (write->path);
  g_bytes_unref (write->bytes);
  g_free (write);
}

/* Runs in GIO's worker pool: the two fsync()s of a durable write can take milliseconds
 * (much more on a busy disk), and on the main loop they would stall every session at once
 * (the benchmark's 1,000 concurrent QUITs showed it). Nothing else is touched here. Two
 * saves of one key never overlap: a key belongs to one session at a time (the maildrop
 * lock) and a session waits for each save before the next. */
static void
pg_state_store_file_write_thread (GTask *task, gpointer source, gpointer task_data,
                                  GCancellable *cancellable)
{
  PgStateFileWrite *write = task_data;
  GError *error = NULL;
  gsize len = 0;
  const gchar *data = g_bytes_get_data (write->bytes, &len);

  if (!g_file_set_contents_full (write->path, data, (gssize) len,
                                 G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE, 0600,
                                 &error))
    {
      g_prefix_error (&error, "state file: ");
      g_task_return_error (task, error);
      return;
    }
  g_task_return_boolean (task, TRUE);
}

static void
pg_state_store_file_save (PgStateStore *self, GTask *task, const PgStateKey *key, GBytes *bytes)
{
  PgStateFileWrite *write = g_new0 (PgStateFileWrite, 1);

  write->path = pg_state_store_get_file_path (self, key);
  write->bytes = g_bytes_ref (bytes);
  g_task_set_task_data (task, write, (GDestroyNotify) pg_state_file_write_free);
  /* A write that has begun is finished even if the session goes away meanwhile. */
  g_task_set_return_on_cancel (task, FALSE);
  g_task_run_in_thread (task, pg_state_store_file_write_thread);
}

void
pg_state_store_save_async (PgStateStore *self, PgUpstream *upstream, const PgStateKey *key,
                           const PgClientState *state, GCancellable *cancellable,
                           GAsyncReadyCallback callback, gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  g_autoptr (GBytes) bytes = NULL;

  g_return_if_fail (PG_IS_STATE_STORE (self));
  g_return_if_fail (key != NULL && state != NULL);

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, pg_state_store_save_async);
  if (g_task_return_error_if_cancelled (task))
    return;
  bytes = pg_client_state_encode_keyed (state, key, self->mac_key);
  if (g_bytes_get_size (bytes) > PG_STATE_MAX_ENCODED)
    {
      g_autofree gchar *who = pg_state_key_to_log (key);

      g_task_return_new_error (task, PG_ERROR, PG_ERROR_LIMIT,
                               "state of %s: %zu bytes encoded, more than %u", who,
                               g_bytes_get_size (bytes), (guint) PG_STATE_MAX_ENCODED);
      return;
    }
  switch (self->backend)
    {
    case PG_STATE_BACKEND_FILE:
      pg_state_store_file_save (self, task, key, bytes);
      return;
    case PG_STATE_BACKEND_IMAP_METADATA:
      pg_state_metadata_save (task, upstream, key, bytes);
      return;
    }
}

gboolean
pg_state_store_save_finish (PgStateStore *self, GAsyncResult *result, GError **error)
{
  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_state_store_save_async,
                        FALSE);

  return g_task_propagate_boolean (G_TASK (result), error);
}

/* --- merged save ---------------------------------------------------------------------- */

void
pg_state_fold (PgClientState **acc, PgClientState *record)
{
  PgClientState *merged;

  if (*acc == NULL)
    {
      *acc = record;
      return;
    }
  /* Neither cleared the other's pending update: both stand (base NULL). */
  merged = pg_client_state_merge (record, NULL, *acc);
  pg_client_state_free (*acc);
  pg_client_state_free (record);
  *acc = merged;
}

typedef struct
{
  gchar *path;     /* owned */
  PgStateKey *key; /* owned */
  GBytes *mac_key; /* owned */
  gint64 key_mtime;
  PgClientState *base; /* owned, may be NULL */
  PgClientState *ours; /* owned */
} PgStateFileMerge;

static void
pg_state_file_merge_free (PgStateFileMerge *merge)
{
  g_free (merge->path);
  pg_state_key_free (merge->key);
  g_bytes_unref (merge->mac_key);
  pg_client_state_free (merge->base);
  pg_client_state_free (merge->ours);
  g_free (merge);
}

/* In GIO's worker pool, like the plain write. The flock() of "<file>.lock" serialises the
 * read-merge-write of every session of this key, in this process (worker threads) and in
 * any other popgate sharing the directory; the record itself is still replaced by
 * rename(), so a reader never needs the lock. */
static void
pg_state_store_file_merge_thread (GTask *task, gpointer source, gpointer task_data,
                                  GCancellable *cancellable)
{
  PgStateFileMerge *merge = task_data;
  g_autofree gchar *lock_path = g_strconcat (merge->path, ".lock", NULL);
  g_autofree gchar *where = g_strdup_printf ("state file %s", merge->path);
  g_autoptr (GBytes) current = NULL;
  g_autoptr (GBytes) bytes = NULL;
  g_autoptr (PgClientState) stored = NULL;
  g_autoptr (PgClientState) merged = NULL;
  GError *error = NULL;
  gsize len = 0;
  const gchar *data;
  gint64 mtime = 0;
  int fd;
  int rc;

  fd = g_open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    {
      int saved_errno = errno;
      g_task_return_new_error (task, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                               "state lock %s: %s", lock_path, g_strerror (saved_errno));
      return;
    }
  do
    rc = flock (fd, LOCK_EX);
  while (rc != 0 && errno == EINTR);
  if (rc != 0)
    {
      int saved_errno = errno;
      g_close (fd, NULL);
      g_task_return_new_error (task, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                               "state lock %s: %s", lock_path, g_strerror (saved_errno));
      return;
    }
  if (pg_state_store_read_file (merge->path, &current, &mtime, &error))
    {
      data = g_bytes_get_data (current, &len);
      stored = pg_state_decode_for_key_keyed (data, len, where, merge->key, merge->mac_key,
                                              mtime < merge->key_mtime, &error);
    }
  /* A record that cannot be read is not overwritten: left for the admin. */
  if (error != NULL)
    {
      g_close (fd, NULL);
      g_task_return_error (task, error);
      return;
    }
  merged = pg_client_state_merge (stored, merge->base, merge->ours);
  bytes = pg_client_state_encode_keyed (merged, merge->key, merge->mac_key);
  data = g_bytes_get_data (bytes, &len);
  if (len > PG_STATE_MAX_ENCODED)
    {
      g_close (fd, NULL);
      g_task_return_new_error (task, PG_ERROR, PG_ERROR_LIMIT,
                               "merged state: %zu bytes encoded, more than %u", len,
                               (guint) PG_STATE_MAX_ENCODED);
      return;
    }
  if (!g_file_set_contents_full (merge->path, data, (gssize) len,
                                 G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE, 0600,
                                 &error))
    {
      g_close (fd, NULL);
      g_prefix_error (&error, "state file: ");
      g_task_return_error (task, error);
      return;
    }
  g_close (fd, NULL); /* releases the lock */
  g_task_return_pointer (task, g_steal_pointer (&merged), (GDestroyNotify) pg_client_state_free);
}

void
pg_state_store_save_merge_async (PgStateStore *self, PgUpstream *upstream, const PgStateKey *key,
                                 const PgClientState *base, const PgClientState *state,
                                 GCancellable *cancellable, GAsyncReadyCallback callback,
                                 gpointer user_data)
{
  g_autoptr (GTask) task = NULL;
  PgStateFileMerge *merge;

  g_return_if_fail (PG_IS_STATE_STORE (self));
  g_return_if_fail (key != NULL && state != NULL);

  task = g_task_new (self, cancellable, callback, user_data);
  g_task_set_source_tag (task, pg_state_store_save_merge_async);
  if (g_task_return_error_if_cancelled (task))
    return;
  switch (self->backend)
    {
    case PG_STATE_BACKEND_FILE:
      merge = g_new0 (PgStateFileMerge, 1);
      merge->path = pg_state_store_get_file_path (self, key);
      merge->key = pg_state_key_copy (key);
      merge->mac_key = g_bytes_ref (self->mac_key);
      merge->key_mtime = self->key_mtime;
      merge->base = base != NULL ? pg_client_state_copy (base) : NULL;
      merge->ours = pg_client_state_copy (state);
      g_task_set_task_data (task, merge, (GDestroyNotify) pg_state_file_merge_free);
      /* A write that has begun is finished even if the session goes away meanwhile. */
      g_task_set_return_on_cancel (task, FALSE);
      g_task_run_in_thread (task, pg_state_store_file_merge_thread);
      return;
    case PG_STATE_BACKEND_IMAP_METADATA:
      pg_state_metadata_save_merge (task, upstream, key, base, state);
      return;
    }
}

gboolean
pg_state_store_save_merge_finish (PgStateStore *self, GAsyncResult *result,
                                  PgClientState **out_merged, GError **error)
{
  PgClientState *merged;

  g_return_val_if_fail (g_task_is_valid (result, self), FALSE);
  g_return_val_if_fail (g_task_get_source_tag (G_TASK (result)) == pg_state_store_save_merge_async,
                        FALSE);

  merged = g_task_propagate_pointer (G_TASK (result), error);
  if (merged == NULL)
    return FALSE;
  if (out_merged != NULL)
    *out_merged = merged;
  else
    pg_client_state_free (merged);
  return TRUE;
}
