/* compress.h - low-rank compression of a Custom Diffusion delta (cdiff
 * compress), as the original repository's compressed checkpoints: for each
 * fine-tuned matrix, ΔW = W_ft − W0 is replaced by SVD factors
 * "<param>.lr_us" [rows, k] and "<param>.lr_vt" [k, cols] (cd_lowrank, rank
 * rule in lowrank.h) and the delta gets lowrank = 1 and ratio. cd_delta_load
 * + cd_delta_resolve turn it back into W0 + Us·Vt.
 */
#ifndef CD_COMPRESS_H
#define CD_COMPRESS_H

#include <stddef.h>

#include "custom/delta.h"
#include "models/sd_model.h"

#define CD_COMPRESS_RATIO 0.6 /* default --ratio, as the original */

typedef struct {
  char name[192];
  int rows, cols; /* cols 0 for a vector (bias) */
  int rank;       /* kept rank k; -1 stored in full (a vector, or factors not smaller, see full_if_larger) */
  double rel_err; /* ‖ΔW − Us·Vt‖_F / ‖ΔW‖_F (0 when stored in full or ΔW = 0) */
  size_t bytes_before, bytes_after; /* payload of this weight, float32 */
} cd_compress_layer;

/* d: a resolved delta (full weights, cd_delta_resolve against m), m: its
 * base model (a model with deltas applied uses its saved base weights).
 * ratio in (0, 1]. A matrix with ΔW = 0 is dropped (the base is what it
 * resolves to anyway). full_if_larger: keep a matrix whole when its factors
 * k·(rows + cols) would not be smaller than rows·cols. Vectors (to_out
 * biases) always stay whole. *out: new delta with lowrank = 1 (cd_delta_save
 * writes only the cdiff file). *layers (may be NULL; free()) gets one record
 * per weight of d, *nlayers their count. */
int cd_delta_compress(const cd_delta *d, const cd_sd_model *m, double ratio, int full_if_larger, cd_delta **out,
                      cd_compress_layer **layers, int *nlayers);

#endif
