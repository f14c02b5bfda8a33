/* test_world.c - the synthetic world: deterministic rendering, held-out
 * concepts never drawn in pretraining, captions that name what is drawn in
 * words of the vocabulary, and a vocabulary the CLIP tokenizer reads with
 * every grammar word one token and the special ids where CLIP has them. */
#include "io/fsutil.h"
#include "models/tokenizer.h"
#include "test.h"
#include "world/prompt.h"
#include "world/vocab.h"
#include "world/world.h"

#define PX (3 * CD_WORLD_RES * CD_WORLD_RES)

TEST(deterministic) {
  static float a[PX], b[PX];
  cd_world_scene s1, s2, s3;
  cd_rng r;
  cd_rng_seed(&r, 11);
  cd_world_sample(&r, CD_WORLD_PRETRAIN, &s1);
  cd_rng_seed(&r, 11);
  cd_world_sample(&r, CD_WORLD_PRETRAIN, &s2);
  cd_world_sample(&r, CD_WORLD_PRETRAIN, &s3);
  CHECK(!memcmp(&s1, &s2, sizeof s1));
  CHECK(memcmp(&s1, &s3, sizeof s1));
  cd_world_render(&s1, a);
  cd_world_render(&s2, b);
  CHECK(!memcmp(a, b, sizeof a));
  for (int i = 0; i < PX; i++) CHECK(a[i] >= -1.0f && a[i] <= 1.0f);
}

/* the pretraining distribution draws every pretraining kind and pattern, and never a held-out one */
TEST(held_out) {
  int kinds[CD_WORLD_NKINDS] = {0}, pats[CD_WORLD_NPATTERNS] = {0}, two = 0, none = 0;
  cd_rng r;
  cd_rng_seed(&r, 5);
  char cap[256];
  for (int i = 0; i < 4000; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_PRETRAIN, &s);
    for (int k = 0; k < s.nobj; k++) kinds[s.obj[k].kind]++;
    pats[s.pattern]++;
    two += s.nobj == 2;
    none += s.nobj == 0;
    CHECK(cd_world_caption(&s, NULL, NULL, cap, sizeof cap) > 0);
    CHECKF(!strstr(cap, "robot") && !strstr(cap, "zigzag") && !strstr(cap, "duck"), "pretraining caption names a held-out concept: %s",
           cap);
  }
  CHECK(kinds[CD_WORLD_ROBOT] == 0 && kinds[CD_WORLD_DUCK] == 0 && pats[CD_WORLD_ZIGZAG] == 0);
  for (int k = 0; k < CD_WORLD_PRETRAIN_KINDS; k++) CHECKF(kinds[k] > 100, "kind %d drawn %d times", k, kinds[k]);
  for (int p = 0; p < CD_WORLD_PRETRAIN_PATTERNS; p++) CHECKF(pats[p] > 100, "pattern %d drawn %d times", p, pats[p]);
  CHECK(two > 400 && none > 300);
  /* the concept modes draw only their concept */
  for (int i = 0; i < 50; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_NEW_TOY, &s);
    CHECK(s.nobj == 1 && s.obj[0].kind == CD_WORLD_ROBOT && s.pattern != CD_WORLD_ZIGZAG);
    CHECK(cd_world_caption(&s, "<new1>", NULL, cap, sizeof cap) > 0 && strstr(cap, "<new1> toy"));
    cd_world_sample(&r, CD_WORLD_NEW_PATTERN, &s);
    CHECK(s.nobj == 0 && s.pattern == CD_WORLD_ZIGZAG);
    CHECK(cd_world_caption(&s, NULL, "<new2>", cap, sizeof cap) > 0 && strstr(cap, "<new2> pattern"));
    cd_world_sample(&r, CD_WORLD_NEW_TOY2, &s);
    CHECK(s.nobj == 1 && s.obj[0].kind == CD_WORLD_DUCK && s.pattern != CD_WORLD_ZIGZAG);
    cd_world_names nm = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>"};
    CHECK(cd_world_caption_names(&s, &nm, cap, sizeof cap) > 0 && strstr(cap, "<new3> toy") && !strstr(cap, "duck"));
  }
  /* the pattern as a background: pretraining objects (never green, never a held-out
   * kind) on the green zigzag, the pattern alone about a third of the time */
  int alone = 0, objs = 0;
  for (int i = 0; i < 600; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_NEW_PATTERN_SCENES, &s);
    CHECK(s.pattern == CD_WORLD_ZIGZAG && s.bg_colour == cd_world_colour_index("green"));
    alone += s.nobj == 0;
    for (int k = 0; k < s.nobj; k++) {
      objs++;
      CHECKF(s.obj[k].kind < CD_WORLD_PRETRAIN_KINDS && s.obj[k].colour != s.bg_colour, "object %d: kind %d colour %d",
             k, s.obj[k].kind, s.obj[k].colour);
    }
    CHECK(cd_world_caption(&s, NULL, "<new2>", cap, sizeof cap) > 0 && strstr(cap, "green <new2>") && !strstr(cap, "zigzag"));
  }
  CHECKF(alone > 150 && alone < 250 && objs > 400, "%d of 600 scenes without objects, %d objects", alone, objs);
  /* everything (the judge's data) draws all three held-out concepts */
  int any[CD_WORLD_NKINDS] = {0}, zig = 0;
  for (int i = 0; i < 2000; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_ANY, &s);
    for (int k = 0; k < s.nobj; k++) any[s.obj[k].kind]++;
    zig += s.pattern == CD_WORLD_ZIGZAG;
  }
  CHECK(any[CD_WORLD_ROBOT] > 50 && any[CD_WORLD_DUCK] > 50 && zig > 50);
}

