/* wstore.h - model weights registered once per backend, with a version.
 *
 *   cd_wstore *s = cd_wstore_new(be);
 *   int i = cd_wstore_add(s, "conv_in.weight", CD_TYPE_F16, 4, ne, host);  // every weight of a component
 *   cd_wstore_commit(s);                    // one backend allocation, filled by one upload
 *   cd_node *w = cd_wstore_param(g, s, i);  // in any graph on be: all share the backend copy
 *   ... change the host values (a delta, a merge) ... cd_wstore_touch(s, i);
 *   cd_graph_forward(g);                    // re-uploads weight i only
 *
 * The weights of a store live in one contiguous backend allocation (as llm.c
 * keeps its parameters), so the first upload is a single copy from a
 * contiguous staging buffer. Each weight has a version, bumped when its host
 * values change (cd_wstore_touch) or when the backend changed them itself
 * (cd_wstore_touch_backend: an optimizer step, whose master weights live in
 * the backend). A graph that uses a weight syncs the store before each run:
 * only the weights whose host version is newer than the backend copy are
 * uploaded. Graphs of different shapes (prompt encoding, each decode tile,
 * img2img start) read the same copies.
 */
#ifndef CD_WSTORE_H
#define CD_WSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "graph.h"

typedef struct cd_wstore cd_wstore;

cd_wstore *cd_wstore_new(const cd_backend *be);
void cd_wstore_free(cd_wstore *s);

/* Registers weight `name` (n values of type t at host, caller-owned, read at
 * commit and sync). Before cd_wstore_commit only. Its index, or -1 + error. */
int cd_wstore_add(cd_wstore *s, const char *name, cd_type t, int ndim, const int64_t *ne, const void *host);
int cd_wstore_find(const cd_wstore *s, const char *name); /* index or -1 */
int cd_wstore_count(const cd_wstore *s);
/* Places every weight in one backend allocation and uploads them (one copy). */
int cd_wstore_commit(cd_wstore *s);

/* The host values of weight i changed (same type and size; host may move). */
void cd_wstore_touch(cd_wstore *s, int i, const void *host);
/* The backend changed weight i in place (optimizer): the host copy is stale
 * until cd_wstore_download. */
void cd_wstore_touch_backend(cd_wstore *s, int i);
uint64_t cd_wstore_version(const cd_wstore *s, int i);
int cd_wstore_download(cd_wstore *s, int i, void *host);

/* Parameter node of weight i in g, reading the store's backend copy; g must
 * run on the store's backend and syncs the store before every forward. */
cd_node *cd_wstore_param(cd_graph *g, cd_wstore *s, int i);
/* Uploads the weights whose host version is newer than the backend copy;
 * returns how many (or -1 + error). */
int cd_wstore_sync(cd_wstore *s);

size_t cd_wstore_bytes(const cd_wstore *s); /* the backend allocation */
/* backend address of committed weight i (NULL if none): for the engine */
void *cd_wstore_data(const cd_wstore *s, int i);

#endif
