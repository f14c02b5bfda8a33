/* test_eval_score.c - image-/text-alignment scoring of judge verdicts against
 * parsed prompts (src/eval/score.c), and the binomial statistics the CI
 * concept test takes its margin from (against exact sums and known values). */
#include "eval/score.h"
#include "test.h"

static cd_judge_verdict verdict(int kind1, int kind2, int colour, int bg, int pattern) {
  cd_judge_verdict v;
  memset(&v, 0, sizeof v);
  if (kind1 >= 0) v.kind[kind1] = 1;
  if (kind2 >= 0) v.kind[kind2] = 1;
  if (colour >= 0) v.colour[colour] = 1;
  v.bg = bg;
  v.pattern = pattern;
  return v;
}

TEST(scores_concepts_and_attributes) {
  const cd_world_names nm = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>"};
  const int blue = cd_world_colour_index("blue"), white = cd_world_colour_index("white"), red = cd_world_colour_index("red");
  CHECK(blue >= 0 && white >= 0 && red >= 0);
  cd_world_expect e;
  cd_eval_score s = {0};
  /* "<new1> toy in blue on white": concept shown, colour and background right -> 1/1, 2/2 */
  cd_world_parse_prompt_names("a big <new1> toy in blue on a white background", &nm, &e);
  cd_judge_verdict v = verdict(CD_WORLD_ROBOT, -1, blue, white, CD_WORLD_PLAIN);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 1 && s.txt_hit == 2 && s.txt_total == 2, "%g/%g %g/%g", s.img_hit, s.img_total, s.txt_hit, s.txt_total);
  /* the same prompt, a bear instead of the robot, red: concept missed, colour missed, background right */
  v = verdict(CD_WORLD_BEAR, -1, red, white, CD_WORLD_PLAIN);
  cd_eval_score_image(&e, &v, &s);
  CHECK(s.img_hit == 1 && s.img_total == 2 && s.txt_hit == 3 && s.txt_total == 4);
  /* two concepts: both needed for a hit */
  memset(&s, 0, sizeof s);
  cd_world_parse_prompt_names("a big <new1> toy on a green <new2> background", &nm, &e);
  v = verdict(CD_WORLD_ROBOT, -1, -1, cd_world_colour_index("green"), CD_WORLD_STRIPED);
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_ROBOT, -1, -1, cd_world_colour_index("green"), CD_WORLD_ZIGZAG);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 2 && s.txt_hit == 2 && s.txt_total == 2, "%g/%g %g/%g", s.img_hit, s.img_total, s.txt_hit, s.txt_total);
  /* each concept apart: the toy in both images, the pattern in one; then an image with the
   * pattern and no toy */
  CHECK(s.toy_hit == 2 && s.toy_total == 2 && s.pat_hit == 1 && s.pat_total == 2);
  v = verdict(CD_WORLD_BEAR, -1, -1, cd_world_colour_index("green"), CD_WORLD_ZIGZAG);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 3 && s.toy_hit == 2 && s.toy_total == 3 && s.pat_hit == 2 && s.pat_total == 3,
         "%g/%g toy %g/%g pattern %g/%g", s.img_hit, s.img_total, s.toy_hit, s.toy_total, s.pat_hit, s.pat_total);
  /* three concepts: the duck as <new3> */
  memset(&s, 0, sizeof s);
  cd_world_parse_prompt_names("a small <new1> toy next to a small <new3> toy on a green <new2> background", &nm, &e);
  CHECK(e.nobj == 2 && e.kind[0] == CD_WORLD_ROBOT && e.kind[1] == CD_WORLD_DUCK && e.pattern == CD_WORLD_ZIGZAG);
  v = verdict(CD_WORLD_ROBOT, CD_WORLD_DUCK, -1, cd_world_colour_index("green"), CD_WORLD_ZIGZAG);
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_ROBOT, -1, -1, cd_world_colour_index("green"), CD_WORLD_ZIGZAG);
  cd_eval_score_image(&e, &v, &s);
  CHECK(s.img_hit == 1 && s.img_total == 2 && s.toy_hit == 3 && s.toy_total == 4 && s.pat_hit == 2 && s.pat_total == 2);
  /* no concept named: text-alignment only */
  memset(&s, 0, sizeof s);
  cd_world_parse_prompt_names("a small red star next to a big toy on a blue striped background", &nm, &e);
  v = verdict(3, CD_WORLD_CAR, red, blue, CD_WORLD_STRIPED);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_total == 0 && s.txt_hit == 5 && s.txt_total == 5 && s.toy_total == 0 && s.pat_total == 0, "%g/%g %g/%g", s.img_hit,
         s.img_total, s.txt_hit, s.txt_total);
  /* of those five, two are kinds (the star, "a toy" of any kind) */
  CHECKF(s.kind_hit == 2 && s.kind_total == 2, "%g/%g", s.kind_hit, s.kind_total);
  /* a ring and no toy: colours and background right, both kinds missed */
  v = verdict(CD_WORLD_RING, -1, red, blue, CD_WORLD_STRIPED);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.txt_hit == 8 && s.txt_total == 10 && s.kind_hit == 2 && s.kind_total == 4, "%g/%g %g/%g", s.txt_hit, s.txt_total, s.kind_hit,
         s.kind_total);
  /* a concept is image-alignment, never a kind */
  memset(&s, 0, sizeof s);
  cd_world_parse_prompt_names("a big <new1> toy in blue on a white background", &nm, &e);
  v = verdict(CD_WORLD_ROBOT, -1, blue, white, CD_WORLD_PLAIN);
  cd_eval_score_image(&e, &v, &s);
  CHECK(s.kind_total == 0 && s.txt_total == 2);
}

