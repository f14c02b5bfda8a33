/* failwrite.c - an LD_PRELOAD library that simulates a full disk or a kill in
 * the middle of writing, for tests/test_fault_injection.c.
 *
 * Every call that puts data or metadata of a regular file on disk is a
 * "write event": fwrite, write, pwrite, fflush, fclose, fsync, fdatasync of a
 * regular file, and rename. Events are numbered from 1 in the process.
 *
 *   FAILWRITE_AT=N       from event N on, every event fails with ENOSPC (a
 *                        full disk stays full); a failing fwrite/write still
 *                        writes half of its bytes, as a real short write does
 *   FAILWRITE_MODE=kill  instead: event N writes half of its bytes (if it has
 *                        any) and the process dies of SIGKILL
 *   FAILWRITE_COUNT=F    at exit, writes the number of events seen to file F
 *   FAILWRITE_PATHS=a:b  count only events on files whose path contains one
 *                        of these substrings (for rename: either path)
 *
 * Build: cc -shared -fPIC -o libfailwrite.so failwrite.c -ldl (Makefile).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static long events, fail_at = -1;
static int kill_mode;
static const char *paths; /* FAILWRITE_PATHS, or NULL: every file */

static void init(void) __attribute__((constructor));
static void init(void) {
  const char *a = getenv("FAILWRITE_AT"), *m = getenv("FAILWRITE_MODE"), *p = getenv("FAILWRITE_PATHS");
  if (a && *a) fail_at = atol(a);
  kill_mode = m && !strcmp(m, "kill");
  paths = p && *p ? p : NULL;
}

/* 1 when path contains one of the FAILWRITE_PATHS substrings (or no filter) */
static int path_counts(const char *path) {
  if (!paths) return 1;
  if (!path) return 0;
  for (const char *s = paths; *s;) {
    const char *e = strchr(s, ':');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    if (n && memmem(path, strlen(path), s, n)) return 1;
    s += n + (e ? 1 : 0);
  }
  return 0;
}

static int fd_counts(int fd) {
  if (!paths) return 1;
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return 0;
  target[n] = 0;
  return path_counts(target);
}

#define REAL(ret, name, ...)                           \
  static ret (*real_##name)(__VA_ARGS__);              \
  if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static void fini(void) __attribute__((destructor));
static void fini(void) {
  const char *f = getenv("FAILWRITE_COUNT");
  if (!f || !*f) return;
  REAL(ssize_t, write, int, const void *, size_t);
  int fd = open(f, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", events);
  real_write(fd, buf, (size_t)n);
  close(fd);
}

/* a regular file open for writing (reads, terminals and pipes never count) */
static int is_regular(int fd) {
  struct stat st;
  int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
  return fl >= 0 && (fl & O_ACCMODE) != O_RDONLY && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && fd_counts(fd);
}

/* Counts one event; 1 when it must fail (errno set), after killing the
 * process in kill mode (once half of the bytes are out). */
static int event(void (*half)(void *), void *ctx) {
  long k = ++events;
  if (fail_at < 1 || k < fail_at) return 0;
  if (half) half(ctx);
  if (kill_mode) {
    raise(SIGKILL);
    _exit(137);
  }
  errno = ENOSPC;
  return 1;
}

struct fw_ctx {
  const void *p;
  size_t n;
  FILE *fp;
  size_t done;
};
static void fw_half(void *c_) {
  struct fw_ctx *c = c_;
  REAL(size_t, fwrite, const void *, size_t, size_t, FILE *);
  REAL(int, fflush, FILE *);
  c->done = real_fwrite(c->p, 1, c->n / 2, c->fp);
  real_fflush(c->fp);
}

size_t fwrite(const void *p, size_t size, size_t nmemb, FILE *fp) {
  REAL(size_t, fwrite, const void *, size_t, size_t, FILE *);
  if (!size || !nmemb || !is_regular(fileno(fp))) return real_fwrite(p, size, nmemb, fp);
  struct fw_ctx c = {p, size * nmemb, fp, 0};
  if (event(fw_half, &c)) return c.done / size;
  return real_fwrite(p, size, nmemb, fp);
}

struct w_ctx {
  int fd;
  const void *p;
  size_t n;
  ssize_t done;
};
static void w_half(void *c_) {
  struct w_ctx *c = c_;
  REAL(ssize_t, write, int, const void *, size_t);
  c->done = c->n / 2 ? real_write(c->fd, c->p, c->n / 2) : 0;
}

ssize_t write(int fd, const void *p, size_t n) {
  REAL(ssize_t, write, int, const void *, size_t);
  if (!n || !is_regular(fd)) return real_write(fd, p, n);
  struct w_ctx c = {fd, p, n, 0};
  if (event(w_half, &c)) return c.done > 0 ? c.done : -1;
  return real_write(fd, p, n);
}

ssize_t pwrite(int fd, const void *p, size_t n, off_t off) {
  REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
  if (n && is_regular(fd) && event(NULL, NULL)) return -1;
  return real_pwrite(fd, p, n, off);
}

int fflush(FILE *fp) {
  REAL(int, fflush, FILE *);
  if (fp && is_regular(fileno(fp)) && event(NULL, NULL)) return EOF;
  return real_fflush(fp);
}

int fclose(FILE *fp) {
  REAL(int, fclose, FILE *);
  if (fp && is_regular(fileno(fp)) && event(NULL, NULL)) {
    int e = errno;
    real_fclose(fp); /* the stream is gone either way, as after a failed fclose */
    errno = e;
    return EOF;
  }
  return real_fclose(fp);
}

int fsync(int fd) {
  REAL(int, fsync, int);
  if (is_regular(fd) && event(NULL, NULL)) return -1;
  return real_fsync(fd);
}

int fdatasync(int fd) {
  REAL(int, fdatasync, int);
  if (is_regular(fd) && event(NULL, NULL)) return -1;
  return real_fdatasync(fd);
}

int rename(const char *a, const char *b) {
  REAL(int, rename, const char *, const char *);
  if ((path_counts(a) || path_counts(b)) && event(NULL, NULL)) return -1;
  return real_rename(a, b);
}
