/* ops.c - the op registry's tables, generated from ops.def. */
#include "ops.h"

const cd_op_info cd_op_table[CD_OP_COUNT] = {
#define CD_OP(E, nm, ns, fl, aux) [CD_OP_##E] = {.name = #nm, .nsrc = ns, .flags = fl},
#include "ops.def"
#undef CD_OP
};

const char *cd_op_name(cd_op op) { return op >= 0 && op < CD_OP_COUNT ? cd_op_table[op].name : "?"; }

int64_t cd_op_aux_floats(const cd_node *y) {
  switch (y->op) {
#define CD_OP(E, nm, ns, fl, aux) \
  case CD_OP_##E: return (aux);
#include "ops.def"
#undef CD_OP
  default: return 0;
  }
}
