/* cpu_ops.h - CPU-backend extras beyond the kernel table in backend.h. */
#ifndef CD_CPU_OPS_H
#define CD_CPU_OPS_H

#include <stddef.h>

#include "engine/graph.h"

/* EMBEDDING never crashes on an id outside [0, V + E) or one that is not an
 * integer: it writes a zero row and counts the id here (process-wide,
 * thread-safe). Returns the number of such ids seen since the last reset, so
 * callers that feed user token ids can check it after a forward. */
int cd_cpu_embedding_bad_ids(void);
void cd_cpu_embedding_reset_bad_ids(void);

/* ATTENTION scratch memory in bytes, for reports (bench): what = 0: one score
 * block; 1: forward per thread; 2: backward per thread; 3: forward shared
 * (packed K^T, V); 4: backward shared (packed Q, dO, Di, partial dQ) when q, k
 * and v all need gradients; 0 for anything else. */
size_t cd_cpu_attention_scratch_bytes(const cd_node *n, int what);

#endif
