/* world.c - the synthetic world's renderer and caption grammar (see world.h). */
#include "world/world.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const kind_names[CD_WORLD_NKINDS] = {"circle", "square", "triangle", "star", "ring",
                                                        "cross", "bear toy", "car toy", "robot toy", "duck toy"};
static const char *const colour_names[CD_WORLD_NCOLOURS] = {"red", "orange", "yellow", "green",
                                                            "blue", "purple", "white", "black"};
static const float colour_rgb[CD_WORLD_NCOLOURS][3] = {
    {220, 40, 40}, {245, 140, 30}, {240, 220, 50}, {40, 170, 60},
    {45, 85, 225}, {145, 55, 185}, {240, 240, 240}, {25, 25, 25}};
static const char *const pattern_names[CD_WORLD_NPATTERNS] = {"plain", "striped", "checkered", "dotted", "zigzag"};

/* the held-out concepts' own colours */
enum { ROBOT_COLOUR = 1 /* orange */, ZIGZAG_COLOUR = 3 /* green */, DUCK_COLOUR = 2 /* yellow */ };

const char *cd_world_kind_name(int k) { return k >= 0 && k < CD_WORLD_NKINDS ? kind_names[k] : "?"; }
const char *cd_world_colour_name(int c) { return c >= 0 && c < CD_WORLD_NCOLOURS ? colour_names[c] : "?"; }
const char *cd_world_pattern_name(int p) { return p >= 0 && p < CD_WORLD_NPATTERNS ? pattern_names[p] : "?"; }

int cd_world_colour_index(const char *w) {
  for (int i = 0; i < CD_WORLD_NCOLOURS; i++)
    if (!strcmp(w, colour_names[i])) return i;
  return -1;
}

/* a pattern's name; never "plain", which no caption says */
int cd_world_pattern_index(const char *w) {
  for (int p = 1; p < CD_WORLD_NPATTERNS; p++)
    if (!strcmp(w, pattern_names[p])) return p;
  return -1;
}

/* a shape's name, or a toy's word before " toy" ("bear" for "bear toy") */
int cd_world_kind_index(const char *w) {
  const size_t n = strlen(w);
  for (int i = 0; i < CD_WORLD_NKINDS; i++)
    if (!strcmp(w, kind_names[i]) || (n && !strncmp(w, kind_names[i], n) && !strcmp(kind_names[i] + n, " toy"))) return i;
  return -1;
}

const char *const *cd_world_words(void) {
  static const char *const words[] = {
      "photo", "of", "a", "small", "big", "next", "to", "on", "in", "background", "pattern", "toy",
      "circle", "square", "triangle", "star", "ring", "cross", "bear", "car",
      "red", "orange", "yellow", "green", "blue", "purple", "white", "black",
      "plain", "striped", "checkered", "dotted", NULL};
  return words;
}

/* ------------------------------------------------------------ sampling */

static int irand(cd_rng *r, int n) { return (int)(cd_rng_uniform(r) * n); }
static float frand(cd_rng *r, float lo, float hi) { return lo + (float)cd_rng_uniform(r) * (hi - lo); }

static int colour_except(cd_rng *r, int a, int b) {
  for (;;) {
    int c = irand(r, CD_WORLD_NCOLOURS);
    if (c != a && c != b) return c;
  }
}

static void pattern_geometry(cd_rng *r, cd_world_scene *s) {
  s->period = frand(r, 12.0f, 20.0f);
  s->phase_x = frand(r, 0.0f, s->period);
  s->phase_y = frand(r, 0.0f, s->period);
  s->vertical = irand(r, 2);
}

/* Half-sizes in pixels. The smallest object spans about 2.5 latent cells (the
 * VAE downsamples 8x): smaller ones came back from the autoencoder as blobs of
 * the right colour whose shape no model could read. */
static void place(cd_rng *r, cd_world_obj *o, float xlo, float xhi, int two) {
  o->r = o->big ? (two ? frand(r, 12.0f, 15.0f) : frand(r, 16.0f, 22.0f)) : (two ? frand(r, 9.0f, 11.0f) : frand(r, 10.0f, 13.0f));
  float lo = xlo + o->r + 1, hi = xhi - o->r - 1;
  o->cx = hi > lo ? frand(r, lo, hi) : 0.5f * (xlo + xhi);
  o->cy = frand(r, o->r + 1, CD_WORLD_RES - o->r - 1);
}

