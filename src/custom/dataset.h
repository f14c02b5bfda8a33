/* dataset.h - the data side of Custom Diffusion training: image folders,
 * the --concepts JSON file, and the per-example preprocessing of diffusers'
 * examples/custom_diffusion/train_custom_diffusion.py (CustomDiffusionDataset).
 *
 * Randomness: every draw comes from the caller's cd_rng (the trainer seeds
 * one per step), so a run is reproducible and resumable. Integer draws are
 * numpy-style randint(lo, hi) = lo + cd_rng_u64() % (hi - lo) (hi exclusive;
 * the modulo bias is < 2^-40 for the ranges used here); coin flips and the
 * script's `np.random.uniform() < 0.66` use cd_rng_uniform().
 *
 * Pixel outputs are planar float [3, res, res] in [-1, 1], computed as the
 * script does: instances x / 127.5 - 1 in double then rounded to float; class
 * images ((float)x / 255 - 0.5) / 0.5 in float (torchvision ToTensor +
 * Normalize; 1 ulp apart for half the values). Masks are [res/8, res/8] (one value per latent pixel: the VAE downsamples
 * by 8). res must be a positive multiple of 8.
 */
#ifndef CD_DATASET_H
#define CD_DATASET_H

#include <stddef.h>

#include "core/common.h"
#include "core/utf8.h"
#include "io/image.h"

#define CD_LATENT_FACTOR 8

/* ---- image folders ---- */

typedef struct {
  char *path;    /* dir/name */
  char *caption; /* trimmed text of dir/<stem>.txt, or NULL = use the concept prompt */
} cd_item;
typedef struct {
  cd_item *items;
  int n;
  int nskipped;        /* other regular files (not images, not .txt captions, not hidden) */
  char *skipped_names; /* the first few of them, comma-separated, or NULL */
} cd_item_list;

/* All regular files in dir named *.png, *.jpg, *.jpeg, *.webp or *.bmp
 * (extension case-insensitive, names starting with '.' skipped), sorted by
 * name (bytewise). Other files are counted in nskipped.
 * A file <stem>.txt beside <stem>.<ext> is that image's caption, trimmed of
 * surrounding white space (an empty one counts as none). Images are not
 * decoded here. Errors: dir missing or unreadable, "DIR contains no
 * .png/.jpg images", unreadable caption. On error *out is empty. */
int cd_list_images(const char *dir, cd_item_list *out);
/* The class images of the original Custom Diffusion's --real_prior (real
 * photos retrieved from LAION by its retrieve.py): dir/images.txt lists one
 * image path per line and dir/caption.txt the caption of each, line by line.
 * A relative path is taken as written (relative to the working directory, as
 * the script opens it) or, when no such file exists, relative to dir. Blank
 * lines at the end are ignored. Errors: either file missing, different line
 * counts, a listed image that does not exist (named with its line). */
int cd_list_file_images(const char *dir, cd_item_list *out);
/* How many images cd_list_images would list (0 is no error). */
int cd_count_images(const char *dir, int *n);
void cd_item_list_free(cd_item_list *l); /* safe on a zeroed list; leaves it zeroed */
/* Prints "<what> DIR: N of M images used" to stderr, plus the names of the
 * skipped files, so a user sees what training really reads. */
void cd_item_list_report(const cd_item_list *l, const char *what, const char *dir, int used);
/* Decodes every image of l (used = the first `used`) once, to find a
 * corrupt or unsupported file before any work; errors name the file. */
int cd_item_list_verify(const cd_item_list *l, int used);

/* ---- concepts ---- */

typedef struct {
  char *instance_prompt;   /* required */
  char *class_prompt;      /* NULL when absent or null */
  char *instance_data_dir; /* required */
  char *class_data_dir;    /* NULL when absent, null or "" (class images are then generated) */
} cd_concept;

/* --concepts FILE.json: a non-empty JSON list of objects with the keys above
 * (the script's --concepts_list format; other keys are ignored). Errors name
 * the file, the entry index and the key. */
int cd_concepts_load(const char *path, cd_concept **out, int *n);
void cd_concepts_free(cd_concept *c, int n);

