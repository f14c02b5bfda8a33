/* args.c - see args.h */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad(const char *cmd, const char *flag, const char *why, const char *val) {
  fprintf(stderr, "cdiff %s: %s %s%s%s\n", cmd, flag, why, val ? ": " : "", val ? val : "");
  return -1;
}

int cli_parse(int argc, char **argv, cli_opt *opts, const char *cmd, const char **positional) {
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || a[1] != '-') {
      if (positional && !*positional) {
        *positional = a;
        continue;
      }
      return bad(cmd, "argument", "unexpected", a);
    }
    cli_opt *o = NULL;
    for (cli_opt *p = opts; p->name; p++)
      if (!strcmp(p->name, a)) o = p;
    if (!o) return bad(cmd, a, "is not a known flag (see cdiff help)", NULL);
    if (o->type == CLI_FLAG) {
      *(int *)o->dest = 1;
      continue;
    }
    if (i + 1 >= argc) return bad(cmd, a, "needs a value", o->metavar);
    const char *v = argv[++i];
    char *end;
    errno = 0;
    switch (o->type) {
    case CLI_STR: *(const char **)o->dest = v; break;
    case CLI_MULTI: {
      cli_multi *m = o->dest;
      if (m->n >= CLI_MAX_MULTI) return bad(cmd, a, "given too many times", v);
      m->v[m->n++] = v;
      break;
    }
    case CLI_INT: {
      long x = strtol(v, &end, 10);
      if (errno || *end || end == v || x < -2147483647L || x > 2147483647L) return bad(cmd, a, "expects an integer, got", v);
      *(int *)o->dest = (int)x;
      break;
    }
    case CLI_U64: {
      if (v[0] == '-') return bad(cmd, a, "expects a non-negative integer, got", v);
      unsigned long long x = strtoull(v, &end, 10);
      if (errno || *end || end == v) return bad(cmd, a, "expects a non-negative integer, got", v);
      *(uint64_t *)o->dest = x;
      break;
    }
    case CLI_FLOAT: {
      double x = strtod(v, &end);
      if (errno || *end || end == v || !isfinite(x)) return bad(cmd, a, "expects a number, got", v);
      *(float *)o->dest = (float)x;
      break;
    }
    default: break;
    }
  }
  return 0;
}

void cli_usage(const cli_opt *opts, const char *cmd, const char *synopsis) {
  fprintf(stderr, "usage: cdiff %s %s\n", cmd, synopsis ? synopsis : "[flags]");
  for (const cli_opt *p = opts; p->name; p++)
    fprintf(stderr, "  %-22s %-8s %s\n", p->name, p->metavar ? p->metavar : "", p->help ? p->help : "");
}
