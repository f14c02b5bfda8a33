/* dist.h - the distributed runtime cdiff uses: MPI when built with
 * `make MPI=1`, else a single process (dist_none.c). One binary runs alone
 * or under mpirun/srun: without a launcher MPI starts as a singleton.
 *
 * Ranks form a "current group": the world at start, or after
 * cd_dist_split() the ranks that passed the same colour (cdiff train
 * --each trains one concept per group). rank/size and every collective
 * refer to the current group; world_rank/world_size to all processes.
 *
 * Collectives return 0, or -1 with cd_last_error() set. A peer that died
 * makes MPI (and so cdiff) abort with mpirun's report; cdiff's own code
 * agrees on failures through cd_dist_agree() so that every rank stops
 * together and with one message.
 */
#ifndef CD_DIST_H
#define CD_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

/* Starts the runtime (MPI_Init); idempotent. 0 or -1. */
int cd_dist_init(int *argc, char ***argv);
/* Ends it (MPI_Finalize); safe without init. */
void cd_dist_finalize(void);
int cd_dist_enabled(void); /* 1: built with MPI */
int cd_dist_rank(void);
int cd_dist_size(void);
int cd_dist_world_rank(void);
int cd_dist_world_size(void);
/* The ranks of the world on this node (MPI_COMM_TYPE_SHARED), and this
 * one's index among them: to share the node's cores, or choose a GPU. */
int cd_dist_local_rank(void);
int cd_dist_local_size(void);
/* Sums x[0..n) over the current group, in place (one MPI_Allreduce, split
 * into pieces of 2^30 elements only beyond that). */
int cd_dist_allreduce_sum_f32(float *x, int64_t n);
int cd_dist_allreduce_sum_f64(double *x, int n);
int cd_dist_barrier(void);
int cd_dist_bcast(void *buf, size_t bytes, int root);
/* Rank 0 of the group receives every rank's `bytes` bytes, rank order, in
 * recv (size * bytes); recv is ignored on the other ranks. */
int cd_dist_gather(const void *send, size_t bytes, void *recv);
/* The current group becomes the ranks of the current group with the same
 * colour (ranked by their old rank). Collective over the current group. */
int cd_dist_split(int color);
/* Back to the world group (after the work of a split group). */
void cd_dist_unsplit(void);
/* Prints "cdiff: rank R: MESSAGE" on stderr and ends the whole job with
 * code (MPI_Abort), or exits when not distributed. */
void cd_dist_abort(int code, const char *fmt, ...) CD_PRINTF(2, 3);

/* Whether every rank of the group is ok: 0 when all are, else -1 on every
 * rank. The lowest failed rank's cd_last_error() is broadcast, so that a
 * rank that was ok (rank 0, which prints) reports "rank R: MESSAGE".
 * Collective; a single process returns ok ? 0 : -1 with its own error. */
int cd_dist_agree(int ok);

/* For the GPU all-reduce (nccl.c): the MPI communicator of the current
 * group as a pointer to an MPI_Comm, NULL without MPI. */
void *cd_dist_comm(void);

#endif