/* ---- one example ---- */

/* Loads path as 8-bit RGB (grey is replicated, alpha dropped, as PIL's
 * convert("RGB")). Errors name the file. Free with cd_image_free. */
int cd_load_example_image(const char *path, cd_image *out);

/* The random choices of one instance example, in the script's draw order:
 * flip (only drawn when hflip), then with aug: uniform < 0.66 ? scale =
 * randint(res/3, res+1) : scale = randint(int(1.2 res), int(1.4 res)), then
 * top = randint(0, outer-inner+1), left likewise (outer/inner = res/scale,
 * swapped when scale > res), then the prompt prefix when scale < 0.6 res
 * ("a far away " | "very small ") or scale > res ("zoomed in " | "close up ").
 * Without aug scale = res, top = left = 0 and nothing more is drawn. */
typedef struct {
  int flip;           /* mirror the image left-right first */
  int scale;          /* the image is resized to scale x scale (aspect ignored) */
  int top, left;      /* paste position (scale <= res) or crop offset (scale > res) */
  const char *prefix; /* static string to put before the prompt, or "" */
} cd_instance_aug;

int cd_instance_draw(int res, int aug, int hflip, cd_rng *rng, cd_instance_aug *a);

/* Both resizes follow PIL's Image.resize(BILINEAR) bit for bit (a triangle
 * filter widened by the shrink factor, 22-bit fixed point; see dataset.c),
 * not cd_image_resize. */

/* Renders an instance example for given choices (deterministic; exposed so
 * the geometry is testable). scale <= res: the resized image is pasted at
 * (top, left) on a zero canvas and mask[top/8+1 : (top+scale)/8-1,
 * left/8+1 : (left+scale)/8-1] = 1 (Python slice semantics, as the script),
 * zero elsewhere; scale > res: the res x res crop at (top, left), mask all
 * ones. Note that scale == res (also the no-aug case) still gives the
 * script's mask with a one-latent-pixel zero border.
 * img: any size, 3 channels; pixels: [3, res, res]; mask: [res/8, res/8]. */
int cd_instance_render(const cd_image *img, int res, const cd_instance_aug *a, float *pixels, float *mask);

/* draw + render. *prefix (if not NULL) gets the prompt prefix ("" for none). */
int cd_instance_example(const cd_image *img, int res, int aug, int hflip, cd_rng *rng, float *pixels,
                        float *mask, const char **prefix);

/* Class example, the script's image_transforms: optional flip (p = 0.5 when
 * hflip), Resize(res) (shorter side to res, longer side int(res*long/short),
 * bilinear), then CenterCrop(res) if center_crop else RandomCrop(res)
 * (top = randint(0, h-res+1), then left); the script's default is
 * RandomCrop (no --center_crop). mask all ones. rng may be NULL when
 * center_crop && !hflip (nothing is drawn). */
int cd_class_example(const cd_image *img, int res, int center_crop, int hflip, cd_rng *rng, float *pixels,
                     float *mask);

/* ---- decoded-image cache ---- */

/* Training reuses the same few images for hundreds of steps: decode each once
 * and keep it while the total stays under limit_bytes; beyond that an image is
 * decoded again on every use. One cache serves one cd_item_list. */
typedef struct cd_image_cache {
  const cd_item_list *list; /* bound on first get */
  int n;                    /* list->n then */
  cd_image *img;            /* [list->n]; px == NULL when not cached */
  size_t bytes, limit;
  cd_image scratch;         /* the last uncached image */
} cd_image_cache;

#define CD_IMAGE_CACHE_DEFAULT_LIMIT ((size_t)1 << 30)

void cd_image_cache_init(cd_image_cache *c, size_t limit_bytes); /* 0 = default (1 GiB) */
/* *out (RGB) stays valid until the next get on this cache or its free.
 * Errors: i out of range, a different list than the first get, unreadable image. */
int cd_image_cache_get(cd_image_cache *c, const cd_item_list *l, int i, const cd_image **out);
void cd_image_cache_free(cd_image_cache *c);

#endif
