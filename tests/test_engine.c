/* test_engine.c - the engine contract: the op registry agrees with the CPU
 * backend's table; nothing outside src/engine touches a node's storage. */
#include <unistd.h>

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

/* Values in and out through the API: y = 2 * (x + w), with errors for what
 * the contract forbids. */
TEST(values_move_through_the_api) {
  float w[3] = {1, 2, 3}, xin[3] = {10, 20, 30}, y[3], g[3];
  cd_graph *g0 = cd_graph_new();
  cd_node *x = cd_input(g0, "x", 1, (int64_t[]){3});
  cd_node *wp = cd_param(g0, "w", w, 1, (int64_t[]){3});
  cd_set_trainable(wp);
  cd_node *s = cd_add(g0, x, wp);
  cd_node *yy = cd_scale(g0, s, 2.0f);
  cd_node *l = cd_sum(g0, yy);
  cd_graph_output(g0, yy);
  CHECK(cd_graph_set_input(g0, x, xin) == -1); /* not planned yet */
  cd_plan_opts po = {.training = 1, .loss = l};
  CHECK_OK(cd_graph_plan(g0, &po));
  CHECK(cd_graph_set_input(g0, wp, xin) == -1); /* a parameter is not an input */
  CHECK(cd_graph_write(g0, x, 2, 2, xin) == -1); /* past the end */
  CHECK_OK(cd_graph_write(g0, x, 0, 1, xin));
  CHECK_OK(cd_graph_write(g0, x, 1, 2, xin + 1));
  CHECK_OK(cd_graph_forward(g0));
  CHECK_OK(cd_graph_get(g0, yy, y));
  for (int i = 0; i < 3; i++) CHECK(y[i] == 2 * (xin[i] + w[i]));
  CHECK(cd_graph_get(g0, s, y) == -1); /* not an output: its buffer was reused */
  CHECK(isnan(cd_graph_get_scalar(g0, s)));
  CHECK(cd_graph_get_scalar(g0, l) == 2 * (60 + 6)); /* the loss is kept, as in a training plan */
  float one;
  CHECK_OK(cd_graph_read(g0, yy, 2, 1, &one));
  CHECK(one == y[2]);
  CHECK_OK(cd_graph_backward(g0));
  CHECK_OK(cd_graph_get_grad(g0, wp, g));
  for (int i = 0; i < 3; i++) CHECK(g[i] == 2.0f);
  CHECK(cd_graph_get_grad(g0, x, g) == -1); /* not a trainable parameter */
  cd_graph_free(g0);
}

/* The compiler, run with the flags the Makefile uses for syntax only;
 * CD_NODE_STORAGE_HIDDEN renames cd_node's data/grad/aux (graph.h). */
#define SYNTAX_CMD "${CC:-cc} -std=c11 -D_GNU_SOURCE -fopenmp -fsyntax-only -Isrc -DCD_NODE_STORAGE_HIDDEN "

/* The mechanism itself: a file that reads n->data compiles normally and fails
 * with the storage hidden (so the check below can fail). */
TEST(storage_hiding_catches_a_read) {
  if (access("src/engine/graph.h", R_OK)) FAILF("run from the project root (src/engine/graph.h not found)");
  const char *f = test_tmpdir("uses_data.c");
  FILE *fp = fopen(f, "w");
  CHECK(fp != NULL);
  fprintf(fp, "#include \"engine/graph.h\"\nfloat first(const cd_node *n) { return n->data[0]; }\n");
  fclose(fp);
  char out[4096], cmd[1024];
  snprintf(cmd, sizeof cmd, "${CC:-cc} -std=c11 -fsyntax-only -Isrc %s 2>&1", f);
  int rc = test_run_cmd(cmd, out, sizeof out);
  if (rc == 127) SKIP("no C compiler (set CC)");
  CHECKF(rc == 0, "plain compile failed: %s", out);
  snprintf(cmd, sizeof cmd, SYNTAX_CMD "%s 2>&1", f);
  rc = test_run_cmd(cmd, out, sizeof out);
  CHECKF(rc != 0 && strstr(out, "data"), "a read of n->data compiled with the storage hidden: %s", out);
}

/* Model, pipeline, trainer, delta, io and CLI code (and the tools and
 * benchmarks that drive whole models) move values through cd_graph_set_input /
 * cd_graph_get: every C file outside src/engine compiles with cd_node's
 * data, grad and aux hidden. A type-aware grep: cd_weight::data and the file
 * readers' tensors keep their own fields. */
TEST(no_node_storage_outside_engine) {
  char out[16384];
  int rc = test_run_cmd("${CC:-cc} --version >/dev/null 2>&1 || echo nocc", out, sizeof out);
  if (rc == 0 && strstr(out, "nocc")) SKIP("no C compiler (set CC)");
  rc = test_run_cmd("find src cli tools bench -name '*.c' -not -path 'src/engine/*' | sort | tr '\\n' ' '", out, sizeof out);
  CHECKF(rc == 0 && strstr(out, "src/models/unet.c") && strstr(out, "src/custom/train.c") && strstr(out, "cli/"),
         "could not list the sources: %s", out);
  static char cmd[20000], res[16384];
  snprintf(cmd, sizeof cmd, SYNTAX_CMD "%s 2>&1", out);
  rc = test_run_cmd(cmd, res, sizeof res);
  CHECKF(rc == 0, "a file outside src/engine touches cd_node storage (use cd_graph_set_input/cd_graph_get):\n%.3000s", res);
  /* and none reaches around the contract through the backend's headers */
  rc = test_run_cmd("grep -ln 'engine/backend.h\\|engine/ops.h\\|engine/cpu/' $(find src cli tools -name '*.[ch]' "
                    "-not -path 'src/engine/*') 2>/dev/null", res, sizeof res);
  CHECKF(res[0] == 0, "files outside src/engine include backend headers: %s", res);
}

int main(void) {
  RUN(registry_matches_cpu_table);
  RUN(registry_sizes_aux);
  RUN(values_move_through_the_api);
  RUN(storage_hiding_catches_a_read);
  RUN(no_node_storage_outside_engine);
  test_tmp_cleanup();
  return test_summary();
}
