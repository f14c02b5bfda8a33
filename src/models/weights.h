/* weights.h - a model component's parameters by name, in fp32.
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
  float *data; /* owned by the store, fp32 */
  int used;    /* set when a graph asked for it: unused keys are unknown keys */
  cd_node *node; /* scratch: last param node made for it */
} cd_weight;

typedef struct cd_weights cd_weights;

cd_weights *cd_weights_new(void);
void cd_weights_free(cd_weights *w);
/* takes ownership of data (allocated with cd_malloc/cd_aligned_alloc... freed with free()) */
int cd_weights_put(cd_weights *w, const char *name, int ndim, const int64_t *ne, float *data);
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
/* Same, for optional weights (biases): NULL when absent. */
cd_node *cd_w_opt(cd_graph *g, cd_weights *w, int ndim, const int64_t *ne, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define CD_SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((int64_t[]){__VA_ARGS__})

#endif