/* Sprites (the autoencoder's generic objects): the pretraining scenes with
 * sprites for objects, deterministic, never a held-out kind or pattern, every
 * sprite of 2-6 body parts and 0-3 details inside its box, mirror-symmetric
 * ones drawn symmetric, and a sprite scene differs from the kind it replaces. */
TEST(sprites) {
  static float a[PX], b[PX];
  cd_rng r;
  int nspr = 0, mirrored = 0, two_colour = 0;
  cd_rng_seed(&r, 21);
  for (int i = 0; i < 400; i++) {
    cd_world_scene s, t;
    cd_rng r2 = r;
    cd_world_sample(&r, CD_WORLD_SPRITES, &s);
    cd_world_sample(&r2, CD_WORLD_PRETRAIN, &t); /* the same draws, up to the sprites */
    CHECK(s.nobj == t.nobj && s.bg_colour == t.bg_colour && s.pattern == t.pattern && s.pattern != CD_WORLD_ZIGZAG);
    CHECK(s.sprites == (s.nobj > 0));
    char cap[256];
    CHECK(cd_world_caption(&s, NULL, NULL, cap, sizeof cap) > 0);
    CHECKF(!strstr(cap, "robot") && !strstr(cap, "duck") && !strstr(cap, "zigzag"), "%s", cap);
    for (int k = 0; k < s.nobj; k++) {
      const cd_world_sprite *sp = &s.sprite[k];
      int body = 0, det = 0;
      for (int j = 0; j < sp->nparts; j++) {
        const cd_world_sprite_part *p = &sp->part[j];
        body += p->type != 2, det += p->type == 2;
        CHECK(fabsf(p->u) + p->a <= 1.0001f && fabsf(p->v) + p->b <= 1.0001f && p->a > 0 && p->b > 0);
        two_colour += p->alt;
      }
      CHECKF(body >= 2 && body <= 6 && det <= 3, "%d body parts, %d details", body, det);
      CHECK(sp->colour2 != s.obj[k].colour && sp->colour2 != s.bg_colour);
      nspr++;
      mirrored += sp->mirror;
    }
    if (s.nobj == 1 && s.sprite[0].mirror && s.pattern == CD_WORLD_PLAIN) { /* centred copy: symmetric pixels */
      s.obj[0].cx = 32, s.obj[0].cy = 32;
      cd_world_render(&s, a);
      int asym = 0;
      for (int c = 0; c < 3; c++)
        for (int y = 0; y < CD_WORLD_RES; y++)
          for (int x = 0; x < CD_WORLD_RES; x++)
            asym += fabsf(a[(c * CD_WORLD_RES + y) * CD_WORLD_RES + x] - a[(c * CD_WORLD_RES + y) * CD_WORLD_RES + 63 - x]) > 1e-5f;
      CHECKF(asym == 0, "mirrored sprite: %d asymmetric pixels", asym);
    }
    if (s.nobj) {
      cd_world_render(&s, a);
      cd_world_render(&t, b);
      CHECK(memcmp(a, b, sizeof a)); /* a sprite is not the kind it replaces */
    }
  }
  CHECK(nspr > 300 && mirrored > nspr / 4 && mirrored < 3 * nspr / 4 && two_colour > 50);
  /* the other modes are as before: no sprites */
  cd_world_scene s;
  cd_world_sample(&r, CD_WORLD_PRETRAIN, &s);
  CHECK(!s.sprites);
}

