/* ops.h - what the engine knows about each op, generated from the registry
 * (ops.def): the planner and the backends ask here instead of naming ops. */
#ifndef CD_OPS_H
#define CD_OPS_H

#include "graph.h"

enum {
  CD_OPF_KERNEL = 1,  /* the backend runs a kernel for it (leaves and views need none) */
  CD_OPF_BWD = 2,     /* has a backward: gradients flow through it to its sources */
  CD_OPF_SCRATCH = 4, /* its kernels may use planner-placed scratch (sized by the backend) */
  CD_OPF_ALIAS = 8    /* value and gradient alias the first source (reshape) */
};

typedef struct {
  const char *name;
  int nsrc;  /* source slots */
  int flags; /* CD_OPF_* */
} cd_op_info;

extern const cd_op_info cd_op_table[CD_OP_COUNT];

static inline int cd_op_has(cd_op op, int flag) { return (cd_op_table[op].flags & flag) != 0; }
/* floats of saved state (aux) a built node keeps between forward and backward */
int64_t cd_op_aux_floats(const cd_node *y);

#endif