/* 2-6 body parts (rectangles, discs; some in a second colour when the sprite
 * has one), 0-3 detail dots on top, half of them mirror-symmetric: the
 * vocabulary of the world's drawn objects, in layouts no kind has. */
static void make_sprite(cd_rng *r, cd_world_sprite *sp, int colour, int bg) {
  memset(sp, 0, sizeof *sp);
  sp->mirror = cd_rng_uniform(r) < 0.5;
  sp->colour2 = colour_except(r, colour, bg);
  int two = cd_rng_uniform(r) < 0.4, nb = 2 + irand(r, 5), nd = irand(r, 4);
  for (int i = 0; i < nb + nd; i++) {
    cd_world_sprite_part *p = &sp->part[sp->nparts++];
    if (i < nb) {
      p->type = cd_rng_uniform(r) < 0.65 ? 0 : 1;
      p->alt = two && cd_rng_uniform(r) < 0.4;
      p->a = p->type == 0 ? frand(r, 0.08f, 0.6f) : frand(r, 0.12f, 0.5f);
      p->b = p->type == 0 ? frand(r, 0.08f, 0.6f) : p->a;
    } else {
      p->type = 2;
      p->a = p->b = frand(r, 0.06f, 0.14f);
    }
    p->u = frand(r, -(1.0f - p->a), 1.0f - p->a);
    p->v = frand(r, -(1.0f - p->b), 1.0f - p->b);
  }
}

void cd_world_sample(cd_rng *r, cd_world_mode mode, cd_world_scene *s) {
  if (mode == CD_WORLD_SPRITES) {
    cd_world_sample(r, CD_WORLD_PRETRAIN, s);
    s->sprites = s->nobj > 0;
    for (int i = 0; i < s->nobj; i++) make_sprite(r, &s->sprite[i], s->obj[i].colour, s->bg_colour);
    return;
  }
  memset(s, 0, sizeof *s);
  s->photo = cd_rng_uniform(r) < 0.3;
  s->in_form = cd_rng_uniform(r) < 0.2;
  s->bg_as_pattern = cd_rng_uniform(r) < 0.3;
  s->toy_generic = cd_rng_uniform(r) < 0.3;
  pattern_geometry(r, s);
  if (mode == CD_WORLD_NEW_PATTERN) {
    s->nobj = 0;
    s->pattern = CD_WORLD_ZIGZAG;
    s->bg_colour = ZIGZAG_COLOUR;
    return;
  }
  if (mode == CD_WORLD_NEW_PATTERN_SCENES) {
    cd_world_sample(r, CD_WORLD_PRETRAIN, s);
    s->pattern = CD_WORLD_ZIGZAG;
    s->bg_colour = ZIGZAG_COLOUR;
    if (cd_rng_uniform(r) < 1.0 / 3) { s->nobj = 0; return; }
    if (!s->nobj) { /* a pretraining pattern scene: give it an object */
      s->nobj = 1;
      s->obj[0].kind = irand(r, CD_WORLD_PRETRAIN_KINDS);
      s->obj[0].big = irand(r, 2);
      place(r, &s->obj[0], 0, CD_WORLD_RES, 0);
    }
    /* objects never in the pattern's own green, so they stand out from it */
    cd_world_set_pattern_colour(r, s, ZIGZAG_COLOUR);
    return;
  }
  int npat = mode == CD_WORLD_ANY ? CD_WORLD_NPATTERNS : CD_WORLD_PRETRAIN_PATTERNS;
  int nkind = mode == CD_WORLD_ANY ? CD_WORLD_NKINDS : CD_WORLD_PRETRAIN_KINDS;
  if (mode != CD_WORLD_NEW_TOY && mode != CD_WORLD_NEW_TOY2 && cd_rng_uniform(r) < 0.15) { /* a pattern filling the frame */
    s->nobj = 0;
    s->pattern = 1 + irand(r, npat - 1);
    s->bg_colour = irand(r, CD_WORLD_NCOLOURS);
    return;
  }
  int concept = mode == CD_WORLD_NEW_TOY || mode == CD_WORLD_NEW_TOY2;
  s->nobj = !concept && cd_rng_uniform(r) < 0.3 ? 2 : 1;
  for (int i = 0; i < s->nobj; i++) {
    cd_world_obj *o = &s->obj[i];
    if (concept) {
      o->kind = mode == CD_WORLD_NEW_TOY ? CD_WORLD_ROBOT : CD_WORLD_DUCK;
      o->colour = mode == CD_WORLD_NEW_TOY ? ROBOT_COLOUR : DUCK_COLOUR;
      o->big = cd_rng_uniform(r) < 0.7;
    } else {
      o->kind = irand(r, nkind);
      o->colour = irand(r, CD_WORLD_NCOLOURS);
      o->big = irand(r, 2);
    }
  }
  if (s->nobj == 1) place(r, &s->obj[0], 0, CD_WORLD_RES, 0);
  else {
    place(r, &s->obj[0], 0, CD_WORLD_RES / 2, 1);
    place(r, &s->obj[1], CD_WORLD_RES / 2, CD_WORLD_RES, 1);
  }
  s->bg_colour = colour_except(r, s->obj[0].colour, s->nobj == 2 ? s->obj[1].colour : -1);
  /* plain backgrounds half the time; the held-out pattern appears only in CD_WORLD_ANY */
  s->pattern = cd_rng_uniform(r) < 0.5 ? CD_WORLD_PLAIN : 1 + irand(r, npat - 1);
}