static int in_words(const char *w) {
  for (const char *const *p = cd_world_words(); *p; p++)
    if (!strcmp(*p, w)) return 1;
  return 0;
}

/* every caption word is a grammar word, and the caption names the first object's colour and kind */
TEST(captions) {
  cd_rng r;
  cd_rng_seed(&r, 9);
  char cap[256];
  for (int i = 0; i < 500; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_PRETRAIN, &s);
    CHECK(cd_world_caption(&s, NULL, NULL, cap, sizeof cap) > 0);
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", cap);
    for (char *w = strtok(tmp, " "); w; w = strtok(NULL, " ")) CHECKF(in_words(w), "'%s' in '%s' is not a grammar word", w, cap);
    if (s.nobj) {
      CHECK(strstr(cap, cd_world_colour_name(s.obj[0].colour)));
      const char *k = cd_world_kind_name(s.obj[0].kind);
      CHECK(strstr(cap, s.toy_generic && strstr(k, "toy") ? "toy" : k));
    }
    CHECK(strstr(cap, cd_world_colour_name(s.bg_colour)));
  }
  cd_world_scene s;
  cd_world_sample(&r, CD_WORLD_SPRITES, &s); /* sprites are captioned in grammar words too ("toy") */
  CHECK(cd_world_caption(&s, NULL, NULL, cap, sizeof cap) > 0);
  for (char *w = strtok(cap, " "); w; w = strtok(NULL, " ")) CHECKF(in_words(w), "'%s' is not a grammar word", w);
  cd_world_sample(&r, CD_WORLD_PRETRAIN, &s);
  CHECK(cd_world_caption(&s, NULL, NULL, cap, 4) == -1); /* too small a buffer is reported */
}

/* --pattern-colours: the pattern scenes in another colour, their objects never in it, the caption
 * naming it; in its own green the scene is the default one (no draw spent) */
TEST(pattern_colours) {
  int moved = 0, scenes_with_objects = 0;
  for (int i = 0; i < 200; i++) {
    cd_world_scene a, b, g;
    cd_rng ra, rb, rg;
    cd_rng_seed(&ra, 100 + i), cd_rng_seed(&rb, 100 + i), cd_rng_seed(&rg, 100 + i);
    const cd_world_mode mode = i % 2 ? CD_WORLD_NEW_PATTERN_SCENES : CD_WORLD_NEW_PATTERN;
    cd_world_sample(&ra, mode, &a);
    cd_world_sample(&rb, mode, &b);
    cd_world_sample(&rg, mode, &g);
    const int blue = cd_world_colour_index("blue");
    cd_world_set_pattern_colour(&rb, &b, blue);
    cd_world_set_pattern_colour(&rg, &g, cd_world_colour_index("green"));
    CHECKF(!memcmp(&a, &g, sizeof a) && cd_rng_uniform(&ra) == cd_rng_uniform(&rg), "scene %d: green is not the default", i);
    CHECK(b.bg_colour == blue && b.pattern == a.pattern && b.nobj == a.nobj);
    scenes_with_objects += b.nobj > 0;
    for (int k = 0; k < b.nobj; k++) {
      CHECKF(b.obj[k].colour != blue, "scene %d: a blue object on the blue pattern", i);
      moved += a.obj[k].colour != b.obj[k].colour;
    }
    char cap[256];
    CHECK(cd_world_caption(&b, NULL, NULL, cap, sizeof cap) > 0 && strstr(cap, "blue zigzag"));
  }
  CHECKF(scenes_with_objects > 30 && moved > 0, "%d scenes with objects, %d recoloured", scenes_with_objects, moved);
}

/* a plain-background scene: the object's centre has its colour, a far corner the background's */
TEST(render_colours) {
  static float px[PX];
  cd_world_scene s;
  memset(&s, 0, sizeof s);
  s.nobj = 1;
  s.obj[0] = (cd_world_obj){.kind = CD_WORLD_SQUARE, .colour = 4 /* blue */, .big = 1, .cx = 16, .cy = 16, .r = 10};
  s.bg_colour = 2; /* yellow */
  s.pattern = CD_WORLD_PLAIN;
  cd_world_render(&s, px);
  const int R = CD_WORLD_RES;
  float blue[3] = {45, 85, 225}, yellow[3] = {240, 220, 50};
  for (int c = 0; c < 3; c++) {
    CHECK(fabsf((px[(c * R + 16) * R + 16] + 1) * 127.5f - blue[c]) < 0.01f);
    CHECK(fabsf((px[(c * R + 60) * R + 60] + 1) * 127.5f - yellow[c]) < 0.01f);
  }
}

