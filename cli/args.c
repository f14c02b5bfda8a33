/* args.c - see args.h */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>


/* ---- the flags every command takes ---- */
static int g_help, g_verbose, g_threads;
static cli_opt common[] = {
    {"--help", CLI_FLAG, &g_help, "", "this help (on stdout)", "-h"},
    {"--verbose", CLI_FLAG, &g_verbose, "", "log what is loaded and planned (= CDIFF_VERBOSE=1)", "-v"},
    {"--threads", CLI_INT, &g_threads, "N", "CPU threads (default: CDIFF_THREADS, else all cores)", "-t", CLI_RANGE(1, 4096)},
    {0}};

/* 1 if s[0..n) is one of o's spellings */
static int spelled(const cli_opt *o, const char *s, size_t n) {
  if (strlen(o->name) == n && !strncmp(o->name, s, n)) return 1;
  for (const char *a = o->alias; a && *a;) {
    size_t k = strcspn(a, " ");
    if (k == n && !strncmp(a, s, n)) return 1;
    a += k;
    while (*a == ' ') a++;
  }
  return 0;
}

static cli_opt *find(cli_opt *opts, const char *s, size_t n) {
  for (cli_opt *o = opts; o && o->name; o++)
    if (spelled(o, s, n)) return o;
  for (cli_opt *o = common; o->name; o++)
    if (spelled(o, s, n)) return o;
  return NULL;
}

/* "-s, --seed N": short aliases, the name, long aliases, then the metavar */
static void flag_column(const cli_opt *o, char *buf, size_t cap) {
  size_t k = 0;
  buf[0] = 0;
  for (int pass = 0; pass < 3; pass++) {
    if (pass == 1) {
      k += snprintf(buf + k, k < cap ? cap - k : 0, "%s%s", k ? ", " : "", o->name);
      continue;
    }
    for (const char *a = o->alias; a && *a;) {
      size_t n = strcspn(a, " ");
      int is_short = a[1] != '-';
      if ((pass == 0) == is_short && k < cap) k += snprintf(buf + k, cap - k, "%s%.*s", k ? ", " : "", (int)n, a);
      a += n;
      while (*a == ' ') a++;
    }
  }
  if (o->metavar && *o->metavar && k < cap) snprintf(buf + k, cap - k, " %s", o->metavar);
}

static void help_line(FILE *f, const cli_opt *o) {
  char col[160];
  flag_column(o, col, sizeof col);
  if (strlen(col) <= 30) fprintf(f, "  %-30s %s\n", col, o->help ? o->help : "");
  else fprintf(f, "  %s\n  %-30s %s\n", col, "", o->help ? o->help : "");
}

void cli_help(FILE *f, const cli_opt *opts, const cli_cmd *cmd) {
  fprintf(f, "usage: cdiff %s %s\n\n", cmd->name, cmd->synopsis ? cmd->synopsis : "[flags]");
  for (const cli_opt *o = opts; o && o->name; o++) help_line(f, o);
  fprintf(f, "\nevery command:\n");
  for (const cli_opt *o = common; o->name; o++) help_line(f, o);
  fprintf(f, "\nexit status: 0 done, 1 failed, 2 usage error (the flag's line is printed)\n");
}

static int usage_fail(const cli_opt *o, const cli_cmd *cmd, const char *fmt, ...) CD_PRINTF(3, 4);
static int usage_fail(const cli_opt *o, const cli_cmd *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "cdiff %s: ", cmd->name);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  if (o) help_line(stderr, o);
  else fprintf(stderr, "usage: cdiff %s %s\n", cmd->name, cmd->synopsis ? cmd->synopsis : "[flags]");
  return CLI_EXIT_USAGE;
}

int cli_error(const cli_opt *opts, const cli_cmd *cmd, const char *flag, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const cli_opt *o = flag ? find((cli_opt *)opts, flag, strlen(flag)) : NULL;
  return usage_fail(o, cmd, "%s%s%s", flag ? flag : "", flag ? " " : "", msg);
}

int cli_error_msg(const cli_opt *opts, const cli_cmd *cmd, const char *msg) {
  const cli_opt *o = NULL;
  for (const char *p = strstr(msg, "--"); p && !o; p = strstr(p + 2, "--"))
    o = find((cli_opt *)opts, p, strspn(p, "-abcdefghijklmnopqrstuvwxyz0123456789_"));
  return usage_fail(o, cmd, "%s", msg);
}

int cli_given(const cli_opt *opts, const char *flag) {
  const cli_opt *o = find((cli_opt *)opts, flag, strlen(flag));
  return o && o->seen > 0;
}

void cli_warn_unused(const cli_opt *opts, const char *flag, const char *why) {
  if (cli_given(opts, flag)) cd_warn("%s has no effect %s", flag, why);
}

