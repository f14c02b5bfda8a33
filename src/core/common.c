/* common.c - errors, allocation, threads, timing, half floats, RNG, hashing. */
#include "common.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static _Thread_local char err_buf[2048];

int cd_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_buf, sizeof err_buf, fmt, ap);
  va_end(ap);
  return -1;
}

int cd_prefix_error(const char *fmt, ...) {
  char pre[1024], old[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  memcpy(old, err_buf, sizeof old);
  snprintf(err_buf, sizeof err_buf, "%.1000s: %.1000s", pre, old);
  return -1;
}

const char *cd_last_error(void) { return err_buf[0] ? err_buf : "unknown error"; }
void cd_clear_error(void) { err_buf[0] = 0; }

static void oom(size_t n) {
  fprintf(stderr, "cdiff: out of memory allocating %zu bytes\n", n);
  abort();
}
void *cd_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}
void *cd_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  return p;
}
void *cd_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}
char *cd_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = cd_malloc(n);
  memcpy(d, s, n);
  return d;
}
void *cd_aligned_alloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64)) oom(n);
  return p;
}
void cd_aligned_free(void *p) { free(p); }

/* OpenBLAS threading is set through its C API when linked against it. */
extern void openblas_set_num_threads(int) __attribute__((weak));

static int n_threads = 0;
void cd_threads_init(void) {
  if (n_threads) return;
  int n = 0;
  const char *e = getenv("CDIFF_THREADS");
  if (e && *e) n = atoi(e);
#ifdef _OPENMP
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
#else
  if (n <= 0) n = 1;
#endif
  if (openblas_set_num_threads) openblas_set_num_threads(n);
  n_threads = n;
}
int cd_threads(void) {
  cd_threads_init();
  return n_threads;
}

void cd_env_tune(int argc, char **argv) {
  (void)argc;
  if (getenv("CDIFF_NO_REEXEC")) return;
  int changed = 0;
  if (!getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    changed = 1;
  }
  if (!getenv("OPENBLAS_CORETYPE")) {
    __builtin_cpu_init();
    const char *core = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
    if (core) {
      setenv("OPENBLAS_CORETYPE", core, 1);
      changed = 1;
    }
  }
  if (!changed) return;
  setenv("CDIFF_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  /* exec failed: carry on with the libraries as they were loaded */
}

double cd_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

size_t cd_peak_rss_bytes(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru)) return 0;
  return (size_t)ru.ru_maxrss * 1024;
}

int cd_verbose = 0;
int cd_silent;

void cd_log(const char *fmt, ...) {
  if (!cd_verbose || cd_silent) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
}
void cd_warn(const char *fmt, ...) {
  if (cd_silent) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("warning: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

void cd_warn_once(const char *fmt, ...) {
  if (cd_silent) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  static uint64_t seen[256]; /* FNV-1a of the messages warned, a ring */
  static int nseen, next;
  const uint64_t h = cd_fnv1a(msg, strlen(msg));
  int fresh = 1;
#pragma omp critical(cd_warn_once)
  {
    for (int i = 0; i < nseen && fresh; i++) fresh = seen[i] != h;
    if (fresh) {
      seen[next] = h;
      next = (next + 1) % 256;
      nseen = CD_MIN(nseen + 1, 256);
    }
  }
  if (fresh) cd_warn("%s", msg);
}

/* IEEE half <-> float, handling subnormals, inf and NaN. */
float cd_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, f;
  if (exp == 0) {
    if (man == 0) f = sign;
    else { /* subnormal: normalise */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; exp--; }
      man &= 0x3ff;
      f = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) f = sign | 0x7f800000u | (man << 13);
  else f = sign | ((exp + 127 - 15) << 23) | (man << 13);
  float r;
  memcpy(&r, &f, 4);
  return r;
}
uint16_t cd_f32_to_f16(float x) {
  uint32_t f;
  memcpy(&f, &x, 4);
  uint32_t sign = (f >> 16) & 0x8000;
  int32_t exp = (int32_t)((f >> 23) & 0xff) - 127 + 15;
  uint32_t man = f & 0x7fffff;
  if (((f >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    man |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
  return (uint16_t)half;
}
float cd_bf16_to_f32(uint16_t h) {
  uint32_t f = (uint32_t)h << 16;
  float r;
  memcpy(&r, &f, 4);
  return r;
}
uint16_t cd_f32_to_bf16(float x) {
  uint32_t f;
  memcpy(&f, &x, 4);
  if ((f & 0x7fffffff) > 0x7f800000) return (uint16_t)((f >> 16) | 0x40);
  f += 0x7fff + ((f >> 16) & 1);
  return (uint16_t)(f >> 16);
}

/* xoshiro256** seeded through splitmix64; normals by Box-Muller. */
static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
void cd_rng_seed(cd_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix(&seed);
  r->has_spare = 0;
  r->spare = 0;
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t cd_rng_u64(cd_rng *r) {
  uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
  return res;
}
double cd_rng_uniform(cd_rng *r) { return (cd_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }
double cd_rng_normal(cd_rng *r) {
  if (r->has_spare) { r->has_spare = 0; return r->spare; }
  double u1, u2;
  do u1 = cd_rng_uniform(r); while (u1 <= 0);
  u2 = cd_rng_uniform(r);
  double m = sqrt(-2.0 * log(u1));
  r->spare = m * sin(2 * M_PI * u2);
  r->has_spare = 1;
  return m * cos(2 * M_PI * u2);
}
void cd_rng_fill_normal(cd_rng *r, float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = (float)cd_rng_normal(r);
}

/* Fast enough that hashing 4 GB of weights costs less than loading them
 * (sha256 took longer). */
uint64_t cd_hash64(const void *data, size_t n, uint64_t lanes[3]) {
  const uint64_t P1 = 0x9e3779b185ebca87ull, P2 = 0xc2b2ae3d27d4eb4full;
  uint64_t v[4] = {P1 + P2, P2, 0, (uint64_t)0 - P1};
  const unsigned char *p = data;
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; l++) {
      uint64_t w;
      memcpy(&w, p + i + 8 * l, 8);
      v[l] = rotl(v[l] + w * P2, 31) * P1;
    }
  uint64_t h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18) + n;
  for (; i < n; i++) h = rotl(h ^ (p[i] * P1), 11) * P2;
  h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P1; h ^= h >> 32;
  if (lanes) memcpy(lanes, v, 3 * sizeof *v);
  return h;
}

uint64_t cd_fnv1a(const void *data, size_t n) {
  const unsigned char *p = data;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int cd_ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcmp(s + n - m, suffix);
}
