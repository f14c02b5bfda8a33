/* judge.h - a small classifier that reads a world image's attributes, trained
 * by cdiff on rendered ground truth (held-out concepts included) and
 * independent of the diffusion model: it measures what generations show.
 *
 * Outputs (51 logits in six groups, each read by argmax and trained by softmax
 * cross-entropy; cd_judge_targets marks the true class of each group +1):
 *   two object slots (left object, right object; a single object is the left
 *   one), each: kind (10 kinds + "none") and colour (8; not trained for an
 *   empty slot);
 *   the background colour (8) and pattern (plain, striped, checkered, dotted, zigzag).
 * Network: six 3x3 convolutions (16, 32, 32, 64, 64, 64 channels, strides
 * 1, 2, 1, 2, 2, 2, GroupNorm, SiLU) down to 4x4, then linear 1024 -> 256 ->
 * 51. Training images (every concept, held-out ones included) are blurred
 * (0-2 box-filter passes) and noised (sigma up to 0.08) so that the judge also
 * reads decoded, slightly soft generations.
 */
#ifndef CD_WORLD_JUDGE_H
#define CD_WORLD_JUDGE_H

#include <stdint.h>

#include "models/vae.h"
#include "models/weights.h"
#include "world/world.h"

#define CD_JUDGE_SLOT (CD_WORLD_NKINDS + 1 + CD_WORLD_NCOLOURS) /* kind or none, colour */
#define CD_JUDGE_BG (2 * CD_JUDGE_SLOT)
#define CD_JUDGE_PATTERN (CD_JUDGE_BG + CD_WORLD_NCOLOURS)
#define CD_JUDGE_NOUT (CD_JUDGE_PATTERN + CD_WORLD_NPATTERNS)

typedef struct {
  cd_weights *w;
} cd_judge;

typedef struct {
  int kind[CD_WORLD_NKINDS];     /* 1 if the kind is seen */
  int colour[CD_WORLD_NCOLOURS]; /* 1 if some object has the colour */
  int bg, pattern;               /* most likely background colour and pattern */
} cd_judge_verdict;

int cd_judge_new(uint64_t seed, cd_judge **out);
int cd_judge_load(const char *path, cd_judge **out);
int cd_judge_save(const cd_judge *j, const char *path);
void cd_judge_free(cd_judge *j);

/* img [B, 3, 64, 64] in [-1, 1] -> [B, CD_JUDGE_NOUT] */
cd_node *cd_judge_build(cd_graph *g, cd_judge *j, cd_node *img);
/* the targets (+-1) of a scene */
void cd_judge_targets(const cd_world_scene *s, float *t);
void cd_judge_read(const float *out, cd_judge_verdict *v);

/* Trains from the judge's current weights; *report (may be NULL) receives the
 * held-out accuracy summary. */
typedef struct {
  double kinds, colours, bg, pattern; /* fraction of fresh images read exactly right */
  double robot_hit, robot_false;      /* robot toy seen when there / when not there */
  double duck_hit, duck_false;        /* the same for the duck toy */
  double kind_recall;                 /* fraction of drawn objects whose kind is seen */
} cd_judge_accuracy;
int cd_judge_train(cd_judge *j, int steps, int batch, float lr, uint64_t seed, int quiet);
/* The same, and vae_images of each batch's images (when vae is given) are
 * clean renders passed through that autoencoder (encoded, a posterior sample
 * decoded): generations are decoded by it, and it blurs small shapes more than
 * the box-filter augmentation does. */
typedef struct {
  int steps, batch;
  float lr;
  uint64_t seed;
  int quiet;
  cd_vae *vae;
  int vae_images;
} cd_judge_train_opts;
int cd_judge_train_ex(cd_judge *j, const cd_judge_train_opts *o);
/* accuracy on n fresh CD_WORLD_ANY images from seed, with the training augmentation */
int cd_judge_test(cd_judge *j, int n, uint64_t seed, cd_judge_accuracy *acc);
/* the same on clean renders passed through the autoencoder vae (NULL: cd_judge_test) */
int cd_judge_test_vae(cd_judge *j, int n, uint64_t seed, cd_vae *vae, cd_judge_accuracy *acc);
/* n images [n, 3, 64, 64] -> n verdicts */
int cd_judge_classify(cd_judge *j, const float *rgb, int n, cd_judge_verdict *v);
/* A verdict in words, "star bear toy | colours red blue | background green
 * zigzag" (cdiff judge's line, cdiff eval's per-image file); snprintf's return. */
int cd_judge_verdict_format(const cd_judge_verdict *v, char *out, size_t cap);

#endif
