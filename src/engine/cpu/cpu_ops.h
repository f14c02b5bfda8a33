/* cpu_ops.h - CPU-backend extras beyond the kernel table in backend.h. */
#ifndef CD_CPU_OPS_H
#define CD_CPU_OPS_H

/* EMBEDDING never crashes on an id outside [0, V + E) or one that is not an
 * integer: it writes a zero row and counts the id here (process-wide,
 * thread-safe). Returns the number of such ids seen since the last reset, so
 * callers that feed user token ids can check it after a forward. */
int cd_cpu_embedding_bad_ids(void);
void cd_cpu_embedding_reset_bad_ids(void);

#endif
