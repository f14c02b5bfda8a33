/* common.h - errors, allocation, threads, timing: what every file of cdiff uses.
 *
 * Error convention (SQLite style): functions return 0 on success and -1 on
 * failure after recording a message with cd_set_error(); callers either add
 * context with cd_prefix_error() and return -1, or print cd_last_error().
 */
#ifndef CD_COMMON_H
#define CD_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define CD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CD_PRINTF(a, b)
#endif

/* ---- errors ---- */
int cd_set_error(const char *fmt, ...) CD_PRINTF(1, 2);   /* always returns -1 */
int cd_prefix_error(const char *fmt, ...) CD_PRINTF(1, 2); /* "prefix: old", returns -1 */
const char *cd_last_error(void);
void cd_clear_error(void);

/* ---- allocation (abort on OOM: an allocation failure is not recoverable here) ---- */
void *cd_malloc(size_t n);
void *cd_calloc(size_t n, size_t size);
void *cd_realloc(void *p, size_t n);
char *cd_strdup(const char *s);
void *cd_aligned_alloc(size_t n); /* 64-byte aligned, free with cd_aligned_free */
void cd_aligned_free(void *p);

/* ---- threads ---- */
/* Reads CDIFF_THREADS (default: all cores) once and configures OpenMP and
 * OpenBLAS. Safe to call many times. */
void cd_threads_init(void);
int cd_threads(void);

/* Both OpenBLAS's kernel choice and OpenMP's wait policy are read when the
 * libraries load, before main(). Debian's OpenBLAS 0.3.21 does not recognise
 * recent Xeons and falls back to slow generic kernels, and spinning OpenMP
 * threads steal the cores OpenBLAS needs: when OPENBLAS_CORETYPE or
 * OMP_WAIT_POLICY are unset, this sets them (SkylakeX/Haswell by CPU
 * features; passive) and re-executes the program once. Call first in main(). */
void cd_env_tune(int argc, char **argv);

/* ---- time and memory ---- */
double cd_time(void);          /* monotonic seconds */
size_t cd_peak_rss_bytes(void); /* peak resident set size of the process */

/* ---- logging ---- */
extern int cd_verbose;
/* 1 on the ranks of a distributed run that are not rank 0 (src/dist): they
 * log, warn and draw nothing, so the job prints what one process would. */
extern int cd_silent;
void cd_log(const char *fmt, ...) CD_PRINTF(1, 2);  /* stderr, only if cd_verbose */
void cd_warn(const char *fmt, ...) CD_PRINTF(1, 2); /* stderr, always, "warning: " */
/* cd_warn, but once per distinct message in the process: for a problem met
 * again on every call (a long prompt encoded at every sample or step). The
 * last 256 distinct messages are remembered. */
void cd_warn_once(const char *fmt, ...) CD_PRINTF(1, 2);

/* ---- half precision conversion ---- */
float cd_f16_to_f32(uint16_t h);
uint16_t cd_f32_to_f16(float f);
float cd_bf16_to_f32(uint16_t h);
uint16_t cd_f32_to_bf16(float f);

/* ---- deterministic RNG (Philox-free, simple and seedable) ---- */
typedef struct {
  uint64_t s[4];
  int has_spare;
  double spare;
} cd_rng;
void cd_rng_seed(cd_rng *r, uint64_t seed);
uint64_t cd_rng_u64(cd_rng *r);
double cd_rng_uniform(cd_rng *r); /* [0,1) */
double cd_rng_normal(cd_rng *r);  /* N(0,1) */
void cd_rng_fill_normal(cd_rng *r, float *x, size_t n);

/* ---- hashing ---- */
/* Fast 64-bit digest of n bytes (xxhash-style: four multiply-rotate lanes
 * over 32-byte blocks, then the tail): identification, not security. When
 * lanes is not NULL it receives the first three lane states (the model hash
 * stores them beside the digest). */
uint64_t cd_hash64(const void *data, size_t n, uint64_t lanes[3]);
/* 64-bit FNV-1a, for hash tables keyed by short strings. */
uint64_t cd_fnv1a(const void *data, size_t n);

/* 1 if s ends with suffix */
int cd_ends_with(const char *s, const char *suffix);

#define CD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CD_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
