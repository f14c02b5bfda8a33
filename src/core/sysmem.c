/* sysmem.c - memory limit, usage and the fit check (see sysmem.h). */
#include "core/sysmem.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/common.h"

const char *cd_mem_fmt(double b, char *buf, size_t cap) {
  if (b >= 1024.0 * 1024 * 1024 * 1024) snprintf(buf, cap, "%.1f TiB", b / (1024.0 * 1024 * 1024 * 1024));
  else if (b >= 1024.0 * 1024 * 1024) snprintf(buf, cap, "%.1f GiB", b / (1024.0 * 1024 * 1024));
  else snprintf(buf, cap, "%.0f MiB", b / (1024.0 * 1024));
  return buf;
}

static int parse_size(const char *s, double *out) {
  char *end;
  double v = strtod(s, &end);
  while (isspace((unsigned char)*end)) end++;
  double mul = 1;
  switch (toupper((unsigned char)*end)) {
  case 'K': mul = 1024.0, end++; break;
  case 'M': mul = 1024.0 * 1024, end++; break;
  case 'G': mul = 1024.0 * 1024 * 1024, end++; break;
  case 'T': mul = 1024.0 * 1024 * 1024 * 1024, end++; break;
  default: break;
  }
  if (toupper((unsigned char)*end) == 'B' || toupper((unsigned char)*end) == 'I') end++;
  if (end == s || *end || !(v > 0)) return -1;
  *out = v * mul;
  return 0;
}

int cd_mem_limit_get(cd_mem_limit *l) {
  memset(l, 0, sizeof *l);
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  l->phys = pages > 0 && psz > 0 ? (double)pages * psz : 0;
  struct rlimit rl;
  if (!getrlimit(RLIMIT_AS, &rl) && rl.rlim_cur != RLIM_INFINITY) l->as = (double)rl.rlim_cur;
  const char *e = getenv("CDIFF_MEM_LIMIT");
  if (e && *e && parse_size(e, &l->env)) return cd_set_error("CDIFF_MEM_LIMIT='%s' is not a size (e.g. 16G)", e);
  char a[32], b[32];
  if (l->env) {
    l->limit = l->env;
    snprintf(l->what, sizeof l->what, "CDIFF_MEM_LIMIT = %s", cd_mem_fmt(l->env, a, sizeof a));
  } else if (l->as && (!l->phys || l->as < l->phys)) {
    l->limit = l->as;
    snprintf(l->what, sizeof l->what, "RLIMIT_AS (ulimit -v) = %s; physical memory %s", cd_mem_fmt(l->as, a, sizeof a),
             cd_mem_fmt(l->phys, b, sizeof b));
  } else {
    l->limit = l->phys;
    snprintf(l->what, sizeof l->what, "physical memory %s%s", cd_mem_fmt(l->phys, a, sizeof a), l->as ? "" : "; RLIMIT_AS unlimited");
  }
  return 0;
}

void cd_mem_usage(double *rss, double *vm) {
  *rss = *vm = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (!f) return;
  unsigned long long size = 0, res = 0;
  if (fscanf(f, "%llu %llu", &size, &res) == 2) {
    long psz = sysconf(_SC_PAGESIZE);
    *vm = (double)size * psz;
    *rss = (double)res * psz;
  }
  fclose(f);
}

double cd_mem_affine(double a1, double b1, double a2, double b2, double a) {
  double slope = a2 != a1 ? (b2 - b1) / (a2 - a1) : 0;
  if (slope < 0) slope = 0;
  return b1 + slope * (a - a1);
}

int cd_mem_check(const char *what, double need, const char *detail) {
  cd_mem_limit l;
  if (cd_mem_limit_get(&l)) return -1;
  double rss, vm;
  cd_mem_usage(&rss, &vm);
  /* RLIMIT_AS counts address space: compare it with the virtual size */
  const double have = l.env ? rss : (l.limit == l.as ? vm : rss);
  char a[32], b[32], c[32];
  cd_log("memory: this plan needs about %s more (%s), %s in use, limit %s (%s)\n", cd_mem_fmt(need, a, sizeof a), detail,
         cd_mem_fmt(have, b, sizeof b), cd_mem_fmt(l.limit, c, sizeof c), l.what);
  if (!l.limit || have + need <= l.limit) return 0;
  return cd_set_error("%s needs about %s of memory (%s; %s already in use), more than this machine allows: %s. "
                      "Use a smaller size, fewer images per batch, --tile for decoding, or set CDIFF_MEM_LIMIT to override",
                      what, cd_mem_fmt(have + need, a, sizeof a), detail, cd_mem_fmt(have, b, sizeof b), l.what);
}