/* ---- strict numbers: sign, digits, optional fraction and exponent; nothing else ---- */
static int is_int_text(const char *s, int sign_ok) {
  if (sign_ok && (*s == '-' || *s == '+')) s++;
  if (!*s) return 0;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return 0;
  return 1;
}

static int is_float_text(const char *s) {
  if (*s == '-' || *s == '+') s++;
  int digits = 0;
  while (*s >= '0' && *s <= '9') s++, digits++;
  if (*s == '.') {
    s++;
    while (*s >= '0' && *s <= '9') s++, digits++;
  }
  if (!digits) return 0;
  if (*s == 'e' || *s == 'E') {
    s++;
    if (*s == '-' || *s == '+') s++;
    if (*s < '0' || *s > '9') return 0;
    while (*s >= '0' && *s <= '9') s++;
  }
  return *s == 0;
}

static int check_range(const cli_opt *o, const cli_cmd *cmd, const char *as, double x, const char *v) {
  int low = (o->has_lo == 1 && x < o->lo) || (o->has_lo == 2 && x <= o->lo), high = o->has_hi && x > o->hi;
  if (!low && !high) return 0;
  if (o->has_lo && o->has_hi)
    return usage_fail(o, cmd, "%s must be in %s%g..%g (got %s)", as, o->has_lo == 2 ? ">" : "", o->lo, o->hi, v);
  if (low) return usage_fail(o, cmd, "%s must be %s %g (got %s)", as, o->has_lo == 2 ? ">" : ">=", o->lo, v);
  return usage_fail(o, cmd, "%s must be <= %g (got %s)", as, o->hi, v);
}

static uint64_t random_seed(void) {
  uint32_t r;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16);
  return r; /* 32 bits, as other generators print them */
}

/* stores the value v of flag o (spelled as `as`); 0 or 2 */
static int set_value(cli_opt *o, const cli_cmd *cmd, const char *as, const char *v) {
  switch (o->type) {
  case CLI_STR:
    if (o->choices) {
      size_t n = strlen(v);
      const char *c = o->choices;
      while (*c && !(strcspn(c, "|") == n && !strncmp(c, v, n))) c += strcspn(c, "|") + (c[strcspn(c, "|")] == '|');
      if (!*c) return usage_fail(o, cmd, "%s must be one of %s (got '%s')", as, o->choices, v);
    }
    *(const char **)o->dest = v;
    return 0;
  case CLI_MULTI: {
    cli_multi *m = o->dest;
    if (m->n >= CLI_MAX_MULTI) return usage_fail(o, cmd, "%s given more than %d times", as, CLI_MAX_MULTI);
    m->v[m->n++] = v;
    return 0;
  }
  case CLI_INT: {
    errno = 0;
    long x = is_int_text(v, 1) ? strtol(v, NULL, 10) : 0;
    if (!is_int_text(v, 1) || errno || x < -2147483647L || x > 2147483647L)
      return usage_fail(o, cmd, "%s expects an integer, got '%s'", as, v);
    if (check_range(o, cmd, as, (double)x, v)) return CLI_EXIT_USAGE;
    *(int *)o->dest = (int)x;
    return 0;
  }
  case CLI_SEED:
    if (!strcmp(v, "-1")) {
      *(uint64_t *)o->dest = random_seed();
      fprintf(stderr, "%s -1: random seed %llu\n", as, (unsigned long long)*(uint64_t *)o->dest);
      return 0;
    }
    /* fall through */
  case CLI_U64: {
    errno = 0;
    unsigned long long x = is_int_text(v, 0) ? strtoull(v, NULL, 10) : 0;
    if (!is_int_text(v, 0) || errno)
      return usage_fail(o, cmd, "%s expects a non-negative integer%s, got '%s'", as, o->type == CLI_SEED ? " (or -1: random)" : "", v);
    if (check_range(o, cmd, as, (double)x, v)) return CLI_EXIT_USAGE;
    *(uint64_t *)o->dest = x;
    return 0;
  }
  case CLI_FLOAT: {
    double x = is_float_text(v) ? strtod(v, NULL) : NAN;
    if (!isfinite(x) || fabs(x) > 3.4e38) return usage_fail(o, cmd, "%s expects a finite number, got '%s'", as, v);
    if (check_range(o, cmd, as, x, v)) return CLI_EXIT_USAGE;
    *(float *)o->dest = (float)x;
    return 0;
  }
  case CLI_FLAG: break;
  }
  return 0;
}

