/* dist_mpi.c - the MPI runtime of `make MPI=1` (see dist.h). */
#ifdef CD_WITH_MPI
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dist.h"
#include "dist/nccl.h"

static int inited, we_init; /* MPI running; we started it (and so finalize it) */
static MPI_Comm group = MPI_COMM_NULL;
static int g_rank, g_size = 1, w_rank, w_size = 1, l_rank, l_size = 1;

static int mpi_fail(int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return cd_set_error("MPI %s failed: %.*s", what, len, msg);
}

int cd_dist_init(int *argc, char ***argv) {
  if (inited) return 0;
  int flag = 0;
  MPI_Initialized(&flag);
  if (!flag) {
    int rc = MPI_Init(argc, argv);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Init");
    we_init = 1;
  }
  /* errors come back as codes, so a collective's failure has a message */
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  group = MPI_COMM_WORLD;
  MPI_Comm_rank(MPI_COMM_WORLD, &w_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w_size);
  g_rank = w_rank, g_size = w_size;
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w_rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
    MPI_Comm_rank(node, &l_rank);
    MPI_Comm_size(node, &l_size);
    MPI_Comm_free(&node);
  }
  inited = 1;
  return 0;
}

void cd_dist_finalize(void) {
  if (!inited) return;
  cd_dist_unsplit();
  cd_nccl_close();
  int fin = 0;
  MPI_Finalized(&fin);
  if (we_init && !fin) MPI_Finalize();
  inited = 0;
}

int cd_dist_enabled(void) { return 1; }
int cd_dist_rank(void) { return g_rank; }
int cd_dist_size(void) { return g_size; }
int cd_dist_world_rank(void) { return w_rank; }
int cd_dist_world_size(void) { return w_size; }
int cd_dist_local_rank(void) { return l_rank; }
int cd_dist_local_size(void) { return l_size; }

#define PIECE ((int64_t)1 << 30) /* MPI counts are int */

int cd_dist_allreduce_sum_f32(float *x, int64_t n) {
  if (!inited || g_size == 1) return 0;
  for (int64_t o = 0; o < n; o += PIECE) {
    int c = (int)(n - o < PIECE ? n - o : PIECE);
    int rc = MPI_Allreduce(MPI_IN_PLACE, x + o, c, MPI_FLOAT, MPI_SUM, group);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Allreduce of the gradients");
  }
  return 0;
}

int cd_dist_allreduce_sum_f64(double *x, int n) {
  if (!inited || g_size == 1) return 0;
  int rc = MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, group);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Allreduce");
}

int cd_dist_barrier(void) {
  if (!inited || g_size == 1) return 0;
  int rc = MPI_Barrier(group);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Barrier");
}

int cd_dist_bcast(void *buf, size_t bytes, int root) {
  if (!inited || g_size == 1) return root == 0 ? 0 : cd_set_error("broadcast from rank %d of 1", root);
  for (size_t o = 0; o < bytes; o += (size_t)PIECE) {
    int c = (int)(bytes - o < (size_t)PIECE ? bytes - o : (size_t)PIECE);
    int rc = MPI_Bcast((char *)buf + o, c, MPI_BYTE, root, group);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast");
  }
  return 0;
}

int cd_dist_gather(const void *send, size_t bytes, void *recv) {
  if (!inited || g_size == 1) {
    if (recv && recv != send) memcpy(recv, send, bytes);
    return 0;
  }
  if (bytes > (size_t)PIECE) return cd_set_error("MPI gather of %zu bytes per rank: more than 2^30", bytes);
  int rc = MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, 0, group);
  return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "MPI_Gather");
}

int cd_dist_split(int color) {
  if (!inited) return 0;
  cd_nccl_close(); /* its communicator belongs to the old group */
  MPI_Comm c;
  int rc = MPI_Comm_split(group, color, g_rank, &c);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Comm_split");
  MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  if (group != MPI_COMM_WORLD) MPI_Comm_free(&group);
  group = c;
  MPI_Comm_rank(group, &g_rank);
  MPI_Comm_size(group, &g_size);
  return 0;
}

void cd_dist_unsplit(void) {
  if (!inited || group == MPI_COMM_WORLD) return;
  cd_nccl_close();
  MPI_Comm_free(&group);
  group = MPI_COMM_WORLD;
  g_rank = w_rank, g_size = w_size;
}

void cd_dist_abort(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cdiff: rank %d: ", w_rank);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stderr);
  if (inited && w_size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

int cd_dist_agree(int ok) {
  if (!inited || g_size == 1) return ok ? 0 : -1;
  int mine = ok ? g_size : g_rank, first = g_size;
  int rc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, group);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Allreduce (agreement)");
  if (first == g_size) return 0;
  char msg[1024] = "";
  if (g_rank == first) snprintf(msg, sizeof msg, "%s", cd_last_error());
  rc = MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, group);
  if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Bcast (agreement)");
  msg[sizeof msg - 1] = 0;
  if (ok) {
    if (first == 0) return cd_set_error("%s", msg); /* rank 0's own words, as a single process says them */
    return cd_set_error("rank %d of %d: %s", first, g_size, msg);
  }
  return -1;
}

void *cd_dist_comm(void) { return inited ? (void *)&group : NULL; }
#else
typedef int cd_dist_mpi_unused; /* the default build uses dist_none.c */
#endif
