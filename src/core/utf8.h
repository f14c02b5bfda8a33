/* utf8.h - UTF-8 validity of user text (prompts, captions).
 *
 * Prompts and captions end up in JSON metadata (the delta's args, which
 * Python's safetensors decodes as UTF-8) and in PNG iTXt chunks (UTF-8 by
 * the PNG standard), so text that is not valid UTF-8 is refused up front. */
#ifndef CD_UTF8_H
#define CD_UTF8_H

/* 0, or -1 with "WHAT is not valid UTF-8 (byte N: 0xXX)" for a bad, overlong
 * or truncated sequence, a surrogate or a code point above U+10FFFF. */
int cd_text_check_utf8(const char *what, const char *s);

#endif
