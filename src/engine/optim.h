/* optim.h - the optimizer inside the engine: AdamW over a training graph's
 * trainable parameters, run by the graph's backend.
 *
 *   cd_optim *o = cd_optim_new(g);          // g: planned with training = 1
 *   cd_optim_add(o, param);                 // each trainable leaf, in a fixed order
 *   ... cd_graph_forward(g); cd_graph_backward(g);
 *   cd_optim_adamw_step(o, &hp, &rep);      // once per step
 *
 * One step, as torch.nn.utils.clip_grad_norm_ followed by torch.optim.AdamW
 * (decoupled weight decay, Loshchilov & Hutter) compute it:
 *   norm  = sqrt(sum over all parameters of g^2)   (the global gradient norm)
 *   coef  = min(1, max_grad_norm / (norm + 1e-6))   (clipping)
 *   t     = t + 1
 *   m     = b1 m + (1 - b1) coef g
 *   v     = b2 v + (1 - b2) (coef g)^2
 *   w     = w (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * in double precision per element, stored as float. A non-finite norm is an
 * error before anything changes; parameters that became non-finite are
 * counted in the report (the finite check).
 *
 * The parameters' values (fp32 master weights), gradients and moments live in
 * the backend: the host sees them only through cd_optim_read/cd_optim_write
 * (checkpoints, resume, deltas).
 */
#ifndef CD_OPTIM_H
#define CD_OPTIM_H

#include <stdint.h>

#include "graph.h"

typedef struct {
  float lr, beta1, beta2, eps, weight_decay;
  float max_grad_norm; /* <= 0: no clipping */
} cd_adamw_opts;

typedef struct {
  double grad_norm;  /* global L2 norm of the gradients, before clipping */
  double clip_coef;  /* factor the gradients were scaled by */
  int64_t nonfinite; /* parameter elements that are not finite after the update */
} cd_optim_report;

typedef struct cd_optim cd_optim;

cd_optim *cd_optim_new(cd_graph *g);
void cd_optim_free(cd_optim *o);
/* A trainable fp32 parameter of o's graph (planned for training); moments
 * start at zero. 0 or -1 + cd_last_error. */
int cd_optim_add(cd_optim *o, cd_node *param);
int cd_optim_count(const cd_optim *o);
cd_node *cd_optim_param(const cd_optim *o, int i);

/* Clip, AdamW-update every parameter, count non-finite results. -1 (nothing
 * changed, report filled) when the gradient norm is not finite. */
int cd_optim_adamw_step(cd_optim *o, const cd_adamw_opts *hp, cd_optim_report *r);
/* Gradient accumulation over K micro-batches: call after the backward of
 * micro-batch k = 0..K-1. The gradients are summed into a backend
 * accumulator, and after the last one each parameter's gradient becomes the
 * mean (sum / K), which cd_optim_adamw_step then uses. K = 1 does nothing. */
int cd_optim_accumulate(cd_optim *o, int k, int K);
/* Only the global gradient norm (no update). */
double cd_optim_grad_norm(cd_optim *o);

int cd_optim_steps(const cd_optim *o); /* updates taken */
void cd_optim_set_steps(cd_optim *o, int steps); /* resume */

/* Data-parallel training (src/dist): the gradients of all parameters as one
 * host bucket of cd_optim_numel() floats, parameter 0 first, so that one
 * in-place all-reduce sums them over the ranks. grads_set writes the bucket
 * back into the backend's gradients (which cd_optim_adamw_step then uses). */
int64_t cd_optim_numel(const cd_optim *o);
/* Parameter i's gradient buffer in the backend's memory (a device pointer on
 * a GPU), for a collective library that reduces it in place (src/dist/nccl.c);
 * NULL when i is out of range. */
float *cd_optim_grad_buffer(const cd_optim *o, int i);
/* The backend o's graph runs on ("cpu", "cuda") and its queue (the CUDA
 * stream the kernels and the optimizer step run on; NULL on the CPU), so
 * that such a collective is ordered before the optimizer step. */
const char *cd_optim_backend_name(const cd_optim *o);
void *cd_optim_stream(const cd_optim *o);
int cd_optim_grads_get(const cd_optim *o, float *bucket);
int cd_optim_grads_set(cd_optim *o, const float *bucket);

/* Host copies of parameter i's state (n floats), for checkpoints and tests. */
typedef enum { CD_OPTIM_VALUE, CD_OPTIM_GRAD, CD_OPTIM_M, CD_OPTIM_V } cd_optim_what;
int cd_optim_read(const cd_optim *o, int i, cd_optim_what what, float *host);
int cd_optim_write(cd_optim *o, int i, cd_optim_what what, const float *host);

#endif
