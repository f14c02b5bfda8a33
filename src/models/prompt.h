/* prompt.h - prompt weighting and long prompts in the syntax AUTOMATIC1111,
 * ComfyUI and stable-diffusion.cpp share (A1111's parse_prompt_attention and
 * its "Original" emphasis):
 *
 *   (text)        weight x 1.1          [text]      weight / 1.1
 *   (text:1.3)    weight x 1.3          nesting multiplies: ((text)) = 1.21
 *   \( \) \[ \] \\  the literal character    BREAK  starts a new 75-token chunk
 *
 * An unclosed ( or [ weighs everything up to the end; a ) or ] without its
 * opening bracket, and a ':' outside "(text:number)", are ordinary text.
 * Fragments are tokenized one by one (as A1111 does) and each token carries
 * its fragment's weight. A prompt without ( ) [ ] \ or BREAK is one fragment
 * of weight 1, so it tokenizes and encodes exactly as it did before.
 *
 * Long prompts: the tokens are cut into chunks of 75, each encoded on its own
 * as [BOS] + 75 tokens + [EOS] (padded), and the chunks' encoder outputs are
 * concatenated along the sequence (77 per chunk). Unlike A1111 no chunk is
 * ended early at a comma.
 *
 * Weights act on the encoder output z [77, d] of each chunk (A1111's
 * EmphasisOriginal): z[t] *= w[t] for every token t (BOS, EOS and padding
 * have weight 1), then z *= mean(z before) / mean(z after), the means over
 * all 77 x d values of the chunk.
 *
 * Composition (A1111's "AND", Liu et al. 2022, "Compositional Visual
 * Generation with Composable Diffusion Models"): "A AND B :0.5" is two
 * sub-prompts, each with an optional trailing weight ":w" (default 1), each
 * encoded on its own; the guidance sums their directions,
 *   eps = eps(uncond) + cfg * sum_i w_i * (eps(A_i) - eps(uncond)).
 * AND is the upper-case word alone (not "ANDROID", not "and"). A prompt
 * without AND is one sub-prompt of weight 1 taken whole, a trailing ":w"
 * included, so it means what it meant before.
 */
#ifndef CD_PROMPT_H
#define CD_PROMPT_H

#include "models/tokenizer.h"

typedef struct {
  char *text;    /* the fragment's text, escapes resolved; NULL for a BREAK */
  double weight; /* product of the enclosing brackets' factors */
} cd_prompt_frag;

/* Splits prompt into fragments, adjacent fragments of equal weight merged
 * (at least one fragment: "" of weight 1 for an empty prompt). An error names
 * a malformed weight such as "(a:1.2.3)". */
int cd_prompt_parse(const char *prompt, cd_prompt_frag **out, int *n);
void cd_prompt_frags_free(cd_prompt_frag *f, int n);

/* The chunks of a prompt: ids and weights [*nchunks * 77] (cd_malloc'd), each
 * chunk [BOS] + up to 75 tokens + [EOS], then the tokenizer's pad id; BOS, EOS
 * and padding weigh 1. At least one chunk. */
int cd_prompt_chunks(const cd_tokenizer *t, const char *prompt, int **ids, float **w, int *nchunks);

#define CD_PROMPT_MAX_SUBS 16 /* sub-prompts of one prompt: each is a UNet batch row per image */

typedef struct {
  char *text;   /* the sub-prompt, surrounding spaces and its ":w" removed */
  float weight; /* its guidance weight */
} cd_prompt_sub;

/* Splits prompt at each AND into *n >= 1 sub-prompts (cd_malloc'd). An error
 * names an empty sub-prompt ("a cat AND") or a non-finite weight. */
int cd_prompt_split_and(const char *prompt, cd_prompt_sub **out, int *n);
void cd_prompt_subs_free(cd_prompt_sub *s, int n);

/* A1111's emphasis on one chunk's encoder output z [T, d] with token weights w[T]. */
void cd_prompt_emphasis(float *z, const float *w, int T, int d);

#endif
