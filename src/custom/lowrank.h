/* lowrank.h - low-rank compression of a weight delta ΔW = W − W0 by SVD, as
 * in Custom Diffusion's compressed checkpoints: ΔW ≈ (U·diag(s)) Vᵀ.
 *
 * Rank rule: with singular values s_1 ≥ s_2 ≥ … (computed in float64), the
 * kept rank k is the smallest k with s_1 + … + s_k ≥ ratio · Σ s_i, capped at
 * the numerical rank (the number of s_i > s_1 · max(rows, cols) · DBL_EPSILON).
 * ratio = 1 keeps the numerical rank, so it reproduces ΔW to float precision.
 */
#ifndef CD_LOWRANK_H
#define CD_LOWRANK_H

/* dW [rows, cols] row-major, ratio in (0, 1]. On success sets *rank = k and
 * returns *Us [rows, k] (= U·diag(s)) and *Vt [k, cols], both malloc'ed (free
 * with free(); both NULL when k = 0, i.e. ΔW = 0), and *rel_err =
 * ‖ΔW − Us·Vt‖_F / ‖ΔW‖_F measured with the float factors (0 when ΔW = 0).
 * rel_err may be NULL. Returns 0, or -1 with cd_last_error() set. */
int cd_lowrank(const float *dW, int rows, int cols, double ratio, int *rank, float **Us, float **Vt,
               double *rel_err);

/* W [rows, cols] += Us [rows, k] · Vt [k, cols]; nothing when k = 0. */
void cd_lowrank_apply(const float *Us, const float *Vt, int rows, int cols, int k, float *W);

#endif
