/* backend.h - what a compute backend provides to the graph executor.
 *
 * The executor walks the planned graph and calls one kernel per node. The CPU
 * backend (src/engine/cpu) is the reference; a CUDA backend supplies the same
 * table over device memory. Model code only talks to graph.h.
 *
 * Kernel contract:
 *   forward(n):  reads n->src[i]->data (and n->aux if it saves state), writes n->data.
 *   backward(n): reads n->grad (dL/dy), n->data, n->aux and the sources' data;
 *                ACCUMULATES (+=) into n->src[i]->grad for every source whose
 *                grad pointer is non-NULL. Sources with grad == NULL are frozen
 *                or constant: skip their gradient work entirely.
 */
#ifndef CD_BACKEND_H
#define CD_BACKEND_H

#include "graph.h"

typedef void (*cd_kernel)(cd_node *n);

typedef struct {
  const char *name;
  void *(*alloc)(size_t bytes);
  void (*free)(void *p);
  void (*zero)(void *p, size_t bytes);
  cd_kernel forward[CD_OP_COUNT];
  cd_kernel backward[CD_OP_COUNT];
} cd_backend;

const cd_backend *cd_backend_cpu(void);

/* CPU kernels, one group per file in src/engine/cpu/. Each file defines its
 * ops' forward and backward side by side. */
void cd_cpu_conv2d_fwd(cd_node *n);      void cd_cpu_conv2d_bwd(cd_node *n);
void cd_cpu_pad2d_fwd(cd_node *n);       void cd_cpu_pad2d_bwd(cd_node *n);
void cd_cpu_linear_fwd(cd_node *n);      void cd_cpu_linear_bwd(cd_node *n);
void cd_cpu_bmm_fwd(cd_node *n);         void cd_cpu_bmm_bwd(cd_node *n);
void cd_cpu_group_norm_fwd(cd_node *n);  void cd_cpu_group_norm_bwd(cd_node *n);
void cd_cpu_layer_norm_fwd(cd_node *n);  void cd_cpu_layer_norm_bwd(cd_node *n);
void cd_cpu_silu_fwd(cd_node *n);        void cd_cpu_silu_bwd(cd_node *n);
void cd_cpu_gelu_fwd(cd_node *n);        void cd_cpu_gelu_bwd(cd_node *n);
void cd_cpu_quick_gelu_fwd(cd_node *n);  void cd_cpu_quick_gelu_bwd(cd_node *n);
void cd_cpu_geglu_fwd(cd_node *n);       void cd_cpu_geglu_bwd(cd_node *n);
void cd_cpu_attention_fwd(cd_node *n);   void cd_cpu_attention_bwd(cd_node *n);
void cd_cpu_upsample2x_fwd(cd_node *n);  void cd_cpu_upsample2x_bwd(cd_node *n);
void cd_cpu_concat_fwd(cd_node *n);      void cd_cpu_concat_bwd(cd_node *n);
void cd_cpu_add_fwd(cd_node *n);         void cd_cpu_add_bwd(cd_node *n);
void cd_cpu_mul_fwd(cd_node *n);         void cd_cpu_mul_bwd(cd_node *n);
void cd_cpu_scale_fwd(cd_node *n);       void cd_cpu_scale_bwd(cd_node *n);
void cd_cpu_permute_fwd(cd_node *n);     void cd_cpu_permute_bwd(cd_node *n);
void cd_cpu_timestep_embed_fwd(cd_node *n);
void cd_cpu_embedding_fwd(cd_node *n);   void cd_cpu_embedding_bwd(cd_node *n);
void cd_cpu_detach_rows_fwd(cd_node *n); void cd_cpu_detach_rows_bwd(cd_node *n);
void cd_cpu_mse_fwd(cd_node *n);         void cd_cpu_mse_bwd(cd_node *n);
void cd_cpu_sum_fwd(cd_node *n);         void cd_cpu_sum_bwd(cd_node *n);

/* aux layouts (floats, sized by the builders in graph.c):
 *   GROUP_NORM [mean (N*G) | rstd (N*G)], LAYER_NORM [mean (rows) | rstd (rows)],
 *   ATTENTION log-sum-exp [B, H, Tq]. */

#endif