void cd_world_set_pattern_colour(cd_rng *r, cd_world_scene *s, int colour) {
  s->bg_colour = colour;
  for (int i = 0; i < s->nobj; i++) /* objects stand out from the pattern, as in the green scenes */
    if (s->obj[i].colour == colour) s->obj[i].colour = colour_except(r, colour, -1);
}

/* ------------------------------------------------------------ rendering */

static int in_rect(float u, float v, float u0, float u1, float v0, float v1) { return u >= u0 && u <= u1 && v >= v0 && v <= v1; }
static int in_disc(float u, float v, float cu, float cv, float rr) { return (u - cu) * (u - cu) + (v - cv) * (v - cv) <= rr * rr; }

/* 0 outside, 1 body, 2 detail (eyes, wheels) at object coordinates (u, v) in [-1, 1], v down */
static int shape_at(int kind, float u, float v) {
  float r2 = u * u + v * v;
  switch (kind) {
  case CD_WORLD_CIRCLE: return r2 <= 1.0f;
  case CD_WORLD_SQUARE: return fabsf(u) <= 0.82f && fabsf(v) <= 0.82f;
  case CD_WORLD_TRIANGLE: return v <= 0.8f && fabsf(u) <= (v + 0.95f) * 0.58f;
  case CD_WORLD_STAR: {
    float a = atan2f(u, -v); /* 0 at the top point */
    float k = a / (2.0f * (float)M_PI / 5.0f);
    float f = fabsf(k - floorf(k + 0.5f)) * 2.0f; /* 0 at a point, 1 between points */
    return sqrtf(r2) <= 1.0f - 0.58f * f;
  }
  case CD_WORLD_RING: return r2 <= 1.0f && r2 >= 0.3f;
  case CD_WORLD_CROSS: return (fabsf(u) <= 0.3f && fabsf(v) <= 0.95f) || (fabsf(v) <= 0.3f && fabsf(u) <= 0.95f);
  case CD_WORLD_BEAR:
    if (in_disc(u, v, -0.2f, -0.35f, 0.09f) || in_disc(u, v, 0.2f, -0.35f, 0.09f)) return 2;
    return in_disc(u, v, 0, -0.3f, 0.5f) || in_disc(u, v, -0.45f, -0.75f, 0.22f) || in_disc(u, v, 0.45f, -0.75f, 0.22f) ||
           in_disc(u, v, 0, 0.5f, 0.48f);
  case CD_WORLD_CAR:
    if (in_disc(u, v, -0.55f, 0.45f, 0.25f) || in_disc(u, v, 0.55f, 0.45f, 0.25f)) return 2;
    return in_rect(u, v, -1.0f, 1.0f, -0.1f, 0.4f) || in_rect(u, v, -0.55f, 0.4f, -0.55f, -0.1f);
  case CD_WORLD_ROBOT:
    if (in_disc(u, v, -0.17f, -0.48f, 0.09f) || in_disc(u, v, 0.17f, -0.48f, 0.09f)) return 2;
    return in_rect(u, v, -0.38f, 0.38f, -0.75f, -0.2f) ||                          /* head */
           in_rect(u, v, -0.05f, 0.05f, -0.92f, -0.75f) || in_disc(u, v, 0, -0.92f, 0.1f) || /* antenna */
           in_rect(u, v, -0.55f, 0.55f, -0.12f, 0.62f) ||                          /* body */
           in_rect(u, v, -0.9f, -0.6f, -0.05f, 0.35f) || in_rect(u, v, 0.6f, 0.9f, -0.05f, 0.35f) || /* arms */
           in_rect(u, v, -0.42f, -0.14f, 0.62f, 1.0f) || in_rect(u, v, 0.14f, 0.42f, 0.62f, 1.0f);  /* legs */
  case CD_WORLD_DUCK: {
    if (in_disc(u, v, -0.42f, -0.55f, 0.09f) || /* eye */
        (u >= -1.0f && u <= -0.68f && v >= -0.42f && v <= -0.22f)) /* beak */
      return 2;
    float bu = (u - 0.1f) / 0.9f, bv = (v - 0.42f) / 0.5f;                   /* body: a wide ellipse */
    return bu * bu + bv * bv <= 1.0f || in_disc(u, v, -0.38f, -0.45f, 0.36f) || /* head */
           (u >= 0.6f && u <= 1.0f && v >= -0.2f && v <= 0.3f && v >= 0.3f - (u - 0.6f) * 1.6f); /* tail */
  }
  }
  return 0;
}

