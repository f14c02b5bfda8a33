/* utf8.h - UTF-8 validity of user text (prompts, captions) and decoding for
 * writers of other encodings.
 *
 * Prompts and captions end up in JSON metadata (the delta's args, which
 * Python's safetensors decodes as UTF-8), in PNG iTXt chunks (UTF-8 by the
 * PNG standard) and in EXIF UserComment (UTF-16), so text that is not valid
 * UTF-8 is refused up front. */
#ifndef CD_UTF8_H
#define CD_UTF8_H

#include <stddef.h>

/* -1 when s[0..n) is valid UTF-8 (shortest forms only, no surrogates, nothing
 * above U+10FFFF), else the offset of the first byte of the invalid sequence. */
long cd_utf8_invalid_at(const char *s, size_t n);

/* 0, or -1 with "WHAT is not valid UTF-8 (byte N: 0xXX)" (N as cd_utf8_invalid_at). */
int cd_text_check_utf8(const char *what, const char *s);

/* Decodes one code point at s (valid UTF-8, n > 0 bytes left); returns its length. */
int cd_utf8_decode(const unsigned char *s, size_t n, unsigned *cp);

#endif