/* the control run: the toy token judged as a kind the base model draws */
TEST(toy_token_as_a_pretraining_kind) {
  const cd_world_names nm = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>", .toy_kind = CD_WORLD_BEAR};
  const int blue = cd_world_colour_index("blue"), white = cd_world_colour_index("white");
  cd_world_expect e;
  cd_world_parse_prompt_names("a big <new1> toy in blue on a white background", &nm, &e);
  CHECK(e.nobj == 1 && e.kind[0] == CD_WORLD_BEAR && e.is_concept[0] && e.colour[0] == blue && e.bg == white);
  cd_eval_score s = {0};
  cd_judge_verdict v = verdict(CD_WORLD_BEAR, -1, blue, white, CD_WORLD_PLAIN);
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_ROBOT, -1, blue, white, CD_WORLD_PLAIN); /* the robot is now a miss */
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 2 && s.txt_hit == 4 && s.txt_total == 4 && s.kind_total == 0, "%g/%g %g/%g %g",
         s.img_hit, s.img_total, s.txt_hit, s.txt_total, s.kind_total);
  /* "bear" written out stays an attribute (text-alignment), not the concept */
  cd_world_parse_prompt_names("a small <new1> toy next to a big bear toy on a white background", &nm, &e);
  CHECK(e.nobj == 2 && e.is_concept[0] && !e.is_concept[1] && e.kind[1] == CD_WORLD_BEAR);
  CHECK(cd_world_kind_index("bear") == CD_WORLD_BEAR && cd_world_kind_index("robot") == CD_WORLD_ROBOT && cd_world_kind_index("toy") == -1);
}

/* three learned concepts: the second toy token taught a kind the base model draws
 * (--toy2-kind car), all three needed in one image for image-alignment */
TEST(second_toy_token_as_a_pretraining_kind) {
  const cd_world_names nm = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>", .toy_kind = CD_WORLD_BEAR,
                             .toy2_kind = CD_WORLD_CAR};
  const int green = cd_world_colour_index("green");
  cd_world_expect e;
  cd_world_parse_prompt_names("a small <new1> toy next to a big <new3> toy on a green <new2> background", &nm, &e);
  CHECK(e.nobj == 2 && e.kind[0] == CD_WORLD_BEAR && e.kind[1] == CD_WORLD_CAR && e.is_concept[0] && e.is_concept[1] &&
        e.pattern == CD_WORLD_ZIGZAG && e.pattern_is_concept && e.bg == green);
  cd_eval_score s = {0};
  cd_judge_verdict v = verdict(CD_WORLD_BEAR, CD_WORLD_CAR, -1, green, CD_WORLD_ZIGZAG);
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_BEAR, CD_WORLD_DUCK, -1, green, CD_WORLD_ZIGZAG); /* the duck is now a miss */
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_CAR, -1, -1, green, CD_WORLD_ZIGZAG); /* the bear missing */
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 3 && s.toy_hit == 4 && s.toy_total == 6 && s.pat_hit == 3 && s.txt_hit == 3 &&
         s.txt_total == 3, "%g/%g toy %g/%g pattern %g text %g/%g", s.img_hit, s.img_total, s.toy_hit, s.toy_total, s.pat_hit,
         s.txt_hit, s.txt_total);
  /* 0 keeps the duck */
  const cd_world_names duck = {.toy = "<new1>", .pattern = "<new2>", .toy2 = "<new3>"};
  cd_world_parse_prompt_names("a small <new3> toy on a green background", &duck, &e);
  CHECK(e.nobj == 1 && e.kind[0] == CD_WORLD_DUCK && e.is_concept[0]);
}

