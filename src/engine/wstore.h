/* wstore.h - model weights registered once per backend, with a version.
 *
 *   cd_wstore *s = cd_wstore_new(be);
 *   int i = cd_wstore_add(s, "conv_in.weight", CD_TYPE_F16, 4, ne, host);  // every weight of a component
 *   cd_wstore_commit(s);                    // one backend allocation, filled by one upload
 *   cd_node *w = cd_wstore_param(g, s, i);  // in any graph on be: all share the backend copy
 *   ... change the host values (a delta, a merge) ... cd_wstore_touch(s, i, NULL);
 *   cd_graph_forward(g);                    // re-uploads weight i only
 *
 * The weights of a store live in one contiguous backend allocation (as llm.c
 * keeps its parameters), each at a 64-byte aligned offset in the order they
 * were added. The first upload copies every run of weights whose host values
 * are laid out the same way (a component loaded into one host block,
 * models/weights.h) with a single copy.
 *
 * Each weight has a version, bumped when its host values change
 * (cd_wstore_touch; cd_wstore_set when its type, shape or host memory
 * changed too) or when the backend changed them itself
 * (cd_wstore_touch_backend: an optimizer step, whose master weights are the
 * store's copy). Every graph that uses a weight syncs the store before each
 * forward: only the weights whose host version is newer than the backend copy
 * are uploaded, and parameter nodes follow a weight whose backend copy moved.
 * Graphs of different shapes (prompt encoding, each decode tile, img2img
 * start, training) read the same copies.
 *
 * On a backend whose memory is host memory (cd_backend.host_memory: the CPU)
 * the store's copy IS the host values: nothing is allocated or copied, and a
 * parameter node reads the host array in place.
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
 * commit and sync). Its index, or -1 + error. After cd_wstore_commit a weight
 * gets its own backend allocation, filled at the next sync. */
int cd_wstore_add(cd_wstore *s, const char *name, cd_type t, int ndim, const int64_t *ne, const void *host);
int cd_wstore_find(const cd_wstore *s, const char *name); /* index or -1 */
int cd_wstore_count(const cd_wstore *s);
const char *cd_wstore_name(const cd_wstore *s, int i);
const cd_backend *cd_wstore_backend(const cd_wstore *s);
/* Places every weight in one backend allocation and uploads them (one copy
 * per run of contiguous host values). Idempotent. */
int cd_wstore_commit(cd_wstore *s);

/* The host values of weight i changed in place (host NULL) or moved to host
 * (same type and shape). */
void cd_wstore_touch(cd_wstore *s, int i, const void *host);
/* Weight i changed type, shape or host memory (a 16-bit weight widened, a
 * token table grown). Its backend copy moves to an allocation of its own
 * when it no longer fits its place; a graph built for the old type or shape
 * fails at its next forward (build a new one). */
int cd_wstore_set(cd_wstore *s, int i, cd_type t, int ndim, const int64_t *ne, const void *host);
/* The backend changed weight i in place (optimizer): the host copy is stale
 * until cd_wstore_download (never on host memory, where they are one). */
void cd_wstore_touch_backend(cd_wstore *s, int i);
int cd_wstore_host_stale(const cd_wstore *s, int i);
uint64_t cd_wstore_version(const cd_wstore *s, int i);
/* Copies the backend values of weight i to host (its type and size). */
int cd_wstore_download(cd_wstore *s, int i, void *host);

/* Parameter node of weight i in g, reading the store's backend copy; g must
 * run on the store's backend and syncs the store before every forward. */
cd_node *cd_wstore_param(cd_graph *g, cd_wstore *s, int i);
/* Parameter node over a contiguous part of weight i: n = numel(ne) values
 * from element off on (rows of a table: the frozen ones and those a training
 * graph updates), named `name`. An optimizer step on it changes weight i. */
cd_node *cd_wstore_param_part(cd_graph *g, cd_wstore *s, int i, int64_t off, int ndim, const int64_t *ne, const char *name);
/* Commits if needed and uploads the weights whose host version is newer than
 * the backend copy; returns how many (or -1 + error). */
int cd_wstore_sync(cd_wstore *s);

/* For the engine: where weight i's value is now (backend memory), and its
 * type and shape, to check a parameter node against. */
void *cd_wstore_ptr(const cd_wstore *s, int i);
/* n can read weight i: its type, its whole shape (off 0), or for a part the
 * same row width and a range inside (rows appended keep the part valid) */
int cd_wstore_matches(const cd_wstore *s, int i, const cd_node *n);

/* Backend bytes the store allocated (the block and weights moved out of it;
 * 0 on host memory, where the weights are the host values). */
size_t cd_wstore_bytes(const cd_wstore *s);

#endif
