/* prompt.c - reads a world-grammar prompt into the attributes it asks for (see prompt.h). */
#include "world/prompt.h"

#include <stdio.h>
#include <string.h>

#include "world/world.h"

void cd_world_parse_prompt(const char *prompt, const char *new_toy, const char *new_pattern, cd_world_expect *e) {
  cd_world_names nm = {.toy = new_toy, .pattern = new_pattern};
  cd_world_parse_prompt_names(prompt, &nm, e);
}

void cd_world_parse_prompt_names(const char *prompt, const cd_world_names *nm, cd_world_expect *e) {
  const char *new_toy = nm->toy, *new_pattern = nm->pattern, *new_toy2 = nm->toy2;
  memset(e, 0, sizeof *e);
  e->kind[0] = e->kind[1] = e->colour[0] = e->colour[1] = e->bg = e->pattern = -1;
  char buf[512];
  snprintf(buf, sizeof buf, "%s", prompt);
  char *w[96];
  int n = 0;
  for (char *t = strtok(buf, " ,."); t && n < 96; t = strtok(NULL, " ,.")) w[n++] = t;
  int in_bg = 0, pending = -1; /* pending: a colour said before its object */
  for (int i = 0; i < n; i++) {
    int c = cd_world_colour_index(w[i]), k = cd_world_kind_index(w[i]), p = cd_world_pattern_index(w[i]), newp = 0;
    if (new_toy && !strcmp(w[i], new_toy)) k = nm->toy_kind > 0 ? nm->toy_kind : CD_WORLD_ROBOT;
    if (new_toy2 && !strcmp(w[i], new_toy2)) k = nm->toy2_kind > 0 ? nm->toy2_kind : CD_WORLD_DUCK;
    if (new_pattern && !strcmp(w[i], new_pattern)) p = nm->pattern_kind > 0 ? nm->pattern_kind : CD_WORLD_ZIGZAG, newp = 1;
    if (p == CD_WORLD_ZIGZAG) newp = 1; /* "zigzag" written out is the held-out pattern too */
    if (!strcmp(w[i], "on")) { in_bg = 1; continue; }
    if (in_bg || (e->nobj == 0 && p >= 0) || (e->nobj == 0 && !strcmp(w[i], "pattern"))) {
      /* background (or a pattern filling the frame): colour, pattern */
      if (c >= 0) e->bg = c;
      if (p >= 0) e->pattern = p, e->pattern_is_concept = newp;
      if (!strcmp(w[i], "pattern") && e->nobj == 0 && pending >= 0) { e->bg = pending; pending = -1; }
      if (p >= 0 && e->nobj == 0 && pending >= 0) { e->bg = pending; pending = -1; }
      continue;
    }
    if (c >= 0) {
      if (i > 0 && !strcmp(w[i - 1], "in") && e->nobj > 0) e->colour[e->nobj - 1] = c;
      else pending = c;
      continue;
    }
    int toy = !strcmp(w[i], "toy");
    if (k >= 0 || toy) {
      if (toy && i > 0 && e->nobj > 0 && e->is_toy[e->nobj - 1] == 0 && e->kind[e->nobj - 1] >= 0 &&
          (cd_world_kind_index(w[i - 1]) >= 0 || (new_toy && !strcmp(w[i - 1], new_toy)) || (new_toy2 && !strcmp(w[i - 1], new_toy2)))) {
        e->is_toy[e->nobj - 1] = 1; /* "bear toy", "<new1> toy": one object */
        continue;
      }
      if (e->nobj >= 2) continue;
      e->kind[e->nobj] = k;
      e->is_toy[e->nobj] = toy;
      e->is_concept[e->nobj] = k == CD_WORLD_ROBOT || k == CD_WORLD_DUCK || (new_toy && !strcmp(w[i], new_toy)) ||
                               (new_toy2 && !strcmp(w[i], new_toy2));
      e->colour[e->nobj] = pending;
      pending = -1;
      e->nobj++;
    }
  }
}
