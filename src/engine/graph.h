/* graph.h - the cdiff tensor engine: build a graph once per set of shapes,
 * plan its memory, run forward (and backward) many times.
 *
 *   cd_graph *g = cd_graph_new();
 *   cd_node *x = cd_input(g, "x", 4, (int64_t[]){N, C, H, W});
 *   cd_node *w = cd_param(g, "conv.weight", wdata, 4, (int64_t[]){O, C, 3, 3});
 *   cd_node *y = cd_conv2d(g, x, w, b, 1, 1);
 *   cd_graph_output(g, y);                  // keep y's value after the run
 *   cd_graph_plan(g);                       // shapes fixed, buffers placed
 *   cd_graph_set_input(g, x, host_x);       // inputs live in backend memory
 *   cd_graph_forward(g);
 *   cd_graph_get(g, y, host_y);             // copy the result out
 *   cd_graph_backward(g);                   // grads of trainable params:
 *   cd_graph_get_grad(g, w, host_dw);       //   cd_set_trainable(w) before planning
 *
 * Layout: row-major, ne[0] is the OUTERMOST dimension (like PyTorch shapes):
 * images NCHW, sequences [B, T, C], weights as PyTorch stores them
 * (linear [out, in], conv [out, in, kh, kw]).
 *
 * Memory: a parameter's value is a weight store's backend copy (wstore.h):
 * model weights come from their component's store, cd_param registers the
 * caller's array in the graph's own store (on the CPU both read the host
 * array in place; elsewhere it is uploaded at plan time and again after
 * cd_graph_touch_param). Everything else a kernel touches (values, saved
 * state, gradients, kernel scratch) lives in one arena of backend memory that
 * the planner sizes from the buffers' lifetimes, reusing dead ones. A
 * trainable parameter's gradient is zeroed at the start of each backward and
 * readable (cd_graph_get_grad) until the next forward.
 *
 * Gradients: a node "needs grad" when it is a trainable parameter or depends
 * on one. Backward runs only those nodes, and each op computes only the input
 * gradients that are needed: a frozen weight costs no weight-gradient work but
 * gradients still flow through its op to inputs that need them.
 *
 * Backends: each op has a forward and a backward kernel per backend
 * (cd_backend); the CPU one is the reference. Model code never sees them.
 */
#ifndef CD_GRAPH_H
#define CD_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#define CD_MAX_DIMS 4
#define CD_MAX_SRC 4

/* Ops: generated from the registry (ops.def), which documents each op's
 * sources and parameters. */
typedef enum {
#define CD_OP(E, name, nsrc, flags, aux) CD_OP_##E,
#include "ops.def"
#undef CD_OP
  CD_OP_COUNT
} cd_op;

/* Storage type of a node's value. Every op computes and accumulates in f32
 * and produces f32; 16-bit types are for parameters (weights kept in the
 * checkpoint's f16/bf16), i32 for token ids (ids as floats break in 16-bit:
 * 49408 is not representable in bf16). LINEAR and CONV2D weights and the
 * EMBEDDING table may be 16-bit and EMBEDDING ids i32; any other op given a
 * non-f32 source gets a CAST node in front of it (the builder inserts it).
 * Gradients are f32: a trainable parameter must be f32. */
typedef enum { CD_TYPE_F32 = 0, CD_TYPE_F16, CD_TYPE_BF16, CD_TYPE_I32 } cd_type;
size_t cd_type_size(cd_type t);
const char *cd_type_name(cd_type t); /* "f32", "f16", "bf16", "i32" */
int cd_type_parse(const char *s, cd_type *out); /* "f32"|"f16"|"bf16" -> 0, else -1 */

enum {
  CD_FLAG_INPUT = 1,      /* leaf whose data the caller writes after planning */
  CD_FLAG_PARAM = 2,      /* leaf whose value is a weight store's copy (cd_param, cd_wstore_param) */
  CD_FLAG_TRAINABLE = 4,  /* parameter whose gradient is wanted */
  CD_FLAG_OUTPUT = 8,     /* value kept alive to the end of forward */
  CD_FLAG_NEEDS_GRAD = 16, /* derived: trainable or depends on a trainable node */
  CD_FLAG_BWD = 32         /* derived at plan time: needs grad and reaches the loss
                              (exactly the nodes whose grad buffer the plan places) */
};

typedef struct cd_node cd_node;
struct cd_node {
  cd_op op;
  cd_type type; /* storage type of data (grad and aux are f32) */
  int ndim;
  int64_t ne[CD_MAX_DIMS];
  int64_t n; /* number of elements */
  int nsrc;
  cd_node *src[CD_MAX_SRC];
  int ip[4];
  float fp[2];
  int flags;
  int id;       /* position in the graph's topological order */
  char name[96];

