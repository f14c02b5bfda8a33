/* merge_solve.h - Custom Diffusion's closed-form multi-concept merge for one
 * projection matrix (a cross-attention to_k / to_v weight), in float64.
 *
 * Given the pretrained weight W0 [rows, d] (rows = output channels, d =
 * context dim), constraint features C [m, d] (text-encoder outputs for the
 * concept prompts, one per row), their targets V [m, rows] (V stacks
 * (W_i C_iᵀ)ᵀ for each fine-tuned W_i) and regularisation features
 * C_reg [r, d] (outputs for many generic captions), the merged weight
 *
 *   Ŵ = argmin ‖(W − W0) C_regᵀ‖_F  subject to  W Cᵀ = Vᵀ
 *     = W0 + (Vᵀ − W0 Cᵀ) (C M⁻¹ Cᵀ)⁻¹ C M⁻¹,   M = C_regᵀ C_reg.
 *
 * Solved with Cholesky factorizations (no explicit inverses). Ridge: when
 * ridge = λ > 0 the m×m system S = C M⁻¹ Cᵀ is replaced by
 *   S + λ · mean(diag(S)) · I
 * (λ is relative to the average diagonal of S, so it is scale-free); the
 * constraint then holds only approximately and the residual says how well.
 */
#ifndef CD_MERGE_SOLVE_H
#define CD_MERGE_SOLVE_H

/* Reciprocal condition numbers (1-norm estimate, LAPACK dpocon) below this
 * make a system count as singular. */
#define CD_MERGE_RCOND_MIN 1e-12

typedef struct {
  double rel_residual;     /* ‖Ŵ Cᵀ − Vᵀ‖_F / ‖Vᵀ‖_F (0 when V = 0 and the residual is 0) */
  double max_abs_residual; /* max |Ŵ Cᵀ − Vᵀ| */
  double rcond;            /* reciprocal condition estimate of S (after the ridge, if any) */
  double rcond_reg;        /* reciprocal condition estimate of M = C_regᵀ C_reg */
} cd_merge_report;

/* Row-major arrays: W0 [rows, d], C [m, d], V [m, rows], Creg [r, d];
 * W_hat [rows, d] is written (it may not alias the inputs). rep may be NULL.
 * ridge = 0 for the exact solve. Returns 0, or -1 with cd_last_error() set
 * (bad sizes, non-finite inputs, M singular: too few / degenerate
 * regularisation features, S singular: too many / dependent constraints). */
int cd_merge_solve(const double *W0, int rows, int d, const double *C, int m, const double *V,
                   const double *Creg, int r, double ridge, double *W_hat, cd_merge_report *rep);

/* G = Xᵀ X [d, d] for X [n, d], exactly symmetric (the M of the merge). */
void cd_merge_gram(const double *X, int n, int d, double *G);

/* Removes duplicate rows from X [m, d] in place, keeping the first of each
 * group, and returns the new row count. Rows i, j are duplicates when
 * ‖x_i − x_j‖₂ ≤ tol · max(‖x_i‖₂, ‖x_j‖₂) (tol = 0: exactly equal;
 * 1e-6 is a good choice for text-encoder features). */
int cd_dedup_rows(double *X, int m, int d, double tol);

/* The same, also removing the same rows from a companion matrix Y [m, dy]
 * (e.g. the targets V of the constraints C); Y may be NULL. Note that when
 * two duplicate constraints have different targets the first one wins. */
int cd_dedup_rows_with(double *X, int m, int d, double *Y, int dy, double tol);

#endif
