/* world.h - the synthetic world cdiff's own model is trained on: a seeded,
 * deterministic renderer of small RGB scenes and the caption grammar that
 * describes every scene.
 *
 * A scene is either one or two objects on a background, or a pattern filling
 * the frame. Objects: six shapes (circle, square, triangle, star, ring,
 * cross) and two toys (bear toy, car toy), each in one of eight colours, small
 * or big, anywhere in the frame. Backgrounds: a colour, plain or with a
 * pattern (striped, checkered, dotted).
 *
 * Two concepts are held out of pretraining and only rendered on request:
 *   CD_WORLD_ROBOT   a robot toy ("<new1> toy": class word "toy")
 *   CD_WORLD_ZIGZAG  a zigzag pattern ("<new2> pattern": class word "pattern")
 *   CD_WORLD_DUCK    a duck toy ("<new3> toy": class word "toy"), the third
 *                    concept, so that three concepts fit in one scene (two
 *                    toys side by side on the zigzag pattern)
 * Their class words are in the vocabulary; their own names are not.
 *
 * Captions (examples):
 *   "a small red star next to a big blue ring on a green striped background"
 *   "photo of a big yellow bear toy on a purple background"
 *   "a small toy in white on a black checkered pattern"
 *   "a blue dotted pattern"
 * Every attribute the renderer draws is in the caption, and the caption names
 * nothing it did not draw.
 */
#ifndef CD_WORLD_H
#define CD_WORLD_H

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

#define CD_WORLD_RES 64

enum {
  CD_WORLD_CIRCLE, CD_WORLD_SQUARE, CD_WORLD_TRIANGLE, CD_WORLD_STAR, CD_WORLD_RING, CD_WORLD_CROSS,
  CD_WORLD_BEAR, CD_WORLD_CAR, /* toys */
  CD_WORLD_ROBOT,              /* held out: the <new1> toy */
  CD_WORLD_DUCK,               /* held out: the <new3> toy */
  CD_WORLD_NKINDS
};
#define CD_WORLD_PRETRAIN_KINDS CD_WORLD_ROBOT /* kinds 0..7 appear in pretraining */

enum { CD_WORLD_PLAIN, CD_WORLD_STRIPED, CD_WORLD_CHECKERED, CD_WORLD_DOTTED,
       CD_WORLD_ZIGZAG, /* held out: the <new2> pattern */
       CD_WORLD_NPATTERNS };
#define CD_WORLD_PRETRAIN_PATTERNS CD_WORLD_ZIGZAG

#define CD_WORLD_NCOLOURS 8

typedef struct {
  int kind, colour, big;
  float cx, cy, r; /* centre and half-size in pixels */
} cd_world_obj;

/* A generic sprite: an object of no kind, built from random parts, that only
 * the autoencoder sees (CD_WORLD_SPRITES). The VAE is the one generic
 * component of a latent diffusion model (SD's was trained on images of
 * everything): an autoencoder that knows only the pretraining kinds blurs any
 * new shape into a blob before the UNet ever sees it. Sprites teach it to
 * keep arbitrary part layouts without ever drawing a held-out concept. */
#define CD_WORLD_SPRITE_PARTS 10
typedef struct {
  int type;               /* 0 rectangle, 1 disc, 2 detail disc */
  int alt;                /* body part in the sprite's colour2 */
  float u, v, a, b;       /* centre, half-sizes (rectangle) or radius a (discs), in [-1, 1] object coordinates */
} cd_world_sprite_part;
typedef struct {
  int nparts, mirror;     /* mirror: every part is drawn mirrored in u too */
  int colour2;            /* second body colour (parts with alt set) */
  cd_world_sprite_part part[CD_WORLD_SPRITE_PARTS];
} cd_world_sprite;

typedef struct {
  int nobj;              /* 0: a pattern filling the frame */
  cd_world_obj obj[2];   /* obj[1] is right of obj[0] */
  int bg_colour, pattern;
  float period, phase_x, phase_y; /* pattern geometry in pixels */
  int vertical;          /* striped / zigzag orientation */
  int in_form;           /* caption says "a small star in red" instead of "a small red star" */
  int photo;             /* caption starts with "photo of " */
  int bg_as_pattern;     /* caption says "on a green striped pattern" instead of "... background" */
  int toy_generic;       /* caption says "toy" instead of "bear toy" / "car toy" */
  int sprites;           /* objects are sprite[i], not kinds (CD_WORLD_SPRITES) */
  cd_world_sprite sprite[2];
} cd_world_scene;

