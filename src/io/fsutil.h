/* fsutil.h - small file-system helpers: whole-file read/write, atomic
 * replace (write PATH.tmp.<pid>, fsync, rename), mkdir -p, and SHA-256
 * (used for model hashes written into PNG metadata).
 *
 * All functions follow the common.h convention: 0 on success, -1 after
 * cd_set_error() with a message naming the path. */
#ifndef CD_FSUTIL_H
#define CD_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Writes n bytes to path atomically: readers see either the old file or the
 * complete new one, never a partial file. */
int cd_write_file_atomic(const char *path, const void *data, size_t n);
/* Creates path and its missing parents (mode 0777 & umask). Existing dirs are fine. */
int cd_mkdir_p(const char *path);
/* Reads a whole file; *data is NUL-terminated for convenience (not counted in
 * *n) and must be freed with free(). */
int cd_read_file(const char *path, char **data, size_t *n);
int cd_file_exists(const char *path); /* 1 if path exists (any type), else 0 */
int cd_is_dir(const char *path);      /* 1 if path is a directory, else 0 */
int cd_is_file(const char *path);     /* 1 if path is a regular file, else 0 */
/* "dir/name" (no slash added after an empty dir or one ending in '/'); free() it. */
char *cd_path_join(const char *dir, const char *name);
/* The folder holding path into out: "." without a slash, "/" for a path at the root. */
void cd_parent_dir(const char *path, char *out, size_t cap);
/* 1 if a and b both exist and resolve to the same real path (symlinks, "..",
 * "./" and trailing slashes do not hide it), else 0. */
int cd_same_path(const char *a, const char *b);
/* rm -rf path (does not follow symlinks); a missing path is fine. */
int cd_rmtree(const char *path);
/* fsync a directory so that renames and creations inside it are durable. */
int cd_fsync_dir(const char *dir);
/* Removes the leftovers of killed writers under dir (down to depth levels of
 * subfolders): files and folders named "NAME.tmp.PID" whose PID is not this
 * process and not a running one, and for which ours(NAME) is 1 (NULL: all).
 * Returns how many were removed, or -1. */
int cd_remove_stale_tmp(const char *dir, int depth, int (*ours)(const char *name));

/* The temporary-name-then-rename pattern for streamed writers:
 *   char tmp[4096]; FILE *fp = cd_atomic_open(path, tmp, sizeof tmp);
 *   if (!fp) return -1; ...fwrite...; return cd_atomic_commit(fp, tmp, path);
 * cd_atomic_commit flushes, fsyncs, closes and renames (removing tmp on any
 * failure, including earlier write errors seen by ferror()). cd_atomic_abort
 * closes and removes tmp when the writer gives up. */
FILE *cd_atomic_open(const char *path, char *tmp_out, size_t cap);
int cd_atomic_commit(FILE *fp, const char *tmp, const char *path);
void cd_atomic_abort(FILE *fp, const char *tmp);

/* SHA-256 (FIPS 180-4). */
typedef struct {
  uint32_t h[8];
  uint8_t buf[64];
  size_t nbuf;
  unsigned long long nbytes;
} cd_sha256_ctx;
void cd_sha256_init(cd_sha256_ctx *c);
void cd_sha256_update(cd_sha256_ctx *c, const void *data, size_t n);
void cd_sha256_final(cd_sha256_ctx *c, uint8_t out[32]);
void cd_sha256(const void *data, size_t n, uint8_t out[32]);
/* 64 lowercase hex characters + NUL into out[65]. */
void cd_sha256_hex(const uint8_t digest[32], char out[65]);
/* SHA-256 of a whole file, streamed. */
int cd_sha256_file(const char *path, uint8_t out[32]);

#endif
