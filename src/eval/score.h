/* score.h - the Custom Diffusion paper's two measures on the synthetic world,
 * from the judge's verdicts (world/judge.h) against what each prompt asks for
 * (world/prompt.h):
 *   image-alignment: of the images whose prompt names held-out concepts
 *                    (<new1> robot toy, <new2> zigzag pattern, <new3> duck
 *                    toy), the fraction that show all of them;
 *   text-alignment:  of every other attribute the prompts ask for (object
 *                    kinds, object colours, background colour and pattern),
 *                    the fraction the images show.
 * And the statistics that say when one image-alignment beats another. */
#ifndef CD_EVAL_SCORE_H
#define CD_EVAL_SCORE_H

#include "world/judge.h"
#include "world/prompt.h"

typedef struct {
  double img_hit, img_total; /* images that name a concept / that show all it names */
  double txt_hit, txt_total; /* other attributes asked for / shown */
  double kind_hit, kind_total; /* of those, the named pretraining kinds (and "toy"): can the model draw a shape on request */
  /* each named concept apart, whatever else the image shows: which of two concepts a
   * composition loses */
  double toy_hit, toy_total; /* named concept objects (<new1>, <new3>) / shown */
  double pat_hit, pat_total; /* named <new2> patterns / shown */
} cd_eval_score;

/* adds one image's verdict against its prompt's expectation */
void cd_eval_score_image(const cd_world_expect *e, const cd_judge_verdict *v, cd_eval_score *s);

/* Upper tail of the binomial distribution: P(X >= k) for X ~ Bin(n, p). */
double cd_binom_tail(int n, int k, double p);

/* One-sided test that a proportion a of n images beats a proportion b of the
 * same number of images: the smallest margin a - b (in hits / n) that a
 * difference of independent binomials under the null "both have the pooled
 * rate p" exceeds with probability at most alpha (normal approximation of the
 * difference, sd sqrt(2 p (1 - p) / n), plus a continuity correction 1/n).
 * For the CI concept test: with n = 40 and p near 0.5, alpha = 1e-3 needs a
 * margin of about 0.37. */
double cd_binom_margin(int n, double p, double alpha);

#endif