/* table bugs (a spelling defined twice) fail every run of the command, so tests catch them */
static int check_table(const cli_opt *opts, const cli_cmd *cmd) {
  for (const cli_opt *o = opts; o && o->name; o++) {
    char col[160];
    flag_column(o, col, sizeof col);
    char *save = NULL;
    for (char *s = strtok_r(col, ", ", &save); s; s = strtok_r(NULL, ", ", &save)) {
      if (s[0] != '-') continue; /* the metavar */
      int n = 0;
      for (const cli_opt *p = opts; p->name; p++) n += spelled(p, s, strlen(s));
      for (const cli_opt *p = common; p->name; p++) n += spelled(p, s, strlen(s));
      if (n != 1) {
        fprintf(stderr, "cdiff %s: internal error: flag %s is defined %d times\n", cmd->name, s, n);
        return -1;
      }
    }
  }
  return 0;
}

static size_t edit_distance(const char *a, const char *b) {
  size_t n = strlen(b), d[64];
  if (n >= 64 || strlen(a) >= 64) return 99;
  for (size_t j = 0; j <= n; j++) d[j] = j;
  for (size_t i = 1; a[i - 1]; i++) {
    size_t prev = d[0];
    d[0] = i;
    for (size_t j = 1; j <= n; j++) {
      size_t t = d[j], sub = prev + (a[i - 1] != b[j - 1]);
      d[j] = CD_MIN(CD_MIN(d[j] + 1, d[j - 1] + 1), sub);
      prev = t;
    }
  }
  return d[n];
}

static int unknown_flag(cli_opt *opts, const cli_cmd *cmd, const char *a, size_t n) {
  char flag[64];
  snprintf(flag, sizeof flag, "%.*s", (int)CD_MIN(n, sizeof flag - 1), a);
  const cli_opt *best = NULL;
  size_t bd = 99;
  for (int t = 0; t < 2; t++)
    for (const cli_opt *o = t ? common : opts; o && o->name; o++) {
      char col[160];
      flag_column(o, col, sizeof col);
      char *save = NULL;
      for (char *s = strtok_r(col, ", ", &save); s; s = strtok_r(NULL, ", ", &save)) {
        size_t d = s[0] == '-' ? edit_distance(flag, s) : 99;
        if (d < bd) bd = d, best = o;
      }
    }
  if (best && bd <= 2 + strlen(flag) / 6) return usage_fail(best, cmd, "unknown flag %s; did you mean:", flag);
  return usage_fail(NULL, cmd, "unknown flag %s (cdiff %s --help lists them)", flag, cmd->name);
}

int cli_split_words(int argc, char **argv, cli_opt *opts, char **flags, const char **words, int *nwords) {
  int nf = 0, nw = 0, done = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!done && !strcmp(a, "--")) {
      done = 1;
      continue;
    }
    if (done || a[0] != '-' || !a[1]) {
      words[nw++] = a;
      continue;
    }
    flags[nf++] = argv[i];
    const cli_opt *o = strchr(a, '=') ? NULL : find(opts, a, strlen(a));
    if (o && o->type != CLI_FLAG && i + 1 < argc) flags[nf++] = argv[++i];
  }
  *nwords = nw;
  return nf;
}

int cli_parse(int argc, char **argv, cli_opt *opts, const cli_cmd *cmd, const char **positional) {
  if (check_table(opts, cmd)) return CLI_EXIT_USAGE;
  int flags_done = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!flags_done && !strcmp(a, "--")) {
      flags_done = 1;
      continue;
    }
    if (flags_done || a[0] != '-' || !a[1]) {
      if (positional && !*positional) {
        *positional = a;
        continue;
      }
      return usage_fail(NULL, cmd, "unexpected argument '%s'", a);
    }
    const char *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a) : strlen(a);
    cli_opt *o = find(opts, a, n);
    if (!o) return unknown_flag(opts, cmd, a, n);
    char as[64];
    snprintf(as, sizeof as, "%.*s", (int)CD_MIN(n, sizeof as - 1), a);
    if (o->type == CLI_FLAG) {
      if (eq) return usage_fail(o, cmd, "%s takes no value (got '%s')", as, eq + 1);
      *(int *)o->dest = 1;
      o->seen++;
      continue;
    }
    const char *v;
    if (eq) v = eq + 1;
    else if (i + 1 < argc) v = argv[++i];
    else return usage_fail(o, cmd, "%s needs a value (%s)", as, o->metavar ? o->metavar : "");
    if (set_value(o, cmd, as, v)) return CLI_EXIT_USAGE;
    o->seen++;
  }
  if (g_help) {
    cli_help(stdout, opts, cmd);
    return fflush(stdout) == 0 ? 0 : 1;
  }
  for (cli_opt *o = opts; o && o->name; o++)
    if (o->required && !o->seen) return usage_fail(o, cmd, "%s is required", o->name);
  if (g_verbose) cd_verbose = 1;
  if (g_threads > 0) {
    char t[16];
    snprintf(t, sizeof t, "%d", g_threads);
    setenv("CDIFF_THREADS", t, 1);
  }
  cd_threads_init();
  cd_log("cdiff %s: %d thread(s)", cmd->name, cd_threads());
  return CLI_GO;
}