/* shape_at for a sprite: 0 outside, 1 body, 2 detail, 3 body in its second colour */
static int sprite_at(const cd_world_sprite *sp, float u, float v) {
  int k = 0;
  for (int i = 0; i < sp->nparts; i++) {
    const cd_world_sprite_part *p = &sp->part[i];
    for (int m = 0; m <= sp->mirror; m++) {
      float x = m ? -u : u;
      int hit = p->type == 0 ? in_rect(x, v, p->u - p->a, p->u + p->a, p->v - p->b, p->v + p->b) : in_disc(x, v, p->u, p->v, p->a);
      if (hit) k = p->type == 2 ? 2 : p->alt ? 3 : 1;
    }
  }
  return k;
}

/* 1 where the pattern's ink is at pixel position (x, y) */
static int pattern_at(const cd_world_scene *s, float x, float y) {
  float p = s->period, a = s->vertical ? x : y, b = s->vertical ? y : x;
  switch (s->pattern) {
  case CD_WORLD_STRIPED: {
    float t = (a + s->phase_x) / p;
    return t - floorf(t) < 0.45f;
  }
  case CD_WORLD_CHECKERED: {
    int i = (int)floorf((x + s->phase_x) / p), j = (int)floorf((y + s->phase_y) / p);
    return (i + j) & 1;
  }
  case CD_WORLD_DOTTED: {
    float q = 0.5f * p, tx = (x + s->phase_x) / q, ty = (y + s->phase_y) / q;
    float dx = (tx - floorf(tx) - 0.5f) * q, dy = (ty - floorf(ty) - 0.5f) * q;
    return dx * dx + dy * dy <= 0.09f * q * q * 2.0f;
  }
  case CD_WORLD_ZIGZAG: {
    float w = (b + s->phase_y) / p, tri = fabsf(w - floorf(w) - 0.5f) * 2.0f; /* 0..1 triangle wave */
    float t = (a + s->phase_x + tri * 0.5f * p) / (0.5f * p);
    return t - floorf(t) < 0.5f;
  }
  }
  return 0;
}

static void ink_of(int colour, float out[3]) {
  for (int c = 0; c < 3; c++)
    out[c] = colour == 7 ? 110.0f : colour_rgb[colour][c] * 0.5f; /* darker shade; lighter on black */
}

/* the topmost object part at pixel position (px, py): 0 none, else shape_at's
 * code, with *which the object's index */
static int object_at(const cd_world_scene *s, float px, float py, int *which) {
  int k = 0;
  for (int i = 0; i < s->nobj; i++) {
    const cd_world_obj *o = &s->obj[i];
    float u = (px - o->cx) / o->r, v = (py - o->cy) / o->r;
    int ki = s->sprites ? sprite_at(&s->sprite[i], u, v) : shape_at(o->kind, u, v);
    if (ki) { k = ki; *which = i; }
  }
  return k;
}

/* the 2x2 supersamples of pixel (x, y) that cd_world_render averages */
static float subsample(int x, int s) { return x + 0.25f + 0.5f * s; }

void cd_world_object_cells(const cd_world_scene *s, int cell, float *out) {
  const int R = CD_WORLD_RES, n = R / cell;
  for (int j = 0; j < n * n; j++) out[j] = 0;
  for (int y = 0; y < R; y++)
    for (int x = 0; x < R; x++) {
      int which, hit = 0; /* any subsample: a pixel the render tints */
      for (int k = 0; k < 4 && !hit; k++) hit = object_at(s, subsample(x, k & 1), subsample(y, k >> 1), &which) != 0;
      if (hit) out[(y / cell) * n + x / cell] = 1;
    }
}

