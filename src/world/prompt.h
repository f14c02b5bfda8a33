/* prompt.h - what a prompt of the world grammar asks for, so that the judge
 * (judge.h) can check generations against it.
 *
 *   "a big <new1> toy in blue next to a small red ring on a white striped background"
 *   -> objects {robot toy, blue}, {ring, red}; background white, striped
 *
 * Words outside the grammar are ignored; "toy" alone is a toy of unknown kind
 * (kind -1 with is_toy set). new_toy / new_pattern are the modifier tokens
 * that stand for the held-out robot toy and zigzag pattern ("<new1>", "<new2>");
 * "duck" or the third word (nm->toy2, "<new3>") names the held-out duck toy. */
#ifndef CD_WORLD_PROMPT_H
#define CD_WORLD_PROMPT_H

#include "world/world.h"

typedef struct {
  int nobj;
  int kind[2];    /* CD_WORLD_* kind, or -1 */
  int is_toy[2];  /* the word "toy" named it */
  int is_concept[2]; /* a held-out toy (robot, duck) or a toy word: image-alignment, not text */
  int colour[2];  /* -1: not said */
  int bg, pattern; /* -1: not said */
  int pattern_is_concept; /* the pattern was named by the held-out pattern's word: image-alignment */
} cd_world_expect;

void cd_world_parse_prompt(const char *prompt, const char *new_toy, const char *new_pattern, cd_world_expect *e);
/* the same with the third held-out concept's word (the duck toy, "<new3>") */
void cd_world_parse_prompt_names(const char *prompt, const cd_world_names *nm, cd_world_expect *e);

#endif
