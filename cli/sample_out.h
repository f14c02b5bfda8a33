/* sample_out.h - where `cdiff sample` writes its images, decided (and the
 * folder made) before any sampling, so that a bad --out costs nothing and no
 * image ever replaces an earlier one.
 *
 *   --out DIR       (an existing folder, a path ending in '/', or a path
 *                    without an image extension when --n > 1): the folder is
 *                    created; image i is DIR/NNNNN-SEED-prompt-slug.png with a
 *                    running counter NNNNN after the highest one already there.
 *   --out FILE.png  one image; --n > 1 gives FILE_0.png, FILE_1.png, ...;
 *                   an existing file is replaced only with --overwrite.
 */
#ifndef CD_CLI_SAMPLE_OUT_H
#define CD_CLI_SAMPLE_OUT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *out;
  int is_dir;
  int overwrite;
  long next; /* folder: counter of the next image */
  char slug[64];
} sample_out;

/* Decides the layout for n images (n >= 1) of prompt, makes the folder, and
 * checks that nothing would be overwritten. 0, or -1 with cd_last_error(). */
int sample_out_init(sample_out *so, const char *out, int n, int overwrite, const char *prompt);
/* File outputs: checks again for n images (--init-latents can set n late). */
int sample_out_check(const sample_out *so, int n);
/* The path of image i of n with the given seed. */
int sample_out_path(sample_out *so, int i, int n, uint64_t seed, char *buf, size_t cap);
/* "a photo of a <new1> cat!" -> "a-photo-of-a-new1-cat" (at most cap-1 bytes). */
void sample_out_slug(const char *prompt, char *slug, size_t cap);

#endif
