/* test_engine.c - the engine contract: the op registry agrees with the CPU
 * backend's table; nothing outside src/engine touches a node's storage. */
#include <ctype.h>
#include <stdatomic.h>
#include <unistd.h>

#include "test.h"

#include "engine/backend.h"
#include "engine/ops.h"
#include "io/fsutil.h"

/* ---- a malloc counter (not under ASan, which owns malloc) ----
 * Every allocation in the process goes through these while `counting` is set;
 * glibc's own entry points do the work. A call is the engine's when it comes
 * from this executable's code (the library is linked in statically); the
 * OpenMP runtime and OpenBLAS keep their own pools and are only reported. */
#if !defined(__SANITIZE_ADDRESS__)
#define MALLOC_COUNTER 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);
extern const char __executable_start[], etext[];
static atomic_int counting;
static atomic_long mallocs, lib_mallocs;
#define count_one()                                                                \
  do {                                                                             \
    if (atomic_load_explicit(&counting, memory_order_relaxed)) {                   \
      const char *ra_ = __builtin_return_address(0);                               \
      atomic_fetch_add(ra_ >= __executable_start && ra_ < etext ? &mallocs : &lib_mallocs, 1); \
    }                                                                              \
  } while (0)
void *malloc(size_t n) { count_one(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count_one(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count_one(); return __libc_realloc(p, n); }
void *memalign(size_t al, size_t n) { count_one(); return __libc_memalign(al, n); }
void *aligned_alloc(size_t al, size_t n) { count_one(); return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n) {
  count_one();
  void *p = __libc_memalign(al, n);
  if (!p) return 12; /* ENOMEM */
  *out = p;
  return 0;
}
void free(void *p) { __libc_free(p); }
#endif

/* ---- a test backend: the CPU one, counting the memory calls it gets ---- */
static atomic_long be_allocs, be_frees, be_zeros, be_uploads, be_downloads;
static void *cnt_alloc(size_t n) { atomic_fetch_add(&be_allocs, 1); return cd_backend_cpu()->alloc(n); }
static void cnt_free(void *p) { atomic_fetch_add(&be_frees, 1); cd_backend_cpu()->free(p); }
static void cnt_zero(const cd_kernel_ctx *c, void *p, size_t n) { atomic_fetch_add(&be_zeros, 1); cd_backend_cpu()->zero(c, p, n); }
static void cnt_up(const cd_kernel_ctx *c, void *d, const void *h, size_t n) {
  atomic_fetch_add(&be_uploads, 1);
  cd_backend_cpu()->upload(c, d, h, n);
}
static void cnt_down(const cd_kernel_ctx *c, void *h, const void *d, size_t n) {
  atomic_fetch_add(&be_downloads, 1);
  cd_backend_cpu()->download(c, h, d, n);
}
static atomic_long tm_begin, tm_end, tm_flush;
static void cnt_tbegin(const cd_kernel_ctx *c) {
  atomic_fetch_add(&tm_begin, 1);
  cd_backend_cpu()->timer_begin(c);
}
static void cnt_tend(const cd_kernel_ctx *c, double *acc) {
  atomic_fetch_add(&tm_end, 1);
  cd_backend_cpu()->timer_end(c, acc);
}
static void cnt_tflush(const cd_kernel_ctx *c) { atomic_fetch_add(&tm_flush, 1); }
static cd_backend counting_be;
static const cd_backend *counting_backend(void) {
  counting_be = *cd_backend_cpu();
  counting_be.name = "counting-cpu";
  counting_be.alloc = cnt_alloc;
  counting_be.free = cnt_free;
  counting_be.zero = cnt_zero;
  counting_be.upload = cnt_up;
  counting_be.download = cnt_down;
  counting_be.timer_begin = cnt_tbegin;
  counting_be.timer_end = cnt_tend;
  counting_be.timer_flush = cnt_tflush;
  return &counting_be;
}


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
    CHECKF(!be->scratch[o] == !(kern && (in->flags & CD_OPF_SCRATCH)), "%s: registry SCRATCH flag and cpu scratch function disagree",
           in->name);
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

/* A training graph over every op that uses scratch (3x3 conv with dx and dW,
 * attention with dQ/dK/dV, broadcast add and mul, layer norm with gamma and
 * beta, a linear with a frozen f16 weight widened in panels forward and for
 * dx), big enough for the threaded paths. */
typedef struct {
  cd_graph *g;
  cd_node *x, *qin, *loss, *p[7];
  float *w[7];
  uint16_t wh[32 * 32];
} scratch_net;

static void scratch_net_build(scratch_net *s, const cd_backend *be) {
  s->g = be ? cd_graph_new_on(be) : cd_graph_new();
  cd_graph *g = s->g;
  const int64_t shp[7][4] = {{16, 16, 3, 3}, {16}, {16, 1, 1}, {48, 48}, {32, 32}, {32}, {32}};
  const int nd[7] = {4, 1, 3, 2, 2, 1, 1};
  for (int i = 0; i < 7; i++) {
    int64_t n = cd_numel(nd[i], shp[i]);
    s->w[i] = cd_malloc(n * sizeof(float));
    test_fill_uniform(s->w[i], n, -0.3f, 0.3f, 40 + i);
    s->p[i] = cd_param(g, "p", s->w[i], nd[i], shp[i]);
    cd_set_trainable(s->p[i]);
  }
  s->x = cd_input(g, "x", 4, (int64_t[]){2, 16, 48, 48});
  cd_node *c = cd_conv2d(g, s->x, s->p[0], s->p[1], 1, 1);
  c = cd_mul(g, cd_add(g, c, s->p[2]), s->p[3]);
  s->qin = cd_input(g, "qin", 3, (int64_t[]){4, 256, 32});
  for (int i = 0; i < 32 * 32; i++) s->wh[i] = cd_f32_to_f16(0.01f * (float)((i * 7) % 23 - 11));
  cd_node *wh = cd_param_typed(g, "w_f16", s->wh, CD_TYPE_F16, 2, (int64_t[]){32, 32});
  cd_node *q = cd_linear(g, cd_linear(g, s->qin, s->p[4], NULL), wh, NULL);
  cd_node *a = cd_layer_norm(g, cd_attention(g, q, q, q, 2, 0, 0.25f), s->p[5], s->p[6], 1e-5f);
  s->loss = cd_add(g, cd_sum(g, cd_mul(g, c, c)), cd_sum(g, cd_mul(g, a, a)));
}
static int scratch_net_run(scratch_net *s, float *grads) {
  float *hx = cd_malloc(s->x->n * sizeof(float)), *hq = cd_malloc(s->qin->n * sizeof(float));
  test_fill_uniform(hx, s->x->n, -1, 1, 5);
  test_fill_uniform(hq, s->qin->n, -1, 1, 6);
  int rc = cd_graph_set_input(s->g, s->x, hx) || cd_graph_set_input(s->g, s->qin, hq) || cd_graph_forward(s->g) ||
           cd_graph_backward(s->g);
  for (int i = 0; i < 7 && !rc && grads; i++) {
    rc = cd_graph_get_grad(s->g, s->p[i], grads);
    grads += s->p[i]->n;
  }
  free(hx);
  free(hq);
  return rc ? -1 : 0;
}
static void scratch_net_free(scratch_net *s) {
  cd_graph_free(s->g);
  for (int i = 0; i < 7; i++) free(s->w[i]);
}

/* Kernels never allocate: on a backend that counts its memory calls, the
 * plan allocates and a run (forward + backward) only zeroes gradients and
 * copies inputs in; with the malloc counter, a second run calls malloc zero
 * times anywhere in the process (kernels, their threads, the executor). The
 * results equal the plain CPU backend's bit for bit. */
TEST(no_allocation_while_a_graph_runs) {
  scratch_net a, b;
  scratch_net_build(&a, NULL);
  scratch_net_build(&b, counting_backend());
  cd_plan_opts pa = {.training = 1, .loss = a.loss}, pb = {.training = 1, .loss = b.loss};
  CHECK_OK(cd_graph_plan(a.g, &pa));
  long allocs0 = atomic_load(&be_allocs);
  CHECK_OK(cd_graph_plan(b.g, &pb));
  CHECKF(atomic_load(&be_allocs) > allocs0, "the plan allocated nothing through the backend");
  int scratch_kinds = 0; /* the f16 linear and the conv take scratch both ways */
  for (int i = 0; i < cd_graph_nnodes(b.g); i++) {
    const cd_node *x = cd_graph_node(b.g, i);
    if ((x->op == CD_OP_CONV2D || (x->op == CD_OP_LINEAR && x->src[1]->type == CD_TYPE_F16)) && x->scratch_bytes[0] &&
        x->scratch_bytes[1])
      scratch_kinds++;
  }
  CHECK(cd_graph_scratch_bytes(b.g) > 0);
  CHECKF(scratch_kinds == 2, "%d of the conv and the f16 linear have forward and backward scratch", scratch_kinds);
  int64_t ng = 0;
  for (int i = 0; i < 7; i++) ng += a.p[i]->n;
  float *ga = cd_malloc(ng * sizeof(float)), *gb = cd_malloc(ng * sizeof(float));
  CHECK_OK(scratch_net_run(&a, ga));
  CHECK_OK(scratch_net_run(&b, NULL)); /* warm-up: thread pools and BLAS buffers start */
  const long al = atomic_load(&be_allocs), fr = atomic_load(&be_frees), ze = atomic_load(&be_zeros);
  float *hx = cd_malloc(b.x->n * sizeof(float)), *hq = cd_malloc(b.qin->n * sizeof(float));
  test_fill_uniform(hx, b.x->n, -1, 1, 5);
  test_fill_uniform(hq, b.qin->n, -1, 1, 6);
  CHECK_OK(cd_graph_set_input(b.g, b.x, hx));
  CHECK_OK(cd_graph_set_input(b.g, b.qin, hq));
#ifdef MALLOC_COUNTER
  atomic_store(&mallocs, 0);
  atomic_store(&lib_mallocs, 0);
  atomic_store(&counting, 1);
#endif
  int rc = cd_graph_forward(b.g) || cd_graph_backward(b.g);
#ifdef MALLOC_COUNTER
  atomic_store(&counting, 0);
  long nm = atomic_load(&mallocs);
#endif
  CHECK(rc == 0);
  CHECKF(atomic_load(&be_allocs) == al && atomic_load(&be_frees) == fr, "the run allocated or freed backend memory");
  CHECKF(atomic_load(&be_zeros) > ze, "gradients were not zeroed through the backend");
#ifdef MALLOC_COUNTER
  CHECKF(nm == 0, "%ld malloc calls from cdiff's code while the graph ran", nm);
  printf("  (runtime libraries: %ld malloc calls during the run)\n", atomic_load(&lib_mallocs));
#endif
  float *p = gb;
  for (int i = 0; i < 7; i++) {
    CHECK_OK(cd_graph_get_grad(b.g, b.p[i], p));
    p += b.p[i]->n;
  }
  CHECK(!memcmp(ga, gb, ng * sizeof(float)));
  double gn = 0;
  for (int64_t i = 0; i < ng; i++) gn += fabs(ga[i]);
  CHECK(gn > 0);
  free(hx);
  free(hq);
  free(ga);
  free(gb);
  scratch_net_free(&a);
  scratch_net_free(&b);
}

/* CDIFF_PROFILE times every kernel through the backend's timer (bracketing
 * each kernel, flushed after each pass) and prints the time per op kind when
 * the graph is freed; without it the timer is never called. */
TEST(profile_uses_the_backend_timer) {
  for (int prof = 0; prof < 2; prof++) {
    if (prof) setenv("CDIFF_PROFILE", "1", 1);
    else unsetenv("CDIFF_PROFILE");
    scratch_net s;
    scratch_net_build(&s, counting_backend());
    if (prof) unsetenv("CDIFF_PROFILE"); /* read when the graph is made */
    cd_plan_opts po = {.training = 1, .loss = s.loss};
    CHECK_OK(cd_graph_plan(s.g, &po));
    long kernels = 0;
    for (int i = 0; i < cd_graph_nnodes(s.g); i++) {
      const cd_node *x = cd_graph_node(s.g, i);
      if (cd_op_has(x->op, CD_OPF_KERNEL)) kernels += 1 + ((x->flags & CD_FLAG_BWD) != 0);
    }
    atomic_store(&tm_begin, 0);
    atomic_store(&tm_end, 0);
    atomic_store(&tm_flush, 0);
    CHECK_OK(scratch_net_run(&s, NULL));
    CHECKF(atomic_load(&tm_begin) == (prof ? kernels : 0) && atomic_load(&tm_end) == atomic_load(&tm_begin),
           "profile %d: timer begin %ld end %ld for %ld kernels", prof, atomic_load(&tm_begin), atomic_load(&tm_end), kernels);
    CHECK(atomic_load(&tm_flush) == (prof ? 2 : 0));
    /* the report, on stderr when the graph is freed */
    const char *path = test_tmpdir("profile.txt");
    fflush(stderr);
    int saved = dup(2);
    FILE *fp = fopen(path, "w");
    CHECK(fp && saved >= 0);
    dup2(fileno(fp), 2);
    scratch_net_free(&s);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(fp);
    char *txt = NULL;
    size_t n = 0;
    CHECK_OK(cd_read_file(path, &txt, &n));
    const int has = strstr(txt, "attention") && strstr(txt, "backward") && strstr(txt, "conv2d");
    free(txt);
    CHECKF(has == prof, "profile %d: report %s", prof, has ? "printed" : "missing");
  }
}

/* docs/architecture.md's backend table names every field of cd_backend
 * (backend.h), so the description cannot fall behind the code. */
TEST(docs_name_every_backend_field) {
  char *h = NULL, *doc = NULL;
  size_t nh = 0, nd = 0;
  CHECK_OK(cd_read_file("src/engine/backend.h", &h, &nh));
  CHECK_OK(cd_read_file("docs/architecture.md", &doc, &nd));
  char *p = strstr(h, "struct cd_backend {"), *end = p ? strstr(p, "\n};") : NULL;
  int fields = 0;
  char missing[512] = "";
  for (char *line = p ? strchr(p, '\n') : NULL; line && line < end; line = strchr(line + 1, '\n')) {
    const char *l = line + 1;
    while (*l == ' ') l++;
    if (*l == '/' || *l == '*') continue; /* comment */
    char name[64] = "";
    const char *f = strstr(l, "(*"), *semi = strchr(l, ';');
    if (!semi || semi > end) continue;
    if (f && f < semi) sscanf(f + 2, "%63[A-Za-z0-9_]", name);
    else { /* "type name;" or "type name[N];": the last identifier before ';' or '[' */
      const char *e = memchr(l, '[', semi - l) ? memchr(l, '[', semi - l) : semi, *b = e;
      while (b > l && (isalnum((unsigned char)b[-1]) || b[-1] == '_')) b--;
      snprintf(name, sizeof name, "%.*s", (int)(e - b), b);
    }
    if (!name[0]) continue;
    fields++;
    char quoted[80];
    snprintf(quoted, sizeof quoted, "`%s`", name);
    if (!strstr(doc, quoted)) snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %s", name);
  }
  free(h);
  free(doc);
  CHECKF(fields >= 10, "found only %d fields of struct cd_backend in backend.h", fields);
  CHECKF(!missing[0], "docs/architecture.md does not name backend fields:%s", missing);
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
  RUN(no_allocation_while_a_graph_runs);
  RUN(profile_uses_the_backend_timer);
  RUN(docs_name_every_backend_field);
  RUN(storage_hiding_catches_a_read);
  RUN(no_node_storage_outside_engine);
  test_tmp_cleanup();
  return test_summary();
}
