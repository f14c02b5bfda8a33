/* fsutil.c - whole-file I/O, atomic replace, mkdir -p, SHA-256. */
#include "io/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/common.h"

/* ---- atomic replace ---- */

FILE *cd_atomic_open(const char *path, char *tmp_out, size_t cap) {
  int k = snprintf(tmp_out, cap, "%s.tmp.%ld", path, (long)getpid());
  if (k < 0 || (size_t)k >= cap) {
    cd_set_error("%s: path too long for a temporary name", path);
    return NULL;
  }
  FILE *fp = fopen(tmp_out, "wb");
  if (!fp) cd_set_error("%s: cannot create %s: %s", path, tmp_out, strerror(errno));
  return fp;
}

void cd_atomic_abort(FILE *fp, const char *tmp) {
  if (fp) fclose(fp);
  remove(tmp);
}

void cd_parent_dir(const char *path, char *out, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(out, cap, ".");
  else if (slash == path) snprintf(out, cap, "/");
  else snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

/* fsync the directory holding path so the rename itself is durable; best effort. */
static void sync_parent_dir(const char *path) {
  char dir[4096];
  cd_parent_dir(path, dir, sizeof dir);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

int cd_atomic_commit(FILE *fp, const char *tmp, const char *path) {
  if (fflush(fp) != 0 || ferror(fp)) {
    int e = errno;
    cd_atomic_abort(fp, tmp);
    return cd_set_error("%s: write failed: %s", path, strerror(e));
  }
  if (fsync(fileno(fp)) != 0) {
    int e = errno;
    cd_atomic_abort(fp, tmp);
    return cd_set_error("%s: fsync failed: %s", path, strerror(e));
  }
  if (fclose(fp) != 0) {
    int e = errno;
    remove(tmp);
    return cd_set_error("%s: close failed: %s", path, strerror(e));
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    remove(tmp);
    return cd_set_error("%s: cannot rename %s into place: %s", path, tmp, strerror(e));
  }
  sync_parent_dir(path);
  return 0;
}

int cd_write_file_atomic(const char *path, const void *data, size_t n) {
  char tmp[4096];
  FILE *fp = cd_atomic_open(path, tmp, sizeof tmp);
  if (!fp) return -1;
  if (n && fwrite(data, 1, n, fp) != n) {
    int e = errno;
    cd_atomic_abort(fp, tmp);
    return cd_set_error("%s: write failed: %s", path, strerror(e));
  }
  return cd_atomic_commit(fp, tmp, path);
}

/* ---- directories and reads ---- */

int cd_mkdir_p(const char *path) {
  size_t n = strlen(path);
  if (n == 0) return cd_set_error("mkdir: empty path");
  char *p = cd_strdup(path);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != 0) continue;
    char c = p[i];
    p[i] = 0;
    if (mkdir(p, 0777) != 0 && errno != EEXIST) {
      int e = errno;
      cd_set_error("mkdir %s: %s", p, strerror(e));
      free(p);
      return -1;
    }
    p[i] = c;
  }
  free(p);
  if (!cd_is_dir(path)) return cd_set_error("mkdir %s: exists and is not a directory", path);
  return 0;
}

int cd_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

int cd_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int cd_is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *cd_path_join(const char *dir, const char *name) {
  size_t nd = strlen(dir), nn = strlen(name);
  int slash = nd > 0 && dir[nd - 1] != '/';
  char *p = cd_malloc(nd + slash + nn + 1);
  memcpy(p, dir, nd);
  if (slash) p[nd] = '/';
  memcpy(p + nd + slash, name, nn + 1);
  return p;
}

int cd_same_path(const char *a, const char *b) {
  char ra[PATH_MAX], rb[PATH_MAX];
  if (!realpath(a, ra) || !realpath(b, rb)) return 0;
  return strcmp(ra, rb) == 0;
}

int cd_rmtree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : cd_set_error("cannot remove %s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (!d) return cd_set_error("cannot remove %s: %s", path, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      char *sub = cd_path_join(path, e->d_name);
      rc = cd_rmtree(sub);
      free(sub);
    }
    closedir(d);
    if (rc) return rc;
    if (rmdir(path) != 0) return cd_set_error("cannot remove %s: %s", path, strerror(errno));
    return 0;
  }
  if (unlink(path) != 0 && errno != ENOENT) return cd_set_error("cannot remove %s: %s", path, strerror(errno));
  return 0;
}

int cd_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return cd_set_error("cannot open folder %s: %s", dir, strerror(errno));
  int rc = 0;
  if (fsync(fd) != 0 && errno != EINVAL) rc = cd_set_error("fsync of folder %s failed: %s", dir, strerror(errno));
  close(fd);
  return rc;
}

