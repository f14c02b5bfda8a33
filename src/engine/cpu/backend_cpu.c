/* backend_cpu.c - the CPU backend's kernel table and memory functions.
 * Kernels are weak references so that a missing one is reported by
 * cd_graph_plan ("no forward kernel for ...") rather than failing the link. */
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "engine/backend.h"

#define W __attribute__((weak))
W void cd_cpu_conv2d_fwd(cd_node *n);      W void cd_cpu_conv2d_bwd(cd_node *n);
W void cd_cpu_pad2d_fwd(cd_node *n);       W void cd_cpu_pad2d_bwd(cd_node *n);
W void cd_cpu_linear_fwd(cd_node *n);      W void cd_cpu_linear_bwd(cd_node *n);
W void cd_cpu_bmm_fwd(cd_node *n);         W void cd_cpu_bmm_bwd(cd_node *n);
W void cd_cpu_group_norm_fwd(cd_node *n);  W void cd_cpu_group_norm_bwd(cd_node *n);
W void cd_cpu_layer_norm_fwd(cd_node *n);  W void cd_cpu_layer_norm_bwd(cd_node *n);
W void cd_cpu_silu_fwd(cd_node *n);        W void cd_cpu_silu_bwd(cd_node *n);
W void cd_cpu_gelu_fwd(cd_node *n);        W void cd_cpu_gelu_bwd(cd_node *n);
W void cd_cpu_quick_gelu_fwd(cd_node *n);  W void cd_cpu_quick_gelu_bwd(cd_node *n);
W void cd_cpu_geglu_fwd(cd_node *n);       W void cd_cpu_geglu_bwd(cd_node *n);
W void cd_cpu_attention_fwd(cd_node *n);   W void cd_cpu_attention_bwd(cd_node *n);
W void cd_cpu_upsample2x_fwd(cd_node *n);  W void cd_cpu_upsample2x_bwd(cd_node *n);
W void cd_cpu_concat_fwd(cd_node *n);      W void cd_cpu_concat_bwd(cd_node *n);
W void cd_cpu_add_fwd(cd_node *n);         W void cd_cpu_add_bwd(cd_node *n);
W void cd_cpu_mul_fwd(cd_node *n);         W void cd_cpu_mul_bwd(cd_node *n);
W void cd_cpu_scale_fwd(cd_node *n);       W void cd_cpu_scale_bwd(cd_node *n);
W void cd_cpu_permute_fwd(cd_node *n);     W void cd_cpu_permute_bwd(cd_node *n);
W void cd_cpu_timestep_embed_fwd(cd_node *n);
W void cd_cpu_embedding_fwd(cd_node *n);   W void cd_cpu_embedding_bwd(cd_node *n);
W void cd_cpu_detach_rows_fwd(cd_node *n); W void cd_cpu_detach_rows_bwd(cd_node *n);
W void cd_cpu_mse_fwd(cd_node *n);         W void cd_cpu_mse_bwd(cd_node *n);
W void cd_cpu_sum_fwd(cd_node *n);         W void cd_cpu_sum_bwd(cd_node *n);

static void *cpu_alloc(size_t n) { return cd_aligned_alloc(n); }
static void cpu_free(void *p) { cd_aligned_free(p); }
static void cpu_zero(void *p, size_t n) { memset(p, 0, n); }

static cd_backend cpu = {.name = "cpu", .alloc = cpu_alloc, .free = cpu_free, .zero = cpu_zero};
static int cpu_ready;

#define K(op, f, b) cpu.forward[op] = f, cpu.backward[op] = b
const cd_backend *cd_backend_cpu(void) {
  if (cpu_ready) return &cpu;
  K(CD_OP_CONV2D, cd_cpu_conv2d_fwd, cd_cpu_conv2d_bwd);
  K(CD_OP_PAD2D, cd_cpu_pad2d_fwd, cd_cpu_pad2d_bwd);
  K(CD_OP_LINEAR, cd_cpu_linear_fwd, cd_cpu_linear_bwd);
  K(CD_OP_BMM, cd_cpu_bmm_fwd, cd_cpu_bmm_bwd);
  K(CD_OP_GROUP_NORM, cd_cpu_group_norm_fwd, cd_cpu_group_norm_bwd);
  K(CD_OP_LAYER_NORM, cd_cpu_layer_norm_fwd, cd_cpu_layer_norm_bwd);
  K(CD_OP_SILU, cd_cpu_silu_fwd, cd_cpu_silu_bwd);
  K(CD_OP_GELU, cd_cpu_gelu_fwd, cd_cpu_gelu_bwd);
  K(CD_OP_QUICK_GELU, cd_cpu_quick_gelu_fwd, cd_cpu_quick_gelu_bwd);
  K(CD_OP_GEGLU, cd_cpu_geglu_fwd, cd_cpu_geglu_bwd);
  K(CD_OP_ATTENTION, cd_cpu_attention_fwd, cd_cpu_attention_bwd);
  K(CD_OP_UPSAMPLE2X, cd_cpu_upsample2x_fwd, cd_cpu_upsample2x_bwd);
  K(CD_OP_CONCAT, cd_cpu_concat_fwd, cd_cpu_concat_bwd);
  K(CD_OP_ADD, cd_cpu_add_fwd, cd_cpu_add_bwd);
  K(CD_OP_MUL, cd_cpu_mul_fwd, cd_cpu_mul_bwd);
  K(CD_OP_SCALE, cd_cpu_scale_fwd, cd_cpu_scale_bwd);
  K(CD_OP_PERMUTE, cd_cpu_permute_fwd, cd_cpu_permute_bwd);
  K(CD_OP_TIMESTEP_EMBED, cd_cpu_timestep_embed_fwd, NULL);
  K(CD_OP_EMBEDDING, cd_cpu_embedding_fwd, cd_cpu_embedding_bwd);
  K(CD_OP_DETACH_ROWS, cd_cpu_detach_rows_fwd, cd_cpu_detach_rows_bwd);
  K(CD_OP_MSE, cd_cpu_mse_fwd, cd_cpu_mse_bwd);
  K(CD_OP_SUM, cd_cpu_sum_fwd, cd_cpu_sum_bwd);
  cpu_ready = 1;
  return &cpu;
}
