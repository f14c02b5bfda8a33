/* sysmem.h - how much memory this process may use, how much it uses, and the
 * refusal of a plan that would not fit (instead of an out-of-memory abort
 * halfway through the work).
 *
 * The limit is the smaller of physical RAM (sysconf) and RLIMIT_AS when one is
 * set; CDIFF_MEM_LIMIT (bytes, with an optional K, M, G or T suffix, powers of
 * 1024) replaces it, e.g. to allow swap or to test the refusal. */
#ifndef CD_SYSMEM_H
#define CD_SYSMEM_H

#include <stddef.h>

typedef struct {
  double phys;   /* physical RAM, bytes */
  double as;     /* RLIMIT_AS, bytes, or 0 when unlimited */
  double env;    /* CDIFF_MEM_LIMIT, or 0 when unset */
  double limit;  /* what a plan must fit in */
  char what[160];/* how the limit was found, for messages */
} cd_mem_limit;

/* -1 when CDIFF_MEM_LIMIT is set but malformed (message names it). */
int cd_mem_limit_get(cd_mem_limit *l);
/* Resident and virtual size of this process now (from /proc/self/statm; 0 if unknown). */
void cd_mem_usage(double *rss, double *vm);

/* A size that grows affinely with the image area: fitted through
 * (area1, bytes1) and (area2, bytes2), evaluated at area. */
double cd_mem_affine(double area1, double bytes1, double area2, double bytes2, double area);

/* Refuses `need` more bytes (on top of what the process uses now) when they
 * exceed the limit: the error names what (e.g. "--width 4096 --height 4096"),
 * the estimate with its parts (detail), and the limit. 0 when it fits. */
int cd_mem_check(const char *what, double need, const char *detail);

/* "12.3 GiB" into buf (cap >= 16). */
const char *cd_mem_fmt(double bytes, char *buf, size_t cap);

#endif