/* The PID of a name "<base>.tmp.<digits>", or 0; base (up to cap-1 bytes) gets <base>. */
static long tmp_pid(const char *name, char *base, size_t cap) {
  const char *t = strstr(name, ".tmp.");
  if (!t) return 0;
  for (const char *n; (n = strstr(t + 1, ".tmp.")); t = n) {}
  const char *p = t + 5;
  if (!*p) return 0;
  long pid = 0;
  for (; *p; p++) {
    if (*p < '0' || *p > '9' || pid > 100000000L) return 0;
    pid = pid * 10 + (*p - '0');
  }
  snprintf(base, cap, "%.*s", (int)(t - name), name);
  return pid;
}

int cd_remove_stale_tmp(const char *dir, int depth, int (*ours)(const char *name)) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : cd_set_error("cannot read folder %s: %s", dir, strerror(errno));
  int removed = 0, rc = 0;
  struct dirent *e;
  while (!rc && (e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *sub = cd_path_join(dir, e->d_name);
    char base[512];
    long pid = tmp_pid(e->d_name, base, sizeof base);
    struct stat st;
    int is_dir = lstat(sub, &st) == 0 && S_ISDIR(st.st_mode);
    /* kill(pid, 0) fails with ESRCH only when no such process exists */
    if (pid > 0 && pid != (long)getpid() && (!ours || ours(base)) && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
      rc = cd_rmtree(sub);
      if (!rc) {
        removed++;
        cd_log("removed %s, left by a killed run (pid %ld)\n", sub, pid);
      }
    } else if (is_dir && depth > 0) {
      int k = cd_remove_stale_tmp(sub, depth - 1, ours);
      if (k < 0) rc = -1;
      else removed += k;
    }
    free(sub);
  }
  closedir(d);
  return rc ? -1 : removed;
}

int cd_read_file(const char *path, char **data, size_t *n) {
  *data = NULL;
  *n = 0;
  FILE *fp = fopen(path, "rb");
  if (!fp) return cd_set_error("%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  char *buf = cd_malloc(cap);
  for (;;) {
    if (len + 1 >= cap) buf = cd_realloc(buf, cap *= 2);
    size_t k = fread(buf + len, 1, cap - len - 1, fp);
    len += k;
    if (k == 0) break;
  }
  int bad = ferror(fp);
  fclose(fp);
  if (bad) {
    free(buf);
    return cd_set_error("%s: read error", path);
  }
  buf[len] = 0;
  *data = buf;
  *n = len;
  return 0;
}

/* ---- SHA-256 ---- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1;
    d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d;
  h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void cd_sha256_init(cd_sha256_ctx *c) {
  static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, h0, sizeof h0);
  c->nbuf = 0;
  c->nbytes = 0;
}

void cd_sha256_update(cd_sha256_ctx *c, const void *data, size_t n) {
  const uint8_t *p = data;
  c->nbytes += n;
  if (c->nbuf) {
    size_t k = CD_MIN(n, 64 - c->nbuf);
    memcpy(c->buf + c->nbuf, p, k);
    c->nbuf += k; p += k; n -= k;
    if (c->nbuf < 64) return;
    sha256_block(c->h, c->buf);
    c->nbuf = 0;
  }
  for (; n >= 64; p += 64, n -= 64) sha256_block(c->h, p);
  memcpy(c->buf, p, n);
  c->nbuf = n;
}

void cd_sha256_final(cd_sha256_ctx *c, uint8_t out[32]) {
  unsigned long long bits = c->nbytes * 8;
  uint8_t pad[72] = {0x80};
  size_t npad = (c->nbuf < 56 ? 56 : 120) - c->nbuf;
  for (int i = 0; i < 8; i++) pad[npad + i] = (uint8_t)(bits >> (56 - 8 * i));
  cd_sha256_update(c, pad, npad + 8);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (uint8_t)(c->h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
    out[4 * i + 3] = (uint8_t)c->h[i];
  }
}

void cd_sha256(const void *data, size_t n, uint8_t out[32]) {
  cd_sha256_ctx c;
  cd_sha256_init(&c);
  cd_sha256_update(&c, data, n);
  cd_sha256_final(&c, out);
}

void cd_sha256_hex(const uint8_t d[32], char out[65]) {
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hx[d[i] >> 4];
    out[2 * i + 1] = hx[d[i] & 15];
  }
  out[64] = 0;
}

int cd_sha256_file(const char *path, uint8_t out[32]) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return cd_set_error("%s: cannot open: %s", path, strerror(errno));
  cd_sha256_ctx c;
  cd_sha256_init(&c);
  size_t cap = 1 << 20, k;
  uint8_t *buf = cd_malloc(cap);
  while ((k = fread(buf, 1, cap, fp)) > 0) cd_sha256_update(&c, buf, k);
  int bad = ferror(fp);
  fclose(fp);
  free(buf);
  if (bad) return cd_set_error("%s: read error", path);
  cd_sha256_final(&c, out);
  return 0;
}