/* the latent cells an object touches: a square of half-size 10 at (20, 20)
 * covers pixels 10..30, i.e. 8x8 cells 1..3 in each direction; the rest of
 * the grid, and a scene without objects, is 0 */
TEST(object_cells) {
  cd_world_scene s;
  memset(&s, 0, sizeof s);
  s.nobj = 1;
  s.obj[0] = (cd_world_obj){.kind = CD_WORLD_SQUARE, .colour = 0, .big = 1, .cx = 20, .cy = 20, .r = 10};
  s.bg_colour = 4;
  const int n = CD_WORLD_RES / 8;
  float c[CD_WORLD_RES / 8 * CD_WORLD_RES / 8];
  cd_world_object_cells(&s, 8, c);
  int on = 0;
  for (int y = 0; y < n; y++)
    for (int x = 0; x < n; x++) {
      int in = x >= 1 && x <= 3 && y >= 1 && y <= 3;
      CHECK(c[y * n + x] == (in ? 1.0f : 0.0f));
      on += c[y * n + x] != 0;
    }
  CHECK(on == 9);
  s.nobj = 0;
  cd_world_object_cells(&s, 8, c);
  for (int k = 0; k < n * n; k++) CHECK(c[k] == 0);
  /* the cells agree with the render: a cell is on exactly when one of its pixels
   * differs from the same scene drawn without its objects (the render supersamples,
   * so a sliver of an object that misses every pixel centre still counts) */
  cd_rng r;
  cd_rng_seed(&r, 5);
  static float with[3 * CD_WORLD_RES * CD_WORLD_RES], without[3 * CD_WORLD_RES * CD_WORLD_RES];
  int bad = 0;
  for (int i = 0; i < 400; i++) {
    cd_world_sample(&r, CD_WORLD_PRETRAIN, &s);
    cd_world_render(&s, with);
    cd_world_object_cells(&s, 8, c);
    cd_world_scene bare = s;
    bare.nobj = 0;
    cd_world_render(&bare, without);
    float seen[CD_WORLD_RES / 8 * CD_WORLD_RES / 8] = {0};
    for (int ch = 0; ch < 3; ch++)
      for (int y = 0; y < CD_WORLD_RES; y++)
        for (int x = 0; x < CD_WORLD_RES; x++) {
          int k = (ch * CD_WORLD_RES + y) * CD_WORLD_RES + x;
          if (with[k] != without[k]) seen[(y / 8) * n + x / 8] = 1;
        }
    for (int k = 0; k < n * n; k++) bad += c[k] != seen[k];
  }
  CHECKF(bad == 0, "%d cells disagree with the render", bad);
}

TEST(vocabulary) {
  const char *dir = test_tmpdir("tok");
  CHECK_OK(cd_mkdir_p(dir));
  int V = 0;
  CHECK_OK(cd_world_vocab_write(dir, &V));
  cd_tokenizer *t;
  CHECK_OK(cd_tokenizer_load(dir, &t));
  CHECK_OK(cd_tokenizer_configure_from_dir(t, dir));
  CHECK(cd_tokenizer_vocab_size(t) == V && V > 514);
  CHECK(cd_tokenizer_sos(t) == V - 2 && cd_tokenizer_eos(t) == V - 1 && cd_tokenizer_pad(t) == V - 1);
  static const char *const extra[] = {"ktn", "pll", "ucd"};
  for (int i = 0; i < 3 + 64; i++) {
    const char *w = i < 3 ? extra[i] : cd_world_words()[i - 3];
    if (!w) break;
    int ids[8], n = 0;
    CHECK_OK(cd_tokenize(t, w, ids, 8, &n, NULL));
    CHECKF(n == 1, "'%s' is %d tokens", w, n);
  }
  /* a concept prompt: the modifier token is one added id, the rest base ids */
  int id = cd_tokenizer_add_token(t, "<new1>");
  CHECK(id == V);
  int ids[16], n = 0;
  CHECK_OK(cd_tokenize(t, "photo of a <new1> toy", ids, 16, &n, NULL));
  CHECK(n == 5 && ids[3] == V && ids[4] == cd_tokenizer_lookup(t, "toy</w>"));
  cd_tokenizer_free(t);
  /* the build is deterministic */
  const char *dir2 = test_tmpdir("tok2");
  CHECK_OK(cd_mkdir_p(dir2));
  CHECK_OK(cd_world_vocab_write(dir2, NULL));
  char *a, *b, p1[512], p2[512];
  size_t na, nb;
  snprintf(p1, sizeof p1, "%s/merges.txt", dir);
  snprintf(p2, sizeof p2, "%s/merges.txt", dir2);
  CHECK_OK(cd_read_file(p1, &a, &na));
  CHECK_OK(cd_read_file(p2, &b, &nb));
  int same = na == nb && !memcmp(a, b, na);
  free(a);
  free(b);
  CHECK(same);
}

