/* fuzz_tensor_file.c - libFuzzer harness for the checkpoint readers
 * (safetensors, torch zip + restricted unpickler). Build and run:
 *   sh dev/fuzz/run.sh [seconds]
 * Every input must either open or fail with an error; no crash, no leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "io/tensor_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0]) snprintf(path, sizeof path, "/tmp/cdiff_fuzz_%d.bin", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  cd_tensor_file *tf = NULL;
  if (cd_tensor_file_open(path, &tf) == 0) {
    for (int i = 0; i < cd_tf_count(tf); i++) { /* touch every tensor's bytes */
      const cd_tensor_info *t = cd_tf_at(tf, i);
      int64_t n = cd_tensor_numel(t);
      if (n > 0 && n < (1 << 20) && (t->dtype == CD_DT_F32 || t->dtype == CD_DT_F16 || t->dtype == CD_DT_BF16)) {
        float *x = malloc((size_t)n * sizeof(float));
        cd_tf_read_f32(tf, t, x);
        free(x);
      }
    }
    cd_tensor_file_close(tf);
  }
  return 0;
}
