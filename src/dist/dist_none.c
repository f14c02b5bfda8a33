/* dist_none.c - the single-process runtime of the default build (no MPI):
 * rank 0 of 1, every collective is the identity. */
#ifndef CD_WITH_MPI
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dist.h"

int cd_dist_init(int *argc, char ***argv) { return 0; }
void cd_dist_finalize(void) {}
int cd_dist_enabled(void) { return 0; }
int cd_dist_rank(void) { return 0; }
int cd_dist_size(void) { return 1; }
int cd_dist_world_rank(void) { return 0; }
int cd_dist_world_size(void) { return 1; }
int cd_dist_local_rank(void) { return 0; }
int cd_dist_local_size(void) { return 1; }
int cd_dist_allreduce_sum_f32(float *x, int64_t n) { return 0; }
int cd_dist_allreduce_sum_f64(double *x, int n) { return 0; }
int cd_dist_barrier(void) { return 0; }
int cd_dist_bcast(void *buf, size_t bytes, int root) { return root == 0 ? 0 : cd_set_error("broadcast from rank %d of 1", root); }
int cd_dist_gather(const void *send, size_t bytes, void *recv) {
  if (recv && recv != send) memcpy(recv, send, bytes);
  return 0;
}
int cd_dist_split(int color) { return 0; }
void cd_dist_unsplit(void) {}
void cd_dist_abort(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("cdiff: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(code);
}
int cd_dist_agree(int ok) { return ok ? 0 : -1; }
void *cd_dist_comm(void) { return NULL; }
#else
typedef int cd_dist_none_unused; /* the MPI build uses dist_mpi.c */
#endif