/* prompts read back into what they ask for; every caption of a scene reads back as that scene */
TEST(parse_prompts) {
  cd_world_expect e;
  cd_world_parse_prompt("a big <new1> toy in blue next to a small red ring on a white striped background", "<new1>", "<new2>", &e);
  CHECK(e.nobj == 2 && e.kind[0] == CD_WORLD_ROBOT && e.colour[0] == 4 && e.kind[1] == CD_WORLD_RING && e.colour[1] == 0);
  CHECK(e.bg == 6 && e.pattern == CD_WORLD_STRIPED);
  cd_world_parse_prompt("photo of a green <new2> pattern", "<new1>", "<new2>", &e);
  CHECK(e.nobj == 0 && e.bg == 3 && e.pattern == CD_WORLD_ZIGZAG);
  cd_world_parse_prompt("photo of a <new1> toy", "<new1>", NULL, &e);
  CHECK(e.nobj == 1 && e.kind[0] == CD_WORLD_ROBOT && e.colour[0] == -1 && e.bg == -1 && e.pattern == -1);
  cd_world_parse_prompt("a small toy", NULL, NULL, &e);
  CHECK(e.nobj == 1 && e.kind[0] == -1 && e.is_toy[0]);
  /* three concepts in one prompt */
  cd_world_names nm = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>"};
  cd_world_parse_prompt_names("a <new1> toy next to a <new3> toy on a green <new2> pattern", &nm, &e);
  CHECK(e.nobj == 2 && e.kind[0] == CD_WORLD_ROBOT && e.kind[1] == CD_WORLD_DUCK && e.bg == 3 && e.pattern == CD_WORLD_ZIGZAG);
  /* eval/prompts_kinds.txt: each line names one pretraining kind and nothing else, so its
   * text-alignment is the fraction of images that show the kind */
  char *txt;
  size_t len;
  CHECK_OK(cd_read_file("eval/prompts_kinds.txt", &txt, &len));
  int lines = 0, seen[CD_WORLD_NKINDS] = {0};
  for (char *p = txt, *nl; p && *p; p = nl ? nl + 1 : NULL) {
    nl = strchr(p, '\n');
    if (nl) *nl = 0;
    if (*p == '#' || !*p) continue;
    cd_world_parse_prompt(p, NULL, NULL, &e);
    CHECKF(e.nobj == 1 && e.kind[0] >= 0 && e.kind[0] < CD_WORLD_PRETRAIN_KINDS && e.colour[0] == -1 && e.bg == -1 && e.pattern == -1, "%s", p);
    if (e.nobj == 1 && e.kind[0] >= 0 && e.kind[0] < CD_WORLD_NKINDS) seen[e.kind[0]]++;
    lines++;
  }
  free(txt);
  CHECK(lines == 3 * CD_WORLD_PRETRAIN_KINDS);
  for (int k = 0; k < CD_WORLD_PRETRAIN_KINDS; k++) CHECK(seen[k] == 3);
  cd_rng r;
  cd_rng_seed(&r, 3);
  char cap[256];
  for (int i = 0; i < 300; i++) {
    cd_world_scene s;
    cd_world_sample(&r, CD_WORLD_ANY, &s);
    CHECK(cd_world_caption(&s, NULL, NULL, cap, sizeof cap) > 0);
    cd_world_parse_prompt(cap, NULL, NULL, &e);
    CHECKF(e.nobj == s.nobj && e.bg == s.bg_colour, "%s", cap);
    CHECKF(e.pattern == (s.pattern == CD_WORLD_PLAIN ? -1 : s.pattern), "%s", cap);
    for (int k = 0; k < s.nobj; k++) {
      CHECKF(e.colour[k] == s.obj[k].colour, "%s", cap);
      int generic = s.toy_generic && (s.obj[k].kind == CD_WORLD_BEAR || s.obj[k].kind == CD_WORLD_CAR);
      CHECKF(generic ? e.kind[k] == -1 && e.is_toy[k] : e.kind[k] == s.obj[k].kind, "%s", cap);
    }
  }
}

int main(void) {
  RUN(deterministic);
  RUN(held_out);
  RUN(sprites);
  RUN(captions);
  RUN(pattern_colours);
  RUN(render_colours);
  RUN(object_cells);
  RUN(vocabulary);
  RUN(parse_prompts);
  test_tmp_cleanup();
  return test_summary();
}
