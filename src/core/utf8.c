/* utf8.c - see utf8.h (RFC 3629, table 3-7 of the Unicode standard) */
#include "core/utf8.h"

#include <string.h>

#include "core/common.h"

/* length of the well-formed sequence at s, or 0 */
static int seq_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0x80) return 1;
  int len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (!len || (size_t)len > n) return 0;
  /* the second byte's range excludes overlong forms, surrogates and > U+10FFFF */
  unsigned lo = 0x80, hi = 0xBF;
  if (c == 0xE0) lo = 0xA0;
  else if (c == 0xED) hi = 0x9F;
  else if (c == 0xF0) lo = 0x90;
  else if (c == 0xF4) hi = 0x8F;
  if (s[1] < lo || s[1] > hi) return 0;
  for (int i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xBF) return 0;
  return len;
}

long cd_utf8_invalid_at(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    int k = seq_len(u + i, n - i);
    if (!k) return (long)i;
    i += k;
  }
  return -1;
}

int cd_utf8_decode(const unsigned char *s, size_t n, unsigned *cp) {
  int k = seq_len(s, n);
  if (k <= 1) {
    *cp = s[0];
    return 1;
  }
  unsigned v = s[0] & (0x7F >> k);
  for (int i = 1; i < k; i++) v = v << 6 | (s[i] & 0x3F);
  *cp = v;
  return k;
}

int cd_text_check_utf8(const char *what, const char *s) {
  long i = cd_utf8_invalid_at(s, strlen(s));
  if (i >= 0) return cd_set_error("%s is not valid UTF-8 (byte %ld: 0x%02x)", what, i, (unsigned char)s[i]);
  return 0;
}
