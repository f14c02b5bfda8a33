/* tokenizer.h - the CLIP byte-level BPE tokenizer (OpenAI clip/simple_tokenizer.py rules).
 *
 * Text -> ids: added tokens (<new1>, ...) are split out first on their exact string; every
 * other fragment is cleaned (html entities, whitespace collapse, strip, Unicode lowercase),
 * pre-tokenized with CLIP's regex (specials, contractions, letter runs, single digits,
 * punctuation runs), mapped byte -> unicode symbol and merged by BPE rank with "</w>" ends.
 *
 * Two vocabulary layouts: a Hugging Face folder (vocab.json + merges.txt) or OpenAI's
 * bpe_simple_vocab_16e6.txt(.gz), whose vocabulary is derived exactly as SimpleTokenizer does.
 */
#ifndef CD_TOKENIZER_H
#define CD_TOKENIZER_H

#define CD_TOK_MAX_LEN 77 /* SOS + 75 content tokens + EOS */

typedef struct cd_tokenizer cd_tokenizer;

/* path: a directory with vocab.json + merges.txt (a diffusers tokenizer/ folder, or a model
 * folder holding one), or a bpe_simple_vocab_16e6.txt(.gz) file. 0 / -1 with an error
 * naming the path. */
int cd_tokenizer_load(const char *path, cd_tokenizer **out);
void cd_tokenizer_free(cd_tokenizer *t);

/* Pad id after the end token: 49407 (SD 1.x, the default) or 0 (SD 2.x OpenCLIP). */
void cd_tokenizer_set_pad(cd_tokenizer *t, int pad_id);
int cd_tokenizer_pad(const cd_tokenizer *t);
/* Hugging Face SD 2.x rule: the pad token s ("!") is a special token, split out of the text
 * before anything else and given its vocab id ("!!!" -> [0, 0, 0]). NULL turns it off.
 * A string that is not a vocab entry is ignored with a warning. */
void cd_tokenizer_set_hf_special_pad(cd_tokenizer *t, const char *s);
/* Reads dir/tokenizer_config.json (or dir/special_tokens_map.json) and sets the pad id from
 * "pad_token" (a string or {"content": ...}); a pad token that is not <|startoftext|> or
 * <|endoftext|> also becomes the HF special split token. */
int cd_tokenizer_configure_from_dir(cd_tokenizer *t, const char *dir);

/* Added tokens get ids vocab_size, vocab_size + 1, ...; returns the id, or -1 with an error
 * when s is empty or already a vocab entry or added token. */
int cd_tokenizer_add_token(cd_tokenizer *t, const char *s);
int cd_tokenizer_vocab_size(const cd_tokenizer *t); /* base vocabulary (49408) + added */
/* id of an exact vocab entry ("ktn", "cat</w>") or added token; -1 if none */
int cd_tokenizer_lookup(const cd_tokenizer *t, const char *token_string);
const char *cd_tokenizer_token_str(const cd_tokenizer *t, int id); /* NULL if out of range */
int cd_tokenizer_sos(const cd_tokenizer *t); /* 49406 */
int cd_tokenizer_eos(const cd_tokenizer *t); /* 49407 */

/* Raw ids (no start/end tokens). Writes up to cap ids (ids may be NULL when cap is 0);
 * *n = ids written, *n_total = ids the text has (may exceed cap). n, n_total may be NULL. */
int cd_tokenize(const cd_tokenizer *t, const char *text, int *ids, int cap, int *n, int *n_total);
/* [SOS] + ids[:75] + [EOS], padded to 77 with the pad id; *truncated (may be NULL) = 1 when
 * the text had more than 75 tokens (the caller warns). */
int cd_tokenize_padded(const cd_tokenizer *t, const char *text, int ids[CD_TOK_MAX_LEN],
                       int *truncated);

#endif
