/* test_engine.c - the engine contract: the op registry agrees with the CPU
 * backend's table. */
#include "test.h"

#include "engine/backend.h"
#include "engine/ops.h"

/* Every op the registry says has a kernel has a CPU forward; a backward exactly
 * when the registry says gradients flow through it; a scratch function only
 * where the registry allows scratch; names are unique. */
TEST(registry_matches_cpu_table) {
  const cd_backend *be = cd_backend_cpu();
  for (int o = 0; o < CD_OP_COUNT; o++) {
    const cd_op_info *in = &cd_op_table[o];
    const int kern = (in->flags & CD_OPF_KERNEL) != 0;
    CHECKF(in->name && in->name[0], "op %d has no name", o);
    CHECKF(!strcmp(cd_op_name((cd_op)o), in->name), "cd_op_name(%d)", o);
    CHECKF(in->nsrc >= 0 && in->nsrc <= CD_MAX_SRC, "%s: nsrc %d", in->name, in->nsrc);
    CHECKF(kern == (be->forward[o] != NULL), "%s: registry kernel flag %d, cpu forward %s", in->name, kern,
           be->forward[o] ? "present" : "missing");
    const int bwd = kern && (in->flags & CD_OPF_BWD);
    CHECKF(bwd == (be->backward[o] != NULL), "%s: registry backward %d, cpu backward %s", in->name, bwd,
           be->backward[o] ? "present" : "missing");
    CHECKF(!be->scratch[o] || (in->flags & CD_OPF_SCRATCH), "%s: cpu scratch function but no SCRATCH flag", in->name);
    for (int p = 0; p < o; p++) CHECKF(strcmp(cd_op_table[p].name, in->name), "duplicate op name %s", in->name);
  }
  CHECK(!strcmp(cd_op_name(CD_OP_COUNT), "?"));
}

/* aux sizes come from the registry: group norm keeps mean and rstd per
 * (sample, group), attention one log-sum-exp per (batch, head, query). */
TEST(registry_sizes_aux) {
  cd_graph *g = cd_graph_new();
  cd_node *x = cd_input(g, "x", 4, (int64_t[]){2, 8, 3, 3});
  cd_node *y = cd_group_norm(g, x, NULL, NULL, 4, 1e-5f);
  cd_node *q = cd_input(g, "q", 3, (int64_t[]){2, 5, 12});
  cd_node *a = cd_attention(g, q, q, q, 3, 0, 0.5f);
  cd_node *l = cd_layer_norm(g, q, NULL, NULL, 1e-5f);
  cd_graph_output(g, y);
  cd_graph_output(g, a);
  cd_graph_output(g, l);
  CHECK_OK(cd_graph_plan(g, NULL));
  CHECK(y->naux == 2 * 2 * 4);
  CHECK(a->naux == 2 * 3 * 5);
  CHECK(l->naux == 2 * 2 * 5);
  CHECK(x->naux == 0);
  cd_graph_free(g);
}

int main(void) {
  RUN(registry_matches_cpu_table);
  RUN(registry_sizes_aux);
  return test_summary();
}
