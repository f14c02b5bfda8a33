/* score.c - image- and text-alignment from judge verdicts (see score.h). */
#include "eval/score.h"

#include <math.h>

void cd_eval_score_image(const cd_world_expect *e, const cd_judge_verdict *v, cd_eval_score *s) {
  int concepts = 0, shown = 0;
  for (int k = 0; k < e->nobj; k++) {
    if (e->is_concept[k]) { /* held-out toys (or the kind a toy word stands for): image-alignment */
      int hit = v->kind[e->kind[k]] != 0;
      concepts++;
      shown += hit;
      s->toy_total++, s->toy_hit += hit;
    } else if (e->kind[k] >= 0) {
      int hit = v->kind[e->kind[k]] != 0;
      s->txt_total++, s->kind_total++;
      s->txt_hit += hit, s->kind_hit += hit;
    } else if (e->is_toy[k]) { /* "toy" of no named kind: any toy */
      int hit = v->kind[CD_WORLD_BEAR] || v->kind[CD_WORLD_CAR] || v->kind[CD_WORLD_ROBOT] || v->kind[CD_WORLD_DUCK];
      s->txt_total++, s->kind_total++;
      s->txt_hit += hit, s->kind_hit += hit;
    }
    if (e->colour[k] >= 0) {
      s->txt_total++;
      s->txt_hit += v->colour[e->colour[k]] != 0;
    }
  }
  if (e->pattern_is_concept) {
    int hit = v->pattern == e->pattern;
    concepts++;
    shown += hit;
    s->pat_total++, s->pat_hit += hit;
  } else if (e->pattern >= 0) {
    s->txt_total++;
    s->txt_hit += v->pattern == e->pattern;
  }
  if (e->bg >= 0) {
    s->txt_total++;
    s->txt_hit += v->bg == e->bg;
  }
  if (concepts) {
    s->img_total++;
    s->img_hit += shown == concepts;
  }
}

double cd_binom_tail(int n, int k, double p) {
  if (k <= 0) return 1;
  if (k > n) return 0;
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  /* sum of the pmf in logs (lgamma) from k to n: exact enough for n in the thousands */
  double s = 0;
  for (int i = k; i <= n; i++)
    s += exp(lgamma(n + 1.0) - lgamma(i + 1.0) - lgamma(n - i + 1.0) + i * log(p) + (n - i) * log1p(-p));
  return s > 1 ? 1 : s;
}

/* z with P(Z > z) = alpha for a standard normal, by bisection on erfc */
static double z_upper(double alpha) {
  double lo = 0, hi = 40;
  for (int i = 0; i < 200; i++) {
    double mid = 0.5 * (lo + hi);
    if (0.5 * erfc(mid / sqrt(2.0)) > alpha) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

double cd_binom_margin(int n, double p, double alpha) {
  if (n <= 0) return 1;
  return z_upper(alpha) * sqrt(2 * p * (1 - p) / n) + 1.0 / n;
}