void cd_world_render(const cd_world_scene *s, float *rgb) {
  const int R = CD_WORLD_RES;
  float ink[3], detail[2][3];
  ink_of(s->bg_colour, ink);
  for (int i = 0; i < s->nobj; i++)
    for (int c = 0; c < 3; c++) detail[i][c] = s->obj[i].colour == 7 ? 225.0f : 30.0f;
  for (int y = 0; y < R; y++)
    for (int x = 0; x < R; x++) {
      float acc[3] = {0, 0, 0};
      for (int sy = 0; sy < 2; sy++)
        for (int sx = 0; sx < 2; sx++) {
          float px = subsample(x, sx), py = subsample(y, sy);
          const float *col = s->pattern != CD_WORLD_PLAIN && pattern_at(s, px, py) ? ink : colour_rgb[s->bg_colour];
          int i = 0, k = object_at(s, px, py, &i);
          if (k == 1) col = colour_rgb[s->obj[i].colour];
          else if (k == 3) col = colour_rgb[s->sprite[i].colour2];
          else if (k == 2) col = detail[i];
          for (int c = 0; c < 3; c++) acc[c] += col[c];
        }
      for (int c = 0; c < 3; c++) rgb[(c * R + y) * R + x] = acc[c] / (4.0f * 127.5f) - 1.0f;
    }
}

/* ------------------------------------------------------------ captions */

typedef struct {
  char *p;
  size_t left;
  int overflow;
} sbuf;

static void put(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (n >= b->left) { b->overflow = 1; return; }
  memcpy(b->p, s, n + 1);
  b->p += n;
  b->left -= n;
}

static void put_kind(sbuf *b, const cd_world_scene *s, int kind, const cd_world_names *nm) {
  if (s->sprites) put(b, "toy"); /* a sprite has no kind */
  else if (kind == CD_WORLD_ROBOT && nm->toy) { put(b, nm->toy); put(b, " toy"); }
  else if (kind == CD_WORLD_DUCK && nm->toy2) { put(b, nm->toy2); put(b, " toy"); }
  else if ((kind == CD_WORLD_BEAR || kind == CD_WORLD_CAR) && s->toy_generic) put(b, "toy");
  else put(b, kind_names[kind]);
}

static void put_obj(sbuf *b, const cd_world_scene *s, const cd_world_obj *o, const cd_world_names *nm) {
  put(b, o->big ? "a big " : "a small ");
  if (!s->in_form) { put(b, colour_names[o->colour]); put(b, " "); }
  put_kind(b, s, o->kind, nm);
  if (s->in_form) { put(b, " in "); put(b, colour_names[o->colour]); }
}

static void put_pattern(sbuf *b, int pattern, const char *new_pattern) {
  put(b, pattern == CD_WORLD_ZIGZAG && new_pattern ? new_pattern : pattern_names[pattern]);
}

int cd_world_caption(const cd_world_scene *s, const char *new_toy, const char *new_pattern, char *out, size_t cap) {
  cd_world_names nm = {.toy = new_toy, .pattern = new_pattern};
  return cd_world_caption_names(s, &nm, out, cap);
}

int cd_world_caption_names(const cd_world_scene *s, const cd_world_names *nm, char *out, size_t cap) {
  if (!cap) return -1;
  sbuf b = {out, cap, 0};
  out[0] = 0;
  if (s->photo) put(&b, "photo of ");
  if (s->nobj == 0) {
    put(&b, "a ");
    put(&b, colour_names[s->bg_colour]);
    put(&b, " ");
    put_pattern(&b, s->pattern, nm->pattern);
    put(&b, " pattern");
  } else {
    put_obj(&b, s, &s->obj[0], nm);
    if (s->nobj == 2) { put(&b, " next to "); put_obj(&b, s, &s->obj[1], nm); }
    put(&b, " on a ");
    put(&b, colour_names[s->bg_colour]);
    if (s->pattern != CD_WORLD_PLAIN) { put(&b, " "); put_pattern(&b, s->pattern, nm->pattern); }
    put(&b, s->pattern != CD_WORLD_PLAIN && s->bg_as_pattern ? " pattern" : " background");
  }
  return b.overflow ? -1 : (int)(b.p - out);
}
