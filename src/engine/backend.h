/* backend.h - what a compute backend provides to the graph executor.
 *
 * The executor walks the planned graph and calls one kernel per node. The CPU
 * backend (src/engine/cpu, prototypes in cpu/cpu.h) is the reference; a CUDA
 * backend supplies the same table over device memory. Model code only talks
 * to graph.h. The slots are indexed by the op registry (ops.def).
 *
 * Kernel contract:
 *   forward(ctx, n):  reads n->src[i]->data (and n->aux if it saves state),
 *                writes n->data.
 *   backward(ctx, n): reads n->grad (dL/dy), n->data, n->aux and the sources'
 *                data; ACCUMULATES (+=) into n->src[i]->grad for every source
 *                whose grad pointer is non-NULL. Sources with grad == NULL are
 *                frozen or constant: skip their gradient work entirely.
 *   Every byte a kernel touches was allocated by the backend and placed by the
 *   planner: values, aux, gradients, and the scratch in ctx->scratch (as many
 *   bytes as scratch[op](ctx, n, bwd) asked for). Kernels never allocate.
 */
#ifndef CD_BACKEND_H
#define CD_BACKEND_H

#include "graph.h"
#include "ops.h"

typedef struct cd_backend cd_backend;

/* One AdamW step's constants (optim.h), computed once per step in double. */
typedef struct {
  double coef;          /* gradient clipping factor */
  double b1, b2, eps;
  double decay;         /* 1 - lr * weight_decay */
  double step_size;     /* lr / (1 - b1^t) */
  double sbc2;          /* sqrt(1 - b2^t) */
} cd_adamw_args;

/* What a kernel runs with. The executor owns one per graph and sets scratch
 * before each kernel. */
typedef struct {
  const cd_backend *be;
  void *stream;   /* the backend's queue (a CUDA stream); NULL on the CPU */
  void *handles;  /* the backend's library handles (cuBLAS, cuDNN); NULL on the CPU */
  void *state;    /* the backend's per-graph state (CPU: cd_cpu_state) */
  int nthreads;   /* CPU: threads a kernel may use */
  void *scratch;  /* this kernel's scratch, NULL when it asked for none */
  size_t scratch_bytes;
} cd_kernel_ctx;

typedef void (*cd_kernel)(const cd_kernel_ctx *ctx, cd_node *n);
/* bytes of scratch node n's forward (bwd = 0) or backward (bwd = 1) needs */
typedef size_t (*cd_scratch_fn)(const cd_kernel_ctx *ctx, const cd_node *n, int bwd);

struct cd_backend {
  const char *name;
  int host_memory; /* its memory is host memory (the CPU): a weight store uses the host values in place */
  void *(*alloc)(size_t bytes); /* 64-byte aligned backend memory, NULL on failure */
  void (*free)(void *p);
  void (*zero)(const cd_kernel_ctx *ctx, void *p, size_t bytes);
  /* host <-> backend copies (cd_graph_set_input, cd_graph_get) */
  void (*upload)(const cd_kernel_ctx *ctx, void *dst, const void *host, size_t bytes);
  void (*download)(const cd_kernel_ctx *ctx, void *host, const void *src, size_t bytes);
  /* fill ctx's backend fields for a new graph; ctx_free releases them */
  int (*ctx_init)(cd_kernel_ctx *ctx);
  void (*ctx_free)(cd_kernel_ctx *ctx);
  /* CDIFF_PROFILE: the executor brackets each kernel with timer_begin and
   * timer_end, which adds the kernel's seconds to *acc (the op kind's total),
   * possibly later: a CUDA backend records a pair of events and resolves them
   * in timer_flush, which the executor calls at the end of every forward and
   * backward. The CPU reads the clock. */
  void (*timer_begin)(const cd_kernel_ctx *ctx);
  void (*timer_end)(const cd_kernel_ctx *ctx, double *acc);
  void (*timer_flush)(const cd_kernel_ctx *ctx);
  cd_kernel forward[CD_OP_COUNT];
  cd_kernel backward[CD_OP_COUNT];
  cd_scratch_fn scratch[CD_OP_COUNT]; /* NULL: the op needs no scratch */
  /* optimizer ops over one trainable tensor (optim.h):
   * sumsq: *acc += sum of x[i]^2 in double, in index order (the global norm is
   *        one running sum over all parameters);
   * adamw: the update of w, m, v from g (see cd_adamw_args);
   * nonfinite: how many x[i] are NaN or infinite. */
  void (*sumsq)(const cd_kernel_ctx *ctx, const float *x, int64_t n, double *acc);
  void (*adamw)(const cd_kernel_ctx *ctx, const cd_adamw_args *a, float *w, const float *g, float *m, float *v, int64_t n);
  int64_t (*nonfinite)(const cd_kernel_ctx *ctx, const float *x, int64_t n);
  /* accumulate: micro-batch k of K: acc = g (k = 0), acc += g (k > 0), and
   * at k = K-1 also g = acc / K (cd_optim_accumulate) */
  void (*accumulate)(const cd_kernel_ctx *ctx, float *acc, float *g, int64_t n, int k, int K);
  /* Optional (NULL on the CPU). reachable: 1 when the kernels can read p
   * (CUDA: device memory); cd_graph_plan rejects a parameter whose data is
   * not, naming it, instead of letting a kernel fault on a host pointer.
   * finish: called at the end of every forward and backward; nonzero after
   * recording cd_last_error when a kernel failed (CUDA: a launch or device
   * error), which the pass then returns. */
  int (*reachable)(const void *p);
  int (*finish)(const cd_kernel_ctx *ctx);
};

const cd_backend *cd_backend_cpu(void);
/* The backend cd_graph_new() (and code that makes graphs without naming one)
 * uses: the CPU unless cd_backend_set_default chose another (--device). */
const cd_backend *cd_backend_default(void);
void cd_backend_set_default(const cd_backend *be); /* NULL: the CPU */
/* the backend a graph runs on and its kernel context (its backend fields are
 * set by cd_graph_plan): for the engine (optim.c) and a backend's own extras
 * (cpu.h), never for model code */
const cd_backend *cd_graph_backend(const cd_graph *g);
const cd_kernel_ctx *cd_graph_ctx(const cd_graph *g);
/* a parameter node of g whose value is entry i of weight store s (part:
 * from element off on; wstore.c): g syncs s before each forward and follows
 * the entry's backend copy */
struct cd_wstore;
cd_node *cd_graph_param_from(cd_graph *g, const char *name, cd_type type, int ndim, const int64_t *ne, struct cd_wstore *s,
                             int i, int part, int64_t off);
/* a store for a graph's own parameters (cd_param), names need not be unique */
struct cd_wstore *cd_wstore_new_private(const cd_backend *be);

/* For scratch functions, which run before buffers are placed: whether source
 * s will have a gradient buffer when the kernels run (s->grad != NULL then). */
static inline int cd_wants_grad(const cd_node *s) { return s && (s->flags & CD_FLAG_BWD); }

#endif