  /* Storage: the engine's and the backend's alone (it may be device memory).
   * Outside src/engine, values move through cd_graph_set_input / cd_graph_get.
   * tests/test_engine.c compiles every other source file with
   * CD_NODE_STORAGE_HIDDEN, which renames these fields, to prove it. */
#ifdef CD_NODE_STORAGE_HIDDEN
#define CD_NODE_PRIV(f) f##_engine_private
#else
#define CD_NODE_PRIV(f) f
#endif
  float *CD_NODE_PRIV(data); /* value: arena, or the weight store's copy for parameters; for a
                                 non-f32 type the memory holds that type (cast the pointer) */
  float *CD_NODE_PRIV(grad); /* gradient of the final scalar w.r.t. this node, when needed */
  float *CD_NODE_PRIV(aux);  /* op-private saved state (e.g. attention log-sum-exp, norm stats) */
  int64_t naux; /* number of floats in aux; set by the builder */

  /* planner bookkeeping */
  int64_t data_off, grad_off, aux_off; /* byte offsets in the arena, -1 if none */
  int64_t scratch_off[2];              /* forward / backward kernel scratch, -1 if none */
  size_t scratch_bytes[2];
  int last_use;                        /* last forward step that reads the value */
  int seg;                             /* activation-checkpoint segment (cd_graph_checkpoint_begin), 0: none */
  struct cd_wstore *wstore;            /* parameters: the store and entry the value comes from, */
  int widx;
  int64_t woff;                        /* from this element on, */
  int wpart;                           /* 1: a part of it (rows of a table), 0: all of it */
};

typedef struct cd_graph cd_graph;

/* ---- construction ---- */
typedef struct cd_backend cd_backend; /* backend.h */
cd_graph *cd_graph_new(void); /* on the CPU backend */
cd_graph *cd_graph_new_on(const cd_backend *be);
void cd_graph_free(cd_graph *g);
/* the backend g runs on: which of a component's weight stores it reads (models/weights.c) */
const cd_backend *cd_graph_backend(const cd_graph *g);

cd_node *cd_input(cd_graph *g, const char *name, int ndim, const int64_t *ne);
/* data: caller-owned fp32 memory, must outlive the graph; registered in the
 * graph's own weight store (model weights come from cd_wstore_param). An
 * optimizer updates the store's copy, which on the CPU is data itself. */
cd_node *cd_param(cd_graph *g, const char *name, float *data, int ndim, const int64_t *ne);
/* same with a storage type: data holds n values of that type */
cd_node *cd_param_typed(cd_graph *g, const char *name, void *data, cd_type type, int ndim, const int64_t *ne);
/* the caller changed the values behind a cd_param node after planning: the
 * next forward uploads them (a no-op on the CPU, which reads them in place) */
int cd_graph_touch_param(cd_graph *g, cd_node *param);
cd_node *cd_input_typed(cd_graph *g, const char *name, cd_type type, int ndim, const int64_t *ne);
void cd_set_trainable(cd_node *param);
void cd_graph_output(cd_graph *g, cd_node *n); /* keep value alive after forward */

/* ops: shapes are checked at build time; a mismatch aborts with a message
 * naming the op and the node names (a model bug, not user input). */
cd_node *cd_view(cd_graph *g, cd_node *x, int ndim, const int64_t *ne);
cd_node *cd_conv2d(cd_graph *g, cd_node *x, cd_node *w, cd_node *b, int stride, int pad);
cd_node *cd_pad2d(cd_graph *g, cd_node *x, int left, int right, int top, int bottom);
cd_node *cd_linear(cd_graph *g, cd_node *x, cd_node *w, cd_node *b);
cd_node *cd_bmm(cd_graph *g, cd_node *a, cd_node *b, int trans_a, int trans_b);
cd_node *cd_group_norm(cd_graph *g, cd_node *x, cd_node *gamma, cd_node *beta, int groups, float eps);
cd_node *cd_layer_norm(cd_graph *g, cd_node *x, cd_node *gamma, cd_node *beta, float eps);
cd_node *cd_silu(cd_graph *g, cd_node *x);
cd_node *cd_gelu(cd_graph *g, cd_node *x);
cd_node *cd_quick_gelu(cd_graph *g, cd_node *x);
cd_node *cd_geglu(cd_graph *g, cd_node *x);
cd_node *cd_attention(cd_graph *g, cd_node *q, cd_node *k, cd_node *v, int heads, int causal, float scale);
cd_node *cd_upsample2x(cd_graph *g, cd_node *x);
/* nearest upsampling to [.., Ho, Wo], Ho in {2H-1, 2H} (the size of a skip connection
 * whose stride-2 downsampling rounded up), likewise Wo */