/* What to draw. */
typedef enum {
  CD_WORLD_PRETRAIN, /* the pretraining distribution: no held-out concept */
  CD_WORLD_NEW_TOY,  /* one robot toy (its own orange), varied pose, scale and background */
  CD_WORLD_NEW_PATTERN, /* the zigzag pattern filling the frame, in its own colours */
  CD_WORLD_NEW_TOY2, /* one duck toy (its own yellow), varied pose, scale and background */
  CD_WORLD_ANY,      /* everything, held-out concepts included (the judge's training data) */
  CD_WORLD_SPRITES,  /* the pretraining scenes with generic sprites for objects (autoencoder data only;
                      * captioned "toy") */
  CD_WORLD_NEW_PATTERN_SCENES /* the zigzag as the background of pretraining objects, as the
                               * composition prompts ask for it ("a big red star on a green
                               * zigzag background"); a third of them the pattern alone */
} cd_world_mode;

const char *cd_world_kind_name(int kind);      /* "circle", ..., "bear toy", "robot toy", "duck toy" */
const char *cd_world_colour_name(int colour);  /* "red", ... */
const char *cd_world_pattern_name(int pattern);/* "plain", "striped", ..., "zigzag" */
/* index of a colour / kind word, -1 if none */
int cd_world_colour_index(const char *word);
int cd_world_kind_index(const char *word); /* "circle" ... "duck" (the word before "toy" for toys) */
int cd_world_pattern_index(const char *word); /* "striped" ... "zigzag" ("plain" is none) */

/* Draws a random scene of the given mode. */
void cd_world_sample(cd_rng *r, cd_world_mode mode, cd_world_scene *s);
/* The held-out pattern of a CD_WORLD_NEW_PATTERN(_SCENES) scene in another
 * colour (its own is green): objects of that colour get another one. */
void cd_world_set_pattern_colour(cd_rng *r, cd_world_scene *s, int colour);
/* rgb: [3, 64, 64] floats in [-1, 1] (the models' layout), 2x2 supersampled. */
void cd_world_render(const cd_world_scene *s, float *rgb);
/* out[(R / cell)^2]: 1 for each cell x cell block of pixels that an object
 * touches in the render (any of its 2x2 subsamples), else 0 (cell 8: the latent
 * grid; pretrain's --object-weight) */
void cd_world_object_cells(const cd_world_scene *s, int cell, float *out);
/* The caption; new_toy / new_pattern: the words used for the held-out concepts
 * (e.g. "<new1> toy"); NULL means their real names. Returns the length, or -1
 * when cap is too small. */
int cd_world_caption(const cd_world_scene *s, const char *new_toy, const char *new_pattern, char *out, size_t cap);
/* The words standing for the held-out concepts; NULL: their real names. */
typedef struct {
  const char *toy;     /* the robot toy, e.g. "<new1>" */
  const char *pattern; /* the zigzag pattern, e.g. "<new2>" */
  const char *toy2;    /* the duck toy, e.g. "<new3>" */
  int toy_kind;        /* prompts only (prompt.h): the kind the toy word stands for when > 0
                        * (a pretraining kind: the control that a kind the base model draws
                        * can be taught to a new token); 0: the robot */
  int toy2_kind;       /* prompts only: the kind the second toy word stands for when > 0 (a
                        * pretraining kind: a third concept the base model draws); 0: the duck */
  int pattern_kind;    /* prompts only: the pattern the pattern word stands for when > 0 (a
                        * pretraining pattern: what the base model composes with known words,
                        * the ceiling of a composition); 0: the zigzag */
} cd_world_names;
/* cd_world_caption with all three held-out words */
int cd_world_caption_names(const cd_world_scene *s, const cd_world_names *nm, char *out, size_t cap);

/* Every word the grammar can produce (NULL-terminated), for the vocabulary. */
const char *const *cd_world_words(void);

#endif
