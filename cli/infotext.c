/* infotext.c - see infotext.h */
#include "infotext.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put(cli_infotext *t, const char *s, size_t n) {
  if (t->n + n + 1 > t->cap) {
    t->cap = (t->n + n + 1) * 2;
    t->s = cd_realloc(t->s, t->cap);
  }
  memcpy(t->s + t->n, s, n);
  t->n += n;
  t->s[t->n] = 0;
}
static void puts_(cli_infotext *t, const char *s) { put(t, s, strlen(s)); }

void cli_infotext_init(cli_infotext *t, const char *prompt, const char *negative) {
  memset(t, 0, sizeof *t);
  puts_(t, prompt ? prompt : "");
  if (negative && *negative) {
    puts_(t, "\nNegative prompt: ");
    puts_(t, negative);
  }
}

/* A1111's quote(): JSON-escape values its parser would split */
static void put_value(cli_infotext *t, const char *v) {
  if (!strpbrk(v, ",:\n")) {
    puts_(t, v);
    return;
  }
  puts_(t, "\"");
  for (const char *p = v; *p; p++) {
    char e[8];
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') snprintf(e, sizeof e, "\\%c", c);
    else if (c == '\n') snprintf(e, sizeof e, "\\n");
    else if (c == '\t') snprintf(e, sizeof e, "\\t");
    else if (c == '\r') snprintf(e, sizeof e, "\\r");
    else if (c < 0x20) snprintf(e, sizeof e, "\\u%04x", c);
    else e[0] = (char)c, e[1] = 0;
    puts_(t, e);
  }
  puts_(t, "\"");
}

void cli_infotext_add(cli_infotext *t, const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *v = cd_malloc((size_t)(n > 0 ? n : 0) + 1);
  va_start(ap, fmt);
  vsnprintf(v, (size_t)(n > 0 ? n : 0) + 1, fmt, ap);
  va_end(ap);
  puts_(t, t->fields++ ? ", " : "\n");
  puts_(t, key);
  puts_(t, ": ");
  put_value(t, v);
  free(v);
}

void cli_infotext_free(cli_infotext *t) {
  free(t->s);
  memset(t, 0, sizeof *t);
}

const char *cli_a1111_sampler(const char *name) {
  static const char *const map[][2] = {
      {"ddim", "DDIM"},       {"ddpm", "DDPM"},     {"pndm", "PLMS"},           {"euler", "Euler"},
      {"euler_a", "Euler a"}, {"heun", "Heun"},     {"dpm2", "DPM2"},           {"dpmpp_2m", "DPM++ 2M"},
      {"dpmpp_2s_a", "DPM++ 2S a"}, {"dpmpp_sde", "DPM++ SDE"}, {"lcm", "LCM"},
  };
  for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
    if (!strcmp(map[i][0], name)) return map[i][1];
  return name;
}