cd_node *cd_upsample2x_to(cd_graph *g, cd_node *x, int64_t Ho, int64_t Wo);
cd_node *cd_concat(cd_graph *g, cd_node *a, cd_node *b, int dim);
cd_node *cd_add(cd_graph *g, cd_node *a, cd_node *b);
cd_node *cd_mul(cd_graph *g, cd_node *a, cd_node *b);
cd_node *cd_scale(cd_graph *g, cd_node *x, float s);
cd_node *cd_permute(cd_graph *g, cd_node *x, int p0, int p1, int p2, int p3);
cd_node *cd_timestep_embed(cd_graph *g, cd_node *t, int dim, int flip_sin_to_cos, float freq_shift);
cd_node *cd_embedding(cd_graph *g, cd_node *ids, cd_node *table, cd_node *extra);
cd_node *cd_detach_rows(cd_graph *g, cd_node *x, int rows);
cd_node *cd_mse(cd_graph *g, cd_node *pred, cd_node *target, cd_node *mask);
cd_node *cd_sum(cd_graph *g, cd_node *x);

/* ---- planning and execution ---- */
typedef struct {
  int training;        /* plan a backward pass from the scalar node `loss` */
  cd_node *loss;       /* required when training */
  int no_reuse;        /* debug: give every buffer its own space (unplanned execution) */
  int checkpoint;      /* training: recompute the marked segments' forward in backward
                          (activation checkpointing, see cd_graph_checkpoint_begin) */
} cd_plan_opts;

int cd_graph_plan(cd_graph *g, const cd_plan_opts *opts); /* 0 or -1 + cd_last_error */

/* Activation (gradient) checkpointing. The nodes built between
 * cd_graph_checkpoint_begin and the next cd_graph_checkpoint_end (or the next
 * begin) form one segment. Under a training plan with opts.checkpoint, the
 * values and saved state of a segment's nodes live only as long as the forward
 * pass and nodes outside the segment read them; backward, on reaching the
 * segment, first runs again the forward of those of its nodes that the
 * segment's backward reads (and what they need), then the segment's backward.
 * Kernels are deterministic, so gradients are bit for bit those of the plan
 * without checkpointing; the arena keeps only what crosses segment boundaries
 * plus one segment's intermediates. Model builders mark blocks (models/blocks.c);
 * without opts.checkpoint the marks change nothing. */
void cd_graph_checkpoint_begin(cd_graph *g);
void cd_graph_checkpoint_end(cd_graph *g);
/* forward kernels the planned backward runs again (0 without checkpointing) */
int cd_graph_recomputed(const cd_graph *g);
int cd_graph_forward(cd_graph *g);
int cd_graph_backward(cd_graph *g); /* needs a training plan; fills param->grad */

/* ---- values in and out (after cd_graph_plan) ----
 * Values live in backend memory; these copy between it and the host. Inputs
 * (cd_input) can be written; inputs, outputs (cd_graph_output) and parameters
 * read. An output holds the last forward's value until the next forward; a
 * gradient the last backward's until the next backward. 0 or -1 +
 * cd_last_error (not planned, not an input/output, range outside the node). */
int cd_graph_set_input(cd_graph *g, cd_node *n, const float *host);         /* all n->n floats */
int cd_graph_set_input_i32(cd_graph *g, cd_node *n, const int32_t *host);   /* an i32 input (token ids) */
int cd_graph_write(cd_graph *g, cd_node *n, int64_t off, int64_t count, const float *host);
int cd_graph_get(const cd_graph *g, const cd_node *n, float *host);         /* all n->n floats */
int cd_graph_read(const cd_graph *g, const cd_node *n, int64_t off, int64_t count, float *host);
double cd_graph_get_scalar(const cd_graph *g, const cd_node *n);            /* element 0; NaN on error */
/* dL/dparam of a trainable parameter after cd_graph_backward (checkpoints, tests) */
int cd_graph_get_grad(const cd_graph *g, const cd_node *param, float *host);

/* The plan's backend memory: the packed buffers (values, saved state,
 * gradients; affine in the image area, which memory estimates rely on), and
 * after them one scratch region shared by the kernels, as large as the
 * largest kernel's (bounded: conv bands are capped). */
size_t cd_graph_arena_bytes(const cd_graph *g);   /* packed buffers */
size_t cd_graph_scratch_bytes(const cd_graph *g); /* kernel scratch region, on top */
size_t cd_graph_naive_bytes(const cd_graph *g);  /* sum of all buffers (no reuse) */
int cd_graph_nnodes(const cd_graph *g);
cd_node *cd_graph_node(const cd_graph *g, int i);
cd_node *cd_graph_find(const cd_graph *g, const char *name); /* by name, NULL if none */
void cd_node_set_name(cd_node *n, const char *fmt, ...);
/* Record a build error (first one wins; cd_graph_plan reports it) and return
 * a placeholder node so that building can go on without crashing. Used by
 * model code for missing or mis-shaped weights. */
cd_node *cd_graph_fail(cd_graph *g, const char *fmt, ...);

static inline size_t cd_nbytes(const cd_node *n) { return (size_t)n->n * (n->type == CD_TYPE_F16 || n->type == CD_TYPE_BF16 ? 2 : 4); }
int64_t cd_numel(int ndim, const int64_t *ne);
const char *cd_op_name(cd_op op);

#endif