/* the ceiling of a composition: known words standing for both concepts ("bear", "striped"),
 * judged as the concepts would be (both in one image for image-alignment) */
TEST(known_words_as_both_concepts) {
  const cd_world_names nm = {.toy = "bear", .pattern = "striped", .toy_kind = CD_WORLD_BEAR, .pattern_kind = CD_WORLD_STRIPED};
  const int green = cd_world_colour_index("green");
  cd_world_expect e;
  cd_world_parse_prompt_names("a big bear toy on a green striped background", &nm, &e);
  CHECK(e.nobj == 1 && e.kind[0] == CD_WORLD_BEAR && e.is_concept[0] && e.pattern == CD_WORLD_STRIPED && e.pattern_is_concept &&
        e.bg == green);
  cd_eval_score s = {0};
  cd_judge_verdict v = verdict(CD_WORLD_BEAR, -1, -1, green, CD_WORLD_STRIPED);
  cd_eval_score_image(&e, &v, &s);
  v = verdict(CD_WORLD_BEAR, -1, -1, green, CD_WORLD_DOTTED);
  cd_eval_score_image(&e, &v, &s);
  CHECKF(s.img_hit == 1 && s.img_total == 2 && s.pat_hit == 1 && s.pat_total == 2 && s.toy_hit == 2 && s.txt_total == 2,
         "%g/%g pattern %g/%g toy %g text %g", s.img_hit, s.img_total, s.pat_hit, s.pat_total, s.toy_hit, s.txt_total);
  /* with the default names, "striped" is an attribute and "zigzag" the held-out pattern */
  const cd_world_names plain = {.toy = "<new1>", .pattern = "<new2>"};
  cd_world_parse_prompt_names("a big bear toy on a green striped background", &plain, &e);
  CHECK(!e.pattern_is_concept && !e.is_concept[0]);
  cd_world_parse_prompt_names("a big bear toy on a green zigzag background", &plain, &e);
  CHECK(e.pattern_is_concept && e.pattern == CD_WORLD_ZIGZAG);
  CHECK(cd_world_pattern_index("striped") == CD_WORLD_STRIPED && cd_world_pattern_index("zigzag") == CD_WORLD_ZIGZAG &&
        cd_world_pattern_index("plain") == -1 && cd_world_pattern_index("pattern") == -1);
}

TEST(binomial_tail_and_margin) {
  /* exact small cases: P(X >= 3) for Bin(4, 1/2) = 5/16; Bin(10, 0.3) >= 0 is 1 */
  CHECK(fabs(cd_binom_tail(4, 3, 0.5) - 5.0 / 16) < 1e-12);
  CHECK(cd_binom_tail(10, 0, 0.3) == 1 && cd_binom_tail(10, 11, 0.3) == 0);
  CHECK(fabs(cd_binom_tail(10, 10, 0.3) - pow(0.3, 10)) < 1e-15);
  /* a sum over the pmf: tails of k and k+1 differ by the pmf at k */
  double d = cd_binom_tail(40, 12, 0.25) - cd_binom_tail(40, 13, 0.25);
  double pmf = exp(lgamma(41) - lgamma(13) - lgamma(29) + 12 * log(0.25) + 28 * log(0.75));
  CHECK(fabs(d - pmf) < 1e-12);
  /* margin: z(1e-3) = 3.0902; n = 40, p = 0.5: 3.0902 * sqrt(0.5/40) + 1/40 = 0.3705 */
  CHECKF(fabs(cd_binom_margin(40, 0.5, 1e-3) - 0.3705) < 1e-3, "%g", cd_binom_margin(40, 0.5, 1e-3));
  /* the margin shrinks with n and with p away from 1/2 */
  CHECK(cd_binom_margin(160, 0.5, 1e-3) < cd_binom_margin(40, 0.5, 1e-3));
  CHECK(cd_binom_margin(40, 0.1, 1e-3) < cd_binom_margin(40, 0.5, 1e-3));
}

int main(void) {
  RUN(scores_concepts_and_attributes);
  RUN(toy_token_as_a_pretraining_kind);
  RUN(second_toy_token_as_a_pretraining_kind);
  RUN(known_words_as_both_concepts);
  RUN(binomial_tail_and_margin);
  return test_summary();
}
