/* utf8.c - UTF-8 validation (see utf8.h). */
#include "core/utf8.h"

#include <stddef.h>
#include <stdint.h>

#include "core/common.h"

int cd_text_check_utf8(const char *what, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; p[i];) {
    const unsigned c = p[i];
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    int ok = n >= 0;
    for (int k = 1; ok && k <= n; k++) {
      ok = (p[i + k] & 0xC0) == 0x80; /* also stops at the terminating NUL */
      cp = cp << 6 | (p[i + k] & 0x3F);
    }
    static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
    if (ok && n > 0) ok = cp >= min[n] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    if (!ok) return cd_set_error("%s is not valid UTF-8 (byte %zu: 0x%02x)", what, i, c);
    i += (size_t)n + 1;
  }
  return 0;
}
