/* vocab.h - the world model's own BPE vocabulary, in the Hugging Face CLIP layout.
 *
 * Built from the caption grammar's words (world.h) and the default Custom
 * Diffusion initializer tokens (ktn, pll, ucd) with byte-pair merges learned
 * until every such word is one token. The id layout is CLIP's, so the
 * tokenizer (src/models/tokenizer.c) reads it unchanged:
 *   0..255      the 256 byte symbols (GPT-2/CLIP byte-to-unicode order)
 *   256..511    the same with "</w>"
 *   512..       one entry per merge, in merge order
 *   V-2, V-1    <|startoftext|>, <|endoftext|>  (as CLIP's 49406, 49407)
 * The build is deterministic: ties between equally frequent pairs go to the
 * lexicographically smallest pair.
 */
#ifndef CD_WORLD_VOCAB_H
#define CD_WORLD_VOCAB_H

/* Writes dir/vocab.json, merges.txt, tokenizer_config.json and
 * special_tokens_map.json (dir must exist). *vocab_size (may be NULL)
 * receives V. 0 or -1 with cd_last_error naming the file. */
int cd_world_vocab_write(const char *dir, int *vocab_size);

#endif
