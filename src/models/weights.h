/* weights.h - a model component's parameters by name.
 *
 * Storage: f32, or f16/bf16 kept as the checkpoint stores them (or as
 * --weights-dtype asks) for tensors of two or more dimensions; the engine
 * widens them blockwise inside its kernels (graph.h, cd_type). Code that needs
 * a weight's values on the host as floats (deltas, merge, training's master
 * weights) calls cd_weight_f32(), which widens that one weight in place.
 *
 * Backend copies: a component's weights are registered in one weight store
 * per backend (engine/wstore.h), made when the first graph on that backend
 * asks for one of them (cd_w), so every graph on it (prompt encoding, the
 * UNet, each decode tile, training) reads the same copy, uploaded once. On the
 * CPU the store's copy is the host array itself. Code that changes a weight's
 * host values says so with cd_weight_changed() (cd_weights_put, cd_weight_f32
 * and cd_weight_narrow do it themselves), and the next graph run re-uploads
 * that weight only. A weight an optimizer changed in the backend is copied
 * back to the host when host code asks for it (cd_weight_f32, cd_weight_row_f32,
 * cd_weight_host).
 *
 * Names are the diffusers module paths (e.g. "down_blocks.0.attentions.0.
 * transformer_blocks.0.attn2.to_k.weight"); loaders of other layouts map
 * their keys to these names once (src/models/checkpoint.c). Model code asks
 * for weights by name with cd_w(), which checks the shape and, when a weight
 * is missing or mis-shaped, records a graph build error naming the key.
 */
#ifndef CD_WEIGHTS_H
#define CD_WEIGHTS_H

#include <stdint.h>

#include "engine/graph.h"

typedef struct {
  char *name;
  int ndim;
  int64_t ne[4];
  cd_type type;  /* CD_TYPE_F32, _F16 or _BF16 */
  float *data;   /* owned by the store: the f32 values, NULL when type is 16-bit */
  uint16_t *h16; /* owned by the store: the 16-bit values when type is f16/bf16 */
  int has_digest;     /* digest holds cd_hash64 of the values as f32 at load (model hash) */
  uint64_t digest[4];
  int used;    /* set when a graph asked for it: unused keys are unknown keys */
  cd_node *node; /* scratch: last param node made for it */
  struct cd_weights *owner; /* the collection, and its index there (its stores' entry) */
  int index;
} cd_weight;

typedef struct cd_weights cd_weights;
struct cd_wstore;

cd_weights *cd_weights_new(void);
void cd_weights_free(cd_weights *w);
/* Loaders: a component's weights in one host block, each at a 64-byte
 * aligned offset in the order they are put (a weight store's layout), so
 * that the store's first upload to a device is one copy. cd_weights_reserve
 * maps address space for at most `bytes` (pages become resident only as
 * values are written); cd_weights_alloc hands out the next place in it (or an
 * allocation of its own when there is no block or no room left), to be passed
 * to cd_weights_put/_put_typed; cd_weights_seal releases the unused tail. A
 * weight later replaced or widened leaves its place (the block is freed as a
 * whole). */
int cd_weights_reserve(cd_weights *w, size_t bytes);
void *cd_weights_alloc(cd_weights *w, size_t bytes);
void cd_weights_seal(cd_weights *w);
size_t cd_weights_block_bytes(const cd_weights *w); /* used bytes of the block (0: none) */
/* src (f32) stored as `type` (narrowed, round to nearest even; 1-D weights
 * stay f32) in a place from cd_weights_alloc */
int cd_weights_put_f32_as(cd_weights *w, const char *name, int ndim, const int64_t *ne, cd_type type, const float *src);
/* takes ownership of data (from cd_weights_alloc, or cd_malloc'd: freed with free()) */
int cd_weights_put(cd_weights *w, const char *name, int ndim, const int64_t *ne, float *data);
/* same for 16-bit values (type CD_TYPE_F16/BF16; data: n uint16_t, owned) */
int cd_weights_put_typed(cd_weights *w, const char *name, int ndim, const int64_t *ne, cd_type type, void *data);
/* the weight's values as f32 (widened in place, once); never NULL */
float *cd_weight_f32(cd_weight *x);
/* f32 values narrowed to `type` (round to nearest even) when the weight has
 * two or more dimensions; 1-D weights (biases, norms) stay f32. */
void cd_weight_narrow(cd_weight *x, cd_type type);
/* row r of a 2-D weight (ne[1] values) as f32, without widening the rest */
void cd_weight_row_f32(const cd_weight *x, int64_t r, float *dst);
/* the host values in their storage type (data or h16), current: an
 * optimizer's change in a backend copy is downloaded first */
void *cd_weight_host(const cd_weight *x);
/* The host values of x changed (in place, or its data/h16/type/ne were
 * replaced): every store re-uploads it before its next graph run. */
int cd_weight_changed(cd_weight *x);
/* The component's store on backend be, made on first use: every weight
 * registered in order and committed (one allocation, one upload per
 * contiguous host block). NULL + error when out of memory. */
struct cd_wstore *cd_weights_store(cd_weights *w, const cd_backend *be);
/* resident bytes of the values */
size_t cd_weight_bytes(const cd_weight *x);
size_t cd_weights_bytes(const cd_weights *w);
cd_weight *cd_weights_get(const cd_weights *w, const char *name);
int cd_weights_count(const cd_weights *w);
cd_weight *cd_weights_at(const cd_weights *w, int i);
int64_t cd_weights_numel(const cd_weights *w); /* total parameters */
void cd_weights_clear_used(cd_weights *w);
/* After a graph was built from all of a component's weights: an error naming
 * the first weight it never asked for (an unknown key in the checkpoint). */
int cd_weights_check_unused(const cd_weights *w, const char *component, const char *path);

/* Parameter node for weight `name` (printf-style) with the expected shape
 * (ndim/ne; ndim 0 skips the check). Records a build error on g if missing
 * or mis-shaped, and returns a placeholder then. */
cd_node *cd_w(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Parameter node over rows [r0, r1) of the 2-D weight `name` (a part of its
 * store copy, cd_wstore_param_part), named "name[r0:r1]": the text encoder's token table split into the
 * frozen rows and the rows a training graph updates. Records a build error
 * on g when the weight is missing, not 2-D or the range is out of bounds. */
cd_node *cd_w_rows(cd_graph *g, cd_weights *w, int64_t r0, int64_t r1, const char *name);
/* Same as cd_w, for optional weights (biases): NULL when absent. */
cd_node *cd_w_opt(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define CD_SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((int64_t[]){__VA_ARGS__})

#endif
