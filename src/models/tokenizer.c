/* tokenizer.c - CLIP byte-level BPE tokenizer (see tokenizer.h).
 *
 * Reproduces OpenAI's clip/simple_tokenizer.py (ftfy excepted): html unescape x2, whitespace
 * collapse + strip, str.lower(), the pre-tokenizer regex
 *   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (hand-written over code points, Unicode tables generated from Python's unicodedata), the
 * byte -> unicode symbol map and BPE by merge rank. Symbols are vocab ids throughout: a merge
 * is a hash map (id_a, id_b) -> (rank, id of the merged string).
 */
#include "models/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/common.h"
#include "io/fsutil.h"

#define N_OPENAI_MERGES (49152 - 256 - 2) /* merge lines SimpleTokenizer uses: 48894 */
#define CP_RAW 0x110000u                  /* CP_RAW + b: an invalid UTF-8 byte b, kept as is */

/* ---------------------------------------------------------------- Unicode tables */

/* Generated from Python 3.11 unicodedata (Unicode 14.0.0). */
/* \p{L}: code point ranges [lo, hi] of categories Lu Ll Lt Lm Lo */
static const uint32_t k_letter[][2] = {
    {0x41,0x5a}, {0x61,0x7a}, {0xaa,0xaa}, {0xb5,0xb5}, {0xba,0xba}, {0xc0,0xd6}, {0xd8,0xf6},
    {0xf8,0x2c1}, {0x2c6,0x2d1}, {0x2e0,0x2e4}, {0x2ec,0x2ec}, {0x2ee,0x2ee}, {0x370,0x374},
    {0x376,0x377}, {0x37a,0x37d}, {0x37f,0x37f}, {0x386,0x386}, {0x388,0x38a}, {0x38c,0x38c},
    {0x38e,0x3a1}, {0x3a3,0x3f5}, {0x3f7,0x481}, {0x48a,0x52f}, {0x531,0x556}, {0x559,0x559},
    {0x560,0x588}, {0x5d0,0x5ea}, {0x5ef,0x5f2}, {0x620,0x64a}, {0x66e,0x66f}, {0x671,0x6d3},
    {0x6d5,0x6d5}, {0x6e5,0x6e6}, {0x6ee,0x6ef}, {0x6fa,0x6fc}, {0x6ff,0x6ff}, {0x710,0x710},
    {0x712,0x72f}, {0x74d,0x7a5}, {0x7b1,0x7b1}, {0x7ca,0x7ea}, {0x7f4,0x7f5}, {0x7fa,0x7fa},
    {0x800,0x815}, {0x81a,0x81a}, {0x824,0x824}, {0x828,0x828}, {0x840,0x858}, {0x860,0x86a},
    {0x870,0x887}, {0x889,0x88e}, {0x8a0,0x8c9}, {0x904,0x939}, {0x93d,0x93d}, {0x950,0x950},
    {0x958,0x961}, {0x971,0x980}, {0x985,0x98c}, {0x98f,0x990}, {0x993,0x9a8}, {0x9aa,0x9b0},
    {0x9b2,0x9b2}, {0x9b6,0x9b9}, {0x9bd,0x9bd}, {0x9ce,0x9ce}, {0x9dc,0x9dd}, {0x9df,0x9e1},
    {0x9f0,0x9f1}, {0x9fc,0x9fc}, {0xa05,0xa0a}, {0xa0f,0xa10}, {0xa13,0xa28}, {0xa2a,0xa30},
    {0xa32,0xa33}, {0xa35,0xa36}, {0xa38,0xa39}, {0xa59,0xa5c}, {0xa5e,0xa5e}, {0xa72,0xa74},
    {0xa85,0xa8d}, {0xa8f,0xa91}, {0xa93,0xaa8}, {0xaaa,0xab0}, {0xab2,0xab3}, {0xab5,0xab9},
    {0xabd,0xabd}, {0xad0,0xad0}, {0xae0,0xae1}, {0xaf9,0xaf9}, {0xb05,0xb0c}, {0xb0f,0xb10},
    {0xb13,0xb28}, {0xb2a,0xb30}, {0xb32,0xb33}, {0xb35,0xb39}, {0xb3d,0xb3d}, {0xb5c,0xb5d},
    {0xb5f,0xb61}, {0xb71,0xb71}, {0xb83,0xb83}, {0xb85,0xb8a}, {0xb8e,0xb90}, {0xb92,0xb95},
    {0xb99,0xb9a}, {0xb9c,0xb9c}, {0xb9e,0xb9f}, {0xba3,0xba4}, {0xba8,0xbaa}, {0xbae,0xbb9},
    {0xbd0,0xbd0}, {0xc05,0xc0c}, {0xc0e,0xc10}, {0xc12,0xc28}, {0xc2a,0xc39}, {0xc3d,0xc3d},
    {0xc58,0xc5a}, {0xc5d,0xc5d}, {0xc60,0xc61}, {0xc80,0xc80}, {0xc85,0xc8c}, {0xc8e,0xc90},
    {0xc92,0xca8}, {0xcaa,0xcb3}, {0xcb5,0xcb9}, {0xcbd,0xcbd}, {0xcdd,0xcde}, {0xce0,0xce1},
    {0xcf1,0xcf2}, {0xd04,0xd0c}, {0xd0e,0xd10}, {0xd12,0xd3a}, {0xd3d,0xd3d}, {0xd4e,0xd4e},
    {0xd54,0xd56}, {0xd5f,0xd61}, {0xd7a,0xd7f}, {0xd85,0xd96}, {0xd9a,0xdb1}, {0xdb3,0xdbb},
    {0xdbd,0xdbd}, {0xdc0,0xdc6}, {0xe01,0xe30}, {0xe32,0xe33}, {0xe40,0xe46}, {0xe81,0xe82},
    {0xe84,0xe84}, {0xe86,0xe8a}, {0xe8c,0xea3}, {0xea5,0xea5}, {0xea7,0xeb0}, {0xeb2,0xeb3},
    {0xebd,0xebd}, {0xec0,0xec4}, {0xec6,0xec6}, {0xedc,0xedf}, {0xf00,0xf00}, {0xf40,0xf47},
    {0xf49,0xf6c}, {0xf88,0xf8c}, {0x1000,0x102a}, {0x103f,0x103f}, {0x1050,0x1055},
    {0x105a,0x105d}, {0x1061,0x1061}, {0x1065,0x1066}, {0x106e,0x1070}, {0x1075,0x1081},
    {0x108e,0x108e}, {0x10a0,0x10c5}, {0x10c7,0x10c7}, {0x10cd,0x10cd}, {0x10d0,0x10fa},
    {0x10fc,0x1248}, {0x124a,0x124d}, {0x1250,0x1256}, {0x1258,0x1258}, {0x125a,0x125d},
    {0x1260,0x1288}, {0x128a,0x128d}, {0x1290,0x12b0}, {0x12b2,0x12b5}, {0x12b8,0x12be},
    {0x12c0,0x12c0}, {0x12c2,0x12c5}, {0x12c8,0x12d6}, {0x12d8,0x1310}, {0x1312,0x1315},
    {0x1318,0x135a}, {0x1380,0x138f}, {0x13a0,0x13f5}, {0x13f8,0x13fd}, {0x1401,0x166c},
    {0x166f,0x167f}, {0x1681,0x169a}, {0x16a0,0x16ea}, {0x16f1,0x16f8}, {0x1700,0x1711},
    {0x171f,0x1731}, {0x1740,0x1751}, {0x1760,0x176c}, {0x176e,0x1770}, {0x1780,0x17b3},
    {0x17d7,0x17d7}, {0x17dc,0x17dc}, {0x1820,0x1878}, {0x1880,0x1884}, {0x1887,0x18a8},
    {0x18aa,0x18aa}, {0x18b0,0x18f5}, {0x1900,0x191e}, {0x1950,0x196d}, {0x1970,0x1974},
    {0x1980,0x19ab}, {0x19b0,0x19c9}, {0x1a00,0x1a16}, {0x1a20,0x1a54}, {0x1aa7,0x1aa7},
    {0x1b05,0x1b33}, {0x1b45,0x1b4c}, {0x1b83,0x1ba0}, {0x1bae,0x1baf}, {0x1bba,0x1be5},
    {0x1c00,0x1c23}, {0x1c4d,0x1c4f}, {0x1c5a,0x1c7d}, {0x1c80,0x1c88}, {0x1c90,0x1cba},
    {0x1cbd,0x1cbf}, {0x1ce9,0x1cec}, {0x1cee,0x1cf3}, {0x1cf5,0x1cf6}, {0x1cfa,0x1cfa},
    {0x1d00,0x1dbf}, {0x1e00,0x1f15}, {0x1f18,0x1f1d}, {0x1f20,0x1f45}, {0x1f48,0x1f4d},
    {0x1f50,0x1f57}, {0x1f59,0x1f59}, {0x1f5b,0x1f5b}, {0x1f5d,0x1f5d}, {0x1f5f,0x1f7d},
    {0x1f80,0x1fb4}, {0x1fb6,0x1fbc}, {0x1fbe,0x1fbe}, {0x1fc2,0x1fc4}, {0x1fc6,0x1fcc},
    {0x1fd0,0x1fd3}, {0x1fd6,0x1fdb}, {0x1fe0,0x1fec}, {0x1ff2,0x1ff4}, {0x1ff6,0x1ffc},
    {0x2071,0x2071}, {0x207f,0x207f}, {0x2090,0x209c}, {0x2102,0x2102}, {0x2107,0x2107},
    {0x210a,0x2113}, {0x2115,0x2115}, {0x2119,0x211d}, {0x2124,0x2124}, {0x2126,0x2126},
    {0x2128,0x2128}, {0x212a,0x212d}, {0x212f,0x2139}, {0x213c,0x213f}, {0x2145,0x2149},
    {0x214e,0x214e}, {0x2183,0x2184}, {0x2c00,0x2ce4}, {0x2ceb,0x2cee}, {0x2cf2,0x2cf3},
    {0x2d00,0x2d25}, {0x2d27,0x2d27}, {0x2d2d,0x2d2d}, {0x2d30,0x2d67}, {0x2d6f,0x2d6f},
    {0x2d80,0x2d96}, {0x2da0,0x2da6}, {0x2da8,0x2dae}, {0x2db0,0x2db6}, {0x2db8,0x2dbe},
    {0x2dc0,0x2dc6}, {0x2dc8,0x2dce}, {0x2dd0,0x2dd6}, {0x2dd8,0x2dde}, {0x2e2f,0x2e2f},
    {0x3005,0x3006}, {0x3031,0x3035}, {0x303b,0x303c}, {0x3041,0x3096}, {0x309d,0x309f},
    {0x30a1,0x30fa}, {0x30fc,0x30ff}, {0x3105,0x312f}, {0x3131,0x318e}, {0x31a0,0x31bf},
    {0x31f0,0x31ff}, {0x3400,0x4dbf}, {0x4e00,0xa48c}, {0xa4d0,0xa4fd}, {0xa500,0xa60c},
    {0xa610,0xa61f}, {0xa62a,0xa62b}, {0xa640,0xa66e}, {0xa67f,0xa69d}, {0xa6a0,0xa6e5},
    {0xa717,0xa71f}, {0xa722,0xa788}, {0xa78b,0xa7ca}, {0xa7d0,0xa7d1}, {0xa7d3,0xa7d3},
    {0xa7d5,0xa7d9}, {0xa7f2,0xa801}, {0xa803,0xa805}, {0xa807,0xa80a}, {0xa80c,0xa822},
    {0xa840,0xa873}, {0xa882,0xa8b3}, {0xa8f2,0xa8f7}, {0xa8fb,0xa8fb}, {0xa8fd,0xa8fe},
    {0xa90a,0xa925}, {0xa930,0xa946}, {0xa960,0xa97c}, {0xa984,0xa9b2}, {0xa9cf,0xa9cf},
    {0xa9e0,0xa9e4}, {0xa9e6,0xa9ef}, {0xa9fa,0xa9fe}, {0xaa00,0xaa28}, {0xaa40,0xaa42},
    {0xaa44,0xaa4b}, {0xaa60,0xaa76}, {0xaa7a,0xaa7a}, {0xaa7e,0xaaaf}, {0xaab1,0xaab1},
    {0xaab5,0xaab6}, {0xaab9,0xaabd}, {0xaac0,0xaac0}, {0xaac2,0xaac2}, {0xaadb,0xaadd},
    {0xaae0,0xaaea}, {0xaaf2,0xaaf4}, {0xab01,0xab06}, {0xab09,0xab0e}, {0xab11,0xab16},
    {0xab20,0xab26}, {0xab28,0xab2e}, {0xab30,0xab5a}, {0xab5c,0xab69}, {0xab70,0xabe2},
    {0xac00,0xd7a3}, {0xd7b0,0xd7c6}, {0xd7cb,0xd7fb}, {0xf900,0xfa6d}, {0xfa70,0xfad9},
    {0xfb00,0xfb06}, {0xfb13,0xfb17}, {0xfb1d,0xfb1d}, {0xfb1f,0xfb28}, {0xfb2a,0xfb36},
    {0xfb38,0xfb3c}, {0xfb3e,0xfb3e}, {0xfb40,0xfb41}, {0xfb43,0xfb44}, {0xfb46,0xfbb1},
    {0xfbd3,0xfd3d}, {0xfd50,0xfd8f}, {0xfd92,0xfdc7}, {0xfdf0,0xfdfb}, {0xfe70,0xfe74},
    {0xfe76,0xfefc}, {0xff21,0xff3a}, {0xff41,0xff5a}, {0xff66,0xffbe}, {0xffc2,0xffc7},
    {0xffca,0xffcf}, {0xffd2,0xffd7}, {0xffda,0xffdc}, {0x10000,0x1000b}, {0x1000d,0x10026},
    {0x10028,0x1003a}, {0x1003c,0x1003d}, {0x1003f,0x1004d}, {0x10050,0x1005d}, {0x10080,0x100fa},
    {0x10280,0x1029c}, {0x102a0,0x102d0}, {0x10300,0x1031f}, {0x1032d,0x10340}, {0x10342,0x10349},
    {0x10350,0x10375}, {0x10380,0x1039d}, {0x103a0,0x103c3}, {0x103c8,0x103cf}, {0x10400,0x1049d},
    {0x104b0,0x104d3}, {0x104d8,0x104fb}, {0x10500,0x10527}, {0x10530,0x10563}, {0x10570,0x1057a},
    {0x1057c,0x1058a}, {0x1058c,0x10592}, {0x10594,0x10595}, {0x10597,0x105a1}, {0x105a3,0x105b1},
    {0x105b3,0x105b9}, {0x105bb,0x105bc}, {0x10600,0x10736}, {0x10740,0x10755}, {0x10760,0x10767},
    {0x10780,0x10785}, {0x10787,0x107b0}, {0x107b2,0x107ba}, {0x10800,0x10805}, {0x10808,0x10808},
    {0x1080a,0x10835}, {0x10837,0x10838}, {0x1083c,0x1083c}, {0x1083f,0x10855}, {0x10860,0x10876},
    {0x10880,0x1089e}, {0x108e0,0x108f2}, {0x108f4,0x108f5}, {0x10900,0x10915}, {0x10920,0x10939},
    {0x10980,0x109b7}, {0x109be,0x109bf}, {0x10a00,0x10a00}, {0x10a10,0x10a13}, {0x10a15,0x10a17},
    {0x10a19,0x10a35}, {0x10a60,0x10a7c}, {0x10a80,0x10a9c}, {0x10ac0,0x10ac7}, {0x10ac9,0x10ae4},
    {0x10b00,0x10b35}, {0x10b40,0x10b55}, {0x10b60,0x10b72}, {0x10b80,0x10b91}, {0x10c00,0x10c48},
    {0x10c80,0x10cb2}, {0x10cc0,0x10cf2}, {0x10d00,0x10d23}, {0x10e80,0x10ea9}, {0x10eb0,0x10eb1},
    {0x10f00,0x10f1c}, {0x10f27,0x10f27}, {0x10f30,0x10f45}, {0x10f70,0x10f81}, {0x10fb0,0x10fc4},
    {0x10fe0,0x10ff6}, {0x11003,0x11037}, {0x11071,0x11072}, {0x11075,0x11075}, {0x11083,0x110af},
    {0x110d0,0x110e8}, {0x11103,0x11126}, {0x11144,0x11144}, {0x11147,0x11147}, {0x11150,0x11172},
    {0x11176,0x11176}, {0x11183,0x111b2}, {0x111c1,0x111c4}, {0x111da,0x111da}, {0x111dc,0x111dc},
    {0x11200,0x11211}, {0x11213,0x1122b}, {0x11280,0x11286}, {0x11288,0x11288}, {0x1128a,0x1128d},
    {0x1128f,0x1129d}, {0x1129f,0x112a8}, {0x112b0,0x112de}, {0x11305,0x1130c}, {0x1130f,0x11310},
    {0x11313,0x11328}, {0x1132a,0x11330}, {0x11332,0x11333}, {0x11335,0x11339}, {0x1133d,0x1133d},
    {0x11350,0x11350}, {0x1135d,0x11361}, {0x11400,0x11434}, {0x11447,0x1144a}, {0x1145f,0x11461},
    {0x11480,0x114af}, {0x114c4,0x114c5}, {0x114c7,0x114c7}, {0x11580,0x115ae}, {0x115d8,0x115db},
    {0x11600,0x1162f}, {0x11644,0x11644}, {0x11680,0x116aa}, {0x116b8,0x116b8}, {0x11700,0x1171a},
    {0x11740,0x11746}, {0x11800,0x1182b}, {0x118a0,0x118df}, {0x118ff,0x11906}, {0x11909,0x11909},
    {0x1190c,0x11913}, {0x11915,0x11916}, {0x11918,0x1192f}, {0x1193f,0x1193f}, {0x11941,0x11941},
    {0x119a0,0x119a7}, {0x119aa,0x119d0}, {0x119e1,0x119e1}, {0x119e3,0x119e3}, {0x11a00,0x11a00},
    {0x11a0b,0x11a32}, {0x11a3a,0x11a3a}, {0x11a50,0x11a50}, {0x11a5c,0x11a89}, {0x11a9d,0x11a9d},
    {0x11ab0,0x11af8}, {0x11c00,0x11c08}, {0x11c0a,0x11c2e}, {0x11c40,0x11c40}, {0x11c72,0x11c8f},
    {0x11d00,0x11d06}, {0x11d08,0x11d09}, {0x11d0b,0x11d30}, {0x11d46,0x11d46}, {0x11d60,0x11d65},
    {0x11d67,0x11d68}, {0x11d6a,0x11d89}, {0x11d98,0x11d98}, {0x11ee0,0x11ef2}, {0x11fb0,0x11fb0},
    {0x12000,0x12399}, {0x12480,0x12543}, {0x12f90,0x12ff0}, {0x13000,0x1342e}, {0x14400,0x14646},
    {0x16800,0x16a38}, {0x16a40,0x16a5e}, {0x16a70,0x16abe}, {0x16ad0,0x16aed}, {0x16b00,0x16b2f},
    {0x16b40,0x16b43}, {0x16b63,0x16b77}, {0x16b7d,0x16b8f}, {0x16e40,0x16e7f}, {0x16f00,0x16f4a},
    {0x16f50,0x16f50}, {0x16f93,0x16f9f}, {0x16fe0,0x16fe1}, {0x16fe3,0x16fe3}, {0x17000,0x187f7},
    {0x18800,0x18cd5}, {0x18d00,0x18d08}, {0x1aff0,0x1aff3}, {0x1aff5,0x1affb}, {0x1affd,0x1affe},
    {0x1b000,0x1b122}, {0x1b150,0x1b152}, {0x1b164,0x1b167}, {0x1b170,0x1b2fb}, {0x1bc00,0x1bc6a},
    {0x1bc70,0x1bc7c}, {0x1bc80,0x1bc88}, {0x1bc90,0x1bc99}, {0x1d400,0x1d454}, {0x1d456,0x1d49c},
    {0x1d49e,0x1d49f}, {0x1d4a2,0x1d4a2}, {0x1d4a5,0x1d4a6}, {0x1d4a9,0x1d4ac}, {0x1d4ae,0x1d4b9},
    {0x1d4bb,0x1d4bb}, {0x1d4bd,0x1d4c3}, {0x1d4c5,0x1d505}, {0x1d507,0x1d50a}, {0x1d50d,0x1d514},
    {0x1d516,0x1d51c}, {0x1d51e,0x1d539}, {0x1d53b,0x1d53e}, {0x1d540,0x1d544}, {0x1d546,0x1d546},
    {0x1d54a,0x1d550}, {0x1d552,0x1d6a5}, {0x1d6a8,0x1d6c0}, {0x1d6c2,0x1d6da}, {0x1d6dc,0x1d6fa},
    {0x1d6fc,0x1d714}, {0x1d716,0x1d734}, {0x1d736,0x1d74e}, {0x1d750,0x1d76e}, {0x1d770,0x1d788},
    {0x1d78a,0x1d7a8}, {0x1d7aa,0x1d7c2}, {0x1d7c4,0x1d7cb}, {0x1df00,0x1df1e}, {0x1e100,0x1e12c},
    {0x1e137,0x1e13d}, {0x1e14e,0x1e14e}, {0x1e290,0x1e2ad}, {0x1e2c0,0x1e2eb}, {0x1e7e0,0x1e7e6},
    {0x1e7e8,0x1e7eb}, {0x1e7ed,0x1e7ee}, {0x1e7f0,0x1e7fe}, {0x1e800,0x1e8c4}, {0x1e900,0x1e943},
    {0x1e94b,0x1e94b}, {0x1ee00,0x1ee03}, {0x1ee05,0x1ee1f}, {0x1ee21,0x1ee22}, {0x1ee24,0x1ee24},
    {0x1ee27,0x1ee27}, {0x1ee29,0x1ee32}, {0x1ee34,0x1ee37}, {0x1ee39,0x1ee39}, {0x1ee3b,0x1ee3b},
    {0x1ee42,0x1ee42}, {0x1ee47,0x1ee47}, {0x1ee49,0x1ee49}, {0x1ee4b,0x1ee4b}, {0x1ee4d,0x1ee4f},
    {0x1ee51,0x1ee52}, {0x1ee54,0x1ee54}, {0x1ee57,0x1ee57}, {0x1ee59,0x1ee59}, {0x1ee5b,0x1ee5b},
    {0x1ee5d,0x1ee5d}, {0x1ee5f,0x1ee5f}, {0x1ee61,0x1ee62}, {0x1ee64,0x1ee64}, {0x1ee67,0x1ee6a},
    {0x1ee6c,0x1ee72}, {0x1ee74,0x1ee77}, {0x1ee79,0x1ee7c}, {0x1ee7e,0x1ee7e}, {0x1ee80,0x1ee89},
    {0x1ee8b,0x1ee9b}, {0x1eea1,0x1eea3}, {0x1eea5,0x1eea9}, {0x1eeab,0x1eebb}, {0x20000,0x2a6df},
    {0x2a700,0x2b738}, {0x2b740,0x2b81d}, {0x2b820,0x2cea1}, {0x2ceb0,0x2ebe0}, {0x2f800,0x2fa1d},
    {0x30000,0x3134a},
};
/* \p{N}: ranges of categories Nd Nl No */
static const uint32_t k_number[][2] = {
    {0x30,0x39}, {0xb2,0xb3}, {0xb9,0xb9}, {0xbc,0xbe}, {0x660,0x669}, {0x6f0,0x6f9}, {0x7c0,0x7c9},
    {0x966,0x96f}, {0x9e6,0x9ef}, {0x9f4,0x9f9}, {0xa66,0xa6f}, {0xae6,0xaef}, {0xb66,0xb6f},
    {0xb72,0xb77}, {0xbe6,0xbf2}, {0xc66,0xc6f}, {0xc78,0xc7e}, {0xce6,0xcef}, {0xd58,0xd5e},
    {0xd66,0xd78}, {0xde6,0xdef}, {0xe50,0xe59}, {0xed0,0xed9}, {0xf20,0xf33}, {0x1040,0x1049},
    {0x1090,0x1099}, {0x1369,0x137c}, {0x16ee,0x16f0}, {0x17e0,0x17e9}, {0x17f0,0x17f9},
    {0x1810,0x1819}, {0x1946,0x194f}, {0x19d0,0x19da}, {0x1a80,0x1a89}, {0x1a90,0x1a99},
    {0x1b50,0x1b59}, {0x1bb0,0x1bb9}, {0x1c40,0x1c49}, {0x1c50,0x1c59}, {0x2070,0x2070},
    {0x2074,0x2079}, {0x2080,0x2089}, {0x2150,0x2182}, {0x2185,0x2189}, {0x2460,0x249b},
    {0x24ea,0x24ff}, {0x2776,0x2793}, {0x2cfd,0x2cfd}, {0x3007,0x3007}, {0x3021,0x3029},
    {0x3038,0x303a}, {0x3192,0x3195}, {0x3220,0x3229}, {0x3248,0x324f}, {0x3251,0x325f},
    {0x3280,0x3289}, {0x32b1,0x32bf}, {0xa620,0xa629}, {0xa6e6,0xa6ef}, {0xa830,0xa835},
    {0xa8d0,0xa8d9}, {0xa900,0xa909}, {0xa9d0,0xa9d9}, {0xa9f0,0xa9f9}, {0xaa50,0xaa59},
    {0xabf0,0xabf9}, {0xff10,0xff19}, {0x10107,0x10133}, {0x10140,0x10178}, {0x1018a,0x1018b},
    {0x102e1,0x102fb}, {0x10320,0x10323}, {0x10341,0x10341}, {0x1034a,0x1034a}, {0x103d1,0x103d5},
    {0x104a0,0x104a9}, {0x10858,0x1085f}, {0x10879,0x1087f}, {0x108a7,0x108af}, {0x108fb,0x108ff},
    {0x10916,0x1091b}, {0x109bc,0x109bd}, {0x109c0,0x109cf}, {0x109d2,0x109ff}, {0x10a40,0x10a48},
    {0x10a7d,0x10a7e}, {0x10a9d,0x10a9f}, {0x10aeb,0x10aef}, {0x10b58,0x10b5f}, {0x10b78,0x10b7f},
    {0x10ba9,0x10baf}, {0x10cfa,0x10cff}, {0x10d30,0x10d39}, {0x10e60,0x10e7e}, {0x10f1d,0x10f26},
    {0x10f51,0x10f54}, {0x10fc5,0x10fcb}, {0x11052,0x1106f}, {0x110f0,0x110f9}, {0x11136,0x1113f},
    {0x111d0,0x111d9}, {0x111e1,0x111f4}, {0x112f0,0x112f9}, {0x11450,0x11459}, {0x114d0,0x114d9},
    {0x11650,0x11659}, {0x116c0,0x116c9}, {0x11730,0x1173b}, {0x118e0,0x118f2}, {0x11950,0x11959},
    {0x11c50,0x11c6c}, {0x11d50,0x11d59}, {0x11da0,0x11da9}, {0x11fc0,0x11fd4}, {0x12400,0x1246e},
    {0x16a60,0x16a69}, {0x16ac0,0x16ac9}, {0x16b50,0x16b59}, {0x16b5b,0x16b61}, {0x16e80,0x16e96},
    {0x1d2e0,0x1d2f3}, {0x1d360,0x1d378}, {0x1d7ce,0x1d7ff}, {0x1e140,0x1e149}, {0x1e2f0,0x1e2f9},
    {0x1e8c7,0x1e8cf}, {0x1e950,0x1e959}, {0x1ec71,0x1ecab}, {0x1ecad,0x1ecaf}, {0x1ecb1,0x1ecb4},
    {0x1ed01,0x1ed2d}, {0x1ed2f,0x1ed3d}, {0x1f100,0x1f10c}, {0x1fbf0,0x1fbf9},
};
/* str.isspace() */
static const uint32_t k_space[][2] = {
    {0x9,0xd}, {0x1c,0x20}, {0x85,0x85}, {0xa0,0xa0}, {0x1680,0x1680}, {0x2000,0x200a},
    {0x2028,0x2029}, {0x202f,0x202f}, {0x205f,0x205f}, {0x3000,0x3000},
};
/* str.lower() one-to-one mappings: {lo, hi, step, delta}: cp in lo..hi by step -> cp + delta */
static const int32_t k_lower[][4] = {
    {0x41,0x5a,0x1,0x20}, {0xc0,0xd6,0x1,0x20}, {0xd8,0xde,0x1,0x20}, {0x100,0x12e,0x2,0x1},
    {0x132,0x136,0x2,0x1}, {0x139,0x147,0x2,0x1}, {0x14a,0x176,0x2,0x1}, {0x178,0x178,0x1,-0x79},
    {0x179,0x17d,0x2,0x1}, {0x181,0x181,0x1,0xd2}, {0x182,0x184,0x2,0x1}, {0x186,0x186,0x1,0xce},
    {0x187,0x187,0x1,0x1}, {0x189,0x18a,0x1,0xcd}, {0x18b,0x18b,0x1,0x1}, {0x18e,0x18e,0x1,0x4f},
    {0x18f,0x18f,0x1,0xca}, {0x190,0x190,0x1,0xcb}, {0x191,0x191,0x1,0x1}, {0x193,0x193,0x1,0xcd},
    {0x194,0x194,0x1,0xcf}, {0x196,0x196,0x1,0xd3}, {0x197,0x197,0x1,0xd1}, {0x198,0x198,0x1,0x1},
    {0x19c,0x19c,0x1,0xd3}, {0x19d,0x19d,0x1,0xd5}, {0x19f,0x19f,0x1,0xd6}, {0x1a0,0x1a4,0x2,0x1},
    {0x1a6,0x1a6,0x1,0xda}, {0x1a7,0x1a7,0x1,0x1}, {0x1a9,0x1a9,0x1,0xda}, {0x1ac,0x1ac,0x1,0x1},
    {0x1ae,0x1ae,0x1,0xda}, {0x1af,0x1af,0x1,0x1}, {0x1b1,0x1b2,0x1,0xd9}, {0x1b3,0x1b5,0x2,0x1},
    {0x1b7,0x1b7,0x1,0xdb}, {0x1b8,0x1b8,0x1,0x1}, {0x1bc,0x1bc,0x1,0x1}, {0x1c4,0x1c4,0x1,0x2},
    {0x1c5,0x1c5,0x1,0x1}, {0x1c7,0x1c7,0x1,0x2}, {0x1c8,0x1c8,0x1,0x1}, {0x1ca,0x1ca,0x1,0x2},
    {0x1cb,0x1db,0x2,0x1}, {0x1de,0x1ee,0x2,0x1}, {0x1f1,0x1f1,0x1,0x2}, {0x1f2,0x1f4,0x2,0x1},
    {0x1f6,0x1f6,0x1,-0x61}, {0x1f7,0x1f7,0x1,-0x38}, {0x1f8,0x21e,0x2,0x1},
    {0x220,0x220,0x1,-0x82}, {0x222,0x232,0x2,0x1}, {0x23a,0x23a,0x1,0x2a2b}, {0x23b,0x23b,0x1,0x1},
    {0x23d,0x23d,0x1,-0xa3}, {0x23e,0x23e,0x1,0x2a28}, {0x241,0x241,0x1,0x1},
    {0x243,0x243,0x1,-0xc3}, {0x244,0x244,0x1,0x45}, {0x245,0x245,0x1,0x47}, {0x246,0x24e,0x2,0x1},
    {0x370,0x372,0x2,0x1}, {0x376,0x376,0x1,0x1}, {0x37f,0x37f,0x1,0x74}, {0x386,0x386,0x1,0x26},
    {0x388,0x38a,0x1,0x25}, {0x38c,0x38c,0x1,0x40}, {0x38e,0x38f,0x1,0x3f}, {0x391,0x3a1,0x1,0x20},
    {0x3a3,0x3ab,0x1,0x20}, {0x3cf,0x3cf,0x1,0x8}, {0x3d8,0x3ee,0x2,0x1}, {0x3f4,0x3f4,0x1,-0x3c},
    {0x3f7,0x3f7,0x1,0x1}, {0x3f9,0x3f9,0x1,-0x7}, {0x3fa,0x3fa,0x1,0x1}, {0x3fd,0x3ff,0x1,-0x82},
    {0x400,0x40f,0x1,0x50}, {0x410,0x42f,0x1,0x20}, {0x460,0x480,0x2,0x1}, {0x48a,0x4be,0x2,0x1},
    {0x4c0,0x4c0,0x1,0xf}, {0x4c1,0x4cd,0x2,0x1}, {0x4d0,0x52e,0x2,0x1}, {0x531,0x556,0x1,0x30},
    {0x10a0,0x10c5,0x1,0x1c60}, {0x10c7,0x10c7,0x1,0x1c60}, {0x10cd,0x10cd,0x1,0x1c60},
    {0x13a0,0x13ef,0x1,0x97d0}, {0x13f0,0x13f5,0x1,0x8}, {0x1c90,0x1cba,0x1,-0xbc0},
    {0x1cbd,0x1cbf,0x1,-0xbc0}, {0x1e00,0x1e94,0x2,0x1}, {0x1e9e,0x1e9e,0x1,-0x1dbf},
    {0x1ea0,0x1efe,0x2,0x1}, {0x1f08,0x1f0f,0x1,-0x8}, {0x1f18,0x1f1d,0x1,-0x8},
    {0x1f28,0x1f2f,0x1,-0x8}, {0x1f38,0x1f3f,0x1,-0x8}, {0x1f48,0x1f4d,0x1,-0x8},
    {0x1f59,0x1f5f,0x2,-0x8}, {0x1f68,0x1f6f,0x1,-0x8}, {0x1f88,0x1f8f,0x1,-0x8},
    {0x1f98,0x1f9f,0x1,-0x8}, {0x1fa8,0x1faf,0x1,-0x8}, {0x1fb8,0x1fb9,0x1,-0x8},
    {0x1fba,0x1fbb,0x1,-0x4a}, {0x1fbc,0x1fbc,0x1,-0x9}, {0x1fc8,0x1fcb,0x1,-0x56},
    {0x1fcc,0x1fcc,0x1,-0x9}, {0x1fd8,0x1fd9,0x1,-0x8}, {0x1fda,0x1fdb,0x1,-0x64},
    {0x1fe8,0x1fe9,0x1,-0x8}, {0x1fea,0x1feb,0x1,-0x70}, {0x1fec,0x1fec,0x1,-0x7},
    {0x1ff8,0x1ff9,0x1,-0x80}, {0x1ffa,0x1ffb,0x1,-0x7e}, {0x1ffc,0x1ffc,0x1,-0x9},
    {0x2126,0x2126,0x1,-0x1d5d}, {0x212a,0x212a,0x1,-0x20bf}, {0x212b,0x212b,0x1,-0x2046},
    {0x2132,0x2132,0x1,0x1c}, {0x2160,0x216f,0x1,0x10}, {0x2183,0x2183,0x1,0x1},
    {0x24b6,0x24cf,0x1,0x1a}, {0x2c00,0x2c2f,0x1,0x30}, {0x2c60,0x2c60,0x1,0x1},
    {0x2c62,0x2c62,0x1,-0x29f7}, {0x2c63,0x2c63,0x1,-0xee6}, {0x2c64,0x2c64,0x1,-0x29e7},
    {0x2c67,0x2c6b,0x2,0x1}, {0x2c6d,0x2c6d,0x1,-0x2a1c}, {0x2c6e,0x2c6e,0x1,-0x29fd},
    {0x2c6f,0x2c6f,0x1,-0x2a1f}, {0x2c70,0x2c70,0x1,-0x2a1e}, {0x2c72,0x2c72,0x1,0x1},
    {0x2c75,0x2c75,0x1,0x1}, {0x2c7e,0x2c7f,0x1,-0x2a3f}, {0x2c80,0x2ce2,0x2,0x1},
    {0x2ceb,0x2ced,0x2,0x1}, {0x2cf2,0x2cf2,0x1,0x1}, {0xa640,0xa66c,0x2,0x1},
    {0xa680,0xa69a,0x2,0x1}, {0xa722,0xa72e,0x2,0x1}, {0xa732,0xa76e,0x2,0x1},
    {0xa779,0xa77b,0x2,0x1}, {0xa77d,0xa77d,0x1,-0x8a04}, {0xa77e,0xa786,0x2,0x1},
    {0xa78b,0xa78b,0x1,0x1}, {0xa78d,0xa78d,0x1,-0xa528}, {0xa790,0xa792,0x2,0x1},
    {0xa796,0xa7a8,0x2,0x1}, {0xa7aa,0xa7aa,0x1,-0xa544}, {0xa7ab,0xa7ab,0x1,-0xa54f},
    {0xa7ac,0xa7ac,0x1,-0xa54b}, {0xa7ad,0xa7ad,0x1,-0xa541}, {0xa7ae,0xa7ae,0x1,-0xa544},
    {0xa7b0,0xa7b0,0x1,-0xa512}, {0xa7b1,0xa7b1,0x1,-0xa52a}, {0xa7b2,0xa7b2,0x1,-0xa515},
    {0xa7b3,0xa7b3,0x1,0x3a0}, {0xa7b4,0xa7c2,0x2,0x1}, {0xa7c4,0xa7c4,0x1,-0x30},
    {0xa7c5,0xa7c5,0x1,-0xa543}, {0xa7c6,0xa7c6,0x1,-0x8a38}, {0xa7c7,0xa7c9,0x2,0x1},
    {0xa7d0,0xa7d0,0x1,0x1}, {0xa7d6,0xa7d8,0x2,0x1}, {0xa7f5,0xa7f5,0x1,0x1},
    {0xff21,0xff3a,0x1,0x20}, {0x10400,0x10427,0x1,0x28}, {0x104b0,0x104d3,0x1,0x28},
    {0x10570,0x1057a,0x1,0x27}, {0x1057c,0x1058a,0x1,0x27}, {0x1058c,0x10592,0x1,0x27},
    {0x10594,0x10595,0x1,0x27}, {0x10c80,0x10cb2,0x1,0x40}, {0x118a0,0x118bf,0x1,0x20},
    {0x16e40,0x16e5f,0x1,0x20}, {0x1e900,0x1e921,0x1,0x22},
};

static int in_ranges(const uint32_t (*r)[2], int n, uint32_t cp) {
  int lo = 0, hi = n - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (cp < r[mid][0]) hi = mid - 1;
    else if (cp > r[mid][1]) lo = mid + 1;
    else return 1;
  }
  return 0;
}
#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return cp < CP_RAW && in_ranges(k_letter, NELEM(k_letter), cp);
}
static int is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return cp < CP_RAW && in_ranges(k_number, NELEM(k_number), cp);
}
static int is_space(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f);
  return cp < CP_RAW && in_ranges(k_space, NELEM(k_space), cp);
}
/* one-to-one part of str.lower() (U+0130 and final sigma are handled by the caller) */
static uint32_t lower_cp(uint32_t cp) {
  if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 0x20 : cp;
  if (cp >= CP_RAW) return cp;
  int lo = 0, hi = NELEM(k_lower) - 1;
  while (lo <= hi) { /* last run with start <= cp */
    int mid = (lo + hi) / 2;
    if ((int32_t)cp < k_lower[mid][0]) hi = mid - 1;
    else lo = mid + 1;
  }
  if (hi < 0) return cp;
  const int32_t *r = k_lower[hi];
  if ((int32_t)cp > r[1] || ((int32_t)cp - r[0]) % r[2]) return cp;
  return (uint32_t)((int32_t)cp + r[3]);
}

/* ---------------------------------------------------------------- UTF-8 */

static int utf8_put(uint32_t cp, unsigned char *o) {
  if (cp >= CP_RAW) { o[0] = (unsigned char)(cp - CP_RAW); return 1; }
  if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
  if (cp < 0x800) { o[0] = 0xc0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3f); return 2; }
  if (cp < 0x10000) {
    o[0] = 0xe0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3f); o[2] = 0x80 | (cp & 0x3f);
    return 3;
  }
  o[0] = 0xf0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3f);
  o[2] = 0x80 | ((cp >> 6) & 0x3f); o[3] = 0x80 | (cp & 0x3f);
  return 4;
}

/* Decodes s[0..len) into cp (capacity len); invalid bytes become CP_RAW + byte. */
static int utf8_decode(const unsigned char *s, size_t len, uint32_t *cp) {
  int n = 0;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    int k = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
    uint32_t v = k == 0 ? c : k == 1 ? c & 0x1f : k == 2 ? c & 0x0f : c & 0x07;
    int ok = k >= 0 && i + k < len;
    for (int j = 1; ok && j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) ok = 0;
      else v = (v << 6) | (s[i + j] & 0x3f);
    }
    static const uint32_t min_for[4] = {0, 0x80, 0x800, 0x10000};
    if (ok && (v < min_for[k] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))) ok = 0;
    if (!ok) { cp[n++] = CP_RAW + c; i++; continue; }
    cp[n++] = v;
    i += k + 1;
  }
  return n;
}

/* ---------------------------------------------------------------- html.unescape */

/* Python's html.unescape for numeric references and the common named ones (&amp; &lt; &gt;
 * &quot; &apos; &nbsp;, the legacy ones also without ';'). The full HTML5 entity table is
 * not reproduced. */
static const uint16_t k_cp1252[32] = { /* &#128; .. &#159; as browsers (and Python) read them */
    0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039,
    0x152, 0x8d, 0x17d, 0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
    0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178};

/* code point for &#num; or (uint32_t)-1 for "drop it" */
static uint32_t charref(uint64_t num) {
  if (num == 0) return 0xfffd;
  if (num == 0x0d) return '\r';
  if (num >= 0x80 && num <= 0x9f) return k_cp1252[num - 0x80];
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return 0xfffd;
  if ((num >= 0x1 && num <= 0x8) || num == 0xb || (num >= 0xe && num <= 0x1f) ||
      (num >= 0x7f && num <= 0x9f) || (num >= 0xfdd0 && num <= 0xfdef) || (num & 0xfffe) == 0xfffe)
    return (uint32_t)-1;
  return (uint32_t)num;
}

/* out must hold len + 1 bytes: every reference is at least as long as its expansion */
static size_t html_unescape(const char *s, size_t len, char *out) {
  static const struct { const char *name, *val; int legacy; } named[] = {
      {"amp", "&", 1}, {"AMP", "&", 1}, {"lt", "<", 1}, {"LT", "<", 1}, {"gt", ">", 1},
      {"GT", ">", 1}, {"quot", "\"", 1}, {"QUOT", "\"", 1}, {"nbsp", "\xc2\xa0", 1},
      {"apos", "'", 0}};
  size_t o = 0, i = 0;
  while (i < len) {
    if (s[i] != '&') { out[o++] = s[i++]; continue; }
    size_t j = i + 1;
    if (j < len && s[j] == '#') {
      int hex = j + 1 < len && (s[j + 1] == 'x' || s[j + 1] == 'X');
      size_t k = j + 1 + hex, d0 = k;
      uint64_t num = 0;
      for (; k < len; k++) {
        int c = (unsigned char)s[k], v;
        if (c >= '0' && c <= '9') v = c - '0';
        else if (hex && (c | 0x20) >= 'a' && (c | 0x20) <= 'f') v = (c | 0x20) - 'a' + 10;
        else break;
        if (num <= 0x10ffff) num = num * (hex ? 16 : 10) + v; /* saturates above the range */
      }
      if (k > d0) {
        if (k < len && s[k] == ';') k++;
        uint32_t cp = charref(num);
        if (cp != (uint32_t)-1) o += utf8_put(cp, (unsigned char *)out + o);
        i = k;
        continue;
      }
    } else {
      int done = 0;
      for (int e = 0; e < NELEM(named) && !done; e++) {
        size_t nl = strlen(named[e].name);
        if (j + nl > len || memcmp(s + j, named[e].name, nl)) continue;
        int semi = j + nl < len && s[j + nl] == ';';
        if (!semi && !named[e].legacy) continue;
        size_t vl = strlen(named[e].val);
        memcpy(out + o, named[e].val, vl);
        o += vl;
        i = j + nl + semi;
        done = 1;
      }
      if (done) continue;
    }
    out[o++] = s[i++];
  }
  out[o] = 0;
  return o;
}

/* ---------------------------------------------------------------- byte -> unicode */

/* GPT-2 / CLIP bytes_to_unicode: printable bytes stand for themselves, the other 68 map to
 * U+0100.. in byte order. order[] lists bytes in SimpleTokenizer's vocabulary order. */
static void byte_symbols(uint32_t cp[256], int order[256]) {
  int n = 0, extra = 0;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    if (printable) { cp[b] = (uint32_t)b; order[n++] = b; }
  }
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    if (!printable) { cp[b] = 256 + (uint32_t)extra++; order[n++] = b; }
  }
}

/* ---------------------------------------------------------------- the tokenizer */

struct cd_tokenizer {
  int n_base;         /* vocabulary entries: ids 0 .. n_base-1 */
  int n_str, cap_str; /* n_base + added tokens */
  char **str;         /* id -> string */
  int *smap;          /* open addressing, string -> id, -1 empty */
  size_t smap_cap;
  uint64_t *pkey;     /* open addressing, (a << 32 | b) -> prank, pmerged; UINT64_MAX empty */
  int *prank, *pmerged;
  size_t pcap;
  int byte_id[256], byte_end_id[256]; /* initial BPE symbols; the last one of a word has </w> */
  int sos, eos, pad;
  char *hf_special; /* HF SD 2.x: the pad token split out as a special token */
  int hf_special_id;
};

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finalizer */
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27; x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static int smap_find(const cd_tokenizer *t, const char *s, size_t n) {
  if (!t->smap_cap) return -1;
  size_t mask = t->smap_cap - 1, i = cd_fnv1a(s, n) & mask;
  for (; t->smap[i] >= 0; i = (i + 1) & mask) {
    const char *k = t->str[t->smap[i]];
    if (strlen(k) == n && !memcmp(k, s, n)) return t->smap[i];
  }
  return -1;
}
/* maps str[id] -> id; a string already present is remapped to id (Python dict semantics) */
static void smap_put(cd_tokenizer *t, int id) {
  if ((size_t)(t->n_str + 1) * 2 > t->smap_cap) {
    size_t cap = t->smap_cap ? t->smap_cap : 1024;
    while ((size_t)(t->n_str + 1) * 2 > cap) cap *= 2;
    int *old = t->smap;
    size_t old_cap = t->smap_cap;
    t->smap = cd_malloc(cap * sizeof *t->smap);
    for (size_t i = 0; i < cap; i++) t->smap[i] = -1;
    t->smap_cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
      if (old[i] < 0) continue;
      const char *k = t->str[old[i]];
      size_t j = cd_fnv1a(k, strlen(k)) & (cap - 1);
      while (t->smap[j] >= 0) j = (j + 1) & (cap - 1);
      t->smap[j] = old[i];
    }
    free(old);
  }
  const char *s = t->str[id];
  size_t n = strlen(s), mask = t->smap_cap - 1, i = cd_fnv1a(s, n) & mask;
  for (; t->smap[i] >= 0; i = (i + 1) & mask)
    if (!strcmp(t->str[t->smap[i]], s)) break;
  t->smap[i] = id;
}

static void pmap_init(cd_tokenizer *t, int n) {
  size_t cap = 1024;
  while (cap < (size_t)n * 2) cap *= 2;
  t->pcap = cap;
  t->pkey = cd_malloc(cap * sizeof *t->pkey);
  t->prank = cd_malloc(cap * sizeof *t->prank);
  t->pmerged = cd_malloc(cap * sizeof *t->pmerged);
  for (size_t i = 0; i < cap; i++) t->pkey[i] = UINT64_MAX;
}
static void pmap_put(cd_tokenizer *t, int a, int b, int rank, int merged) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t mask = t->pcap - 1, i = hash_u64(key) & mask;
  while (t->pkey[i] != UINT64_MAX && t->pkey[i] != key) i = (i + 1) & mask;
  t->pkey[i] = key; /* a repeated pair keeps its last rank, as dict(zip(merges, ranks)) */
  t->prank[i] = rank;
  t->pmerged[i] = merged;
}
/* rank of merging (a, b), INT_MAX if no such merge */
static int pmap_get(const cd_tokenizer *t, int a, int b, int *merged) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  size_t mask = t->pcap - 1, i = hash_u64(key) & mask;
  for (; t->pkey[i] != UINT64_MAX; i = (i + 1) & mask)
    if (t->pkey[i] == key) { *merged = t->pmerged[i]; return t->prank[i]; }
  return INT_MAX;
}

static void push_str(cd_tokenizer *t, char *s) { /* takes ownership of s */
  if (t->n_str == t->cap_str) {
    t->cap_str = t->cap_str ? t->cap_str * 2 : 1024;
    t->str = cd_realloc(t->str, (size_t)t->cap_str * sizeof *t->str);
  }
  t->str[t->n_str++] = s;
}

void cd_tokenizer_free(cd_tokenizer *t) {
  if (!t) return;
  for (int i = 0; i < t->n_str; i++) free(t->str[i]);
  free(t->str);
  free(t->smap);
  free(t->pkey);
  free(t->prank);
  free(t->pmerged);
  free(t->hf_special);
  free(t);
}

/* byte symbol tables and special ids, checked against the vocabulary */
static int finish_vocab(cd_tokenizer *t, const char *what) {
  uint32_t cp[256];
  int order[256];
  byte_symbols(cp, order);
  for (int b = 0; b < 256; b++) {
    char s[16];
    int n = utf8_put(cp[b], (unsigned char *)s);
    memcpy(s + n, "</w>", 5);
    t->byte_end_id[b] = smap_find(t, s, (size_t)n + 4);
    s[n] = 0;
    t->byte_id[b] = smap_find(t, s, (size_t)n);
    if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0)
      return cd_set_error("%s: byte symbol '%s' (byte 0x%02x) or its '</w>' form is missing", what, s, b);
  }
  t->sos = smap_find(t, "<|startoftext|>", 15);
  t->eos = smap_find(t, "<|endoftext|>", 13);
  if (t->sos < 0 || t->eos < 0) return cd_set_error("%s: <|startoftext|> or <|endoftext|> is missing", what);
  t->pad = t->eos;
  t->hf_special_id = -1;
  return 0;
}

/* splits a merges line in place into two symbols; 0 ok, -1 malformed */
static int split_merge(char *line, char **a, char **b) {
  size_t n = strlen(line);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
  char *sp = strchr(line, ' ');
  if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) return -1;
  *sp = 0;
  *a = line;
  *b = sp + 1;
  return 0;
}

static char *concat2(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  char *s = cd_malloc(na + nb + 1);
  memcpy(s, a, na);
  memcpy(s + na, b, nb + 1);
  return s;
}

/* OpenAI layout: header line, then merges; vocabulary = 256 byte symbols, the same with
 * </w>, one entry per merge, <|startoftext|>, <|endoftext|> (SimpleTokenizer.__init__). */
static int load_openai(cd_tokenizer *t, const char *path) {
  gzFile f = gzopen(path, "rb");
  if (!f) return cd_set_error("tokenizer: cannot open '%s': %s", path, strerror(errno ? errno : ENOENT));
  uint32_t cp[256];
  int order[256];
  byte_symbols(cp, order);
  for (int end = 0; end < 2; end++)
    for (int i = 0; i < 256; i++) {
      char s[16];
      int n = utf8_put(cp[order[i]], (unsigned char *)s);
      strcpy(s + n, end ? "</w>" : "");
      push_str(t, cd_strdup(s));
      smap_put(t, t->n_str - 1);
    }
  pmap_init(t, N_OPENAI_MERGES);
  char line[1024];
  int rc = 0;
  for (int r = -1; r < N_OPENAI_MERGES && !rc; r++) {
    if (!gzgets(f, line, sizeof line)) {
      int zerr;
      const char *msg = gzerror(f, &zerr);
      if (zerr != Z_OK && zerr != Z_STREAM_END)
        rc = cd_set_error("tokenizer '%s': corrupt gzip data (%s)", path, msg);
      else
        rc = cd_set_error("tokenizer '%s': %d merge lines, expected %d (truncated or not a CLIP "
                          "merges file)", path, r < 0 ? 0 : r, N_OPENAI_MERGES);
      break;
    }
    size_t len = strlen(line);
    if (len == sizeof line - 1 && line[len - 1] != '\n') {
      rc = cd_set_error("tokenizer '%s' line %d: line too long (not a CLIP merges file)", path, r + 2);
      break;
    }
    if (r < 0) continue; /* header "#version: 0.2" */
    char *a, *b;
    if (split_merge(line, &a, &b)) {
      rc = cd_set_error("tokenizer '%s' line %d: expected two symbols separated by a space", path, r + 2);
      break;
    }
    int ia = smap_find(t, a, strlen(a)), ib = smap_find(t, b, strlen(b));
    if (ia < 0 || ib < 0) {
      rc = cd_set_error("tokenizer '%s' line %d: symbol '%s' was not built by an earlier merge",
                        path, r + 2, ia < 0 ? a : b);
      break;
    }
    push_str(t, concat2(a, b));
    smap_put(t, t->n_str - 1);
    pmap_put(t, ia, ib, r, t->n_str - 1);
  }
  gzclose(f);
  if (rc) return -1;
  push_str(t, cd_strdup("<|startoftext|>"));
  smap_put(t, t->n_str - 1);
  push_str(t, cd_strdup("<|endoftext|>"));
  smap_put(t, t->n_str - 1);
  t->n_base = t->n_str;
  return finish_vocab(t, path);
}

/* Hugging Face layout: vocab.json {"symbol": id} (dense ids) and merges.txt in rank order. */
static int load_hf_files(cd_tokenizer *t, const char *vpath, const char *mpath) {
  char *buf;
  size_t len;
  if (!cd_is_file(vpath)) return cd_set_error("tokenizer: '%s' not found (expected vocab.json and merges.txt)", vpath);
  if (cd_read_file(vpath, &buf, &len)) return cd_prefix_error("tokenizer");
  cJSON *js = cJSON_ParseWithLength(buf, len);
  if (!js) {
    const char *e = cJSON_GetErrorPtr();
    long at = e && e >= buf && e <= buf + len ? (long)(e - buf) : -1;
    free(buf);
    return cd_set_error("tokenizer '%s': invalid JSON near byte %ld", vpath, at);
  }
  free(buf);
  int rc = 0, n = cJSON_IsObject(js) ? cJSON_GetArraySize(js) : 0;
  if (n < 514) rc = cd_set_error("tokenizer '%s': expected an object of at least 514 entries", vpath);
  if (!rc) {
    t->str = cd_calloc((size_t)n, sizeof *t->str);
    t->cap_str = n;
    for (cJSON *it = js->child; it; it = it->next) {
      double v = it->valuedouble;
      if (!cJSON_IsNumber(it) || v < 0 || v >= n || v != (int)v) {
        rc = cd_set_error("tokenizer '%s': key '%s' has id outside 0..%d", vpath, it->string, n - 1);
        break;
      }
      if (t->str[(int)v]) {
        rc = cd_set_error("tokenizer '%s': id %d given twice ('%s', '%s')", vpath, (int)v, t->str[(int)v], it->string);
        break;
      }
      t->str[(int)v] = cd_strdup(it->string);
    }
    t->n_str = n; /* every slot is filled: n distinct ids in 0..n-1 */
  }
  cJSON_Delete(js);
  if (rc) return -1;
  for (int i = 0; i < n; i++) smap_put(t, i);
  t->n_base = n;
  if (finish_vocab(t, vpath)) return -1;

  if (!cd_is_file(mpath)) return cd_set_error("tokenizer: '%s' not found", mpath);
  if (cd_read_file(mpath, &buf, &len)) return cd_prefix_error("tokenizer");
  int n_lines = 1;
  for (size_t i = 0; i < len; i++) n_lines += buf[i] == '\n';
  pmap_init(t, n_lines);
  char *p = buf, *cat = NULL;
  int rank = 0;
  for (int ln = 1; *p && !rc; ln++) {
    char *nl = strchr(p, '\n'), *next = nl ? nl + 1 : p + strlen(p);
    if (nl) *nl = 0;
    char *a, *b;
    if (ln == 1 && !strncmp(p, "#version", 8)) { p = next; continue; }
    if (!*p || !strcmp(p, "\r")) { /* blank lines are only allowed at the end */
      while (*next == '\n' || *next == '\r' || *next == ' ') next++;
      if (*next) rc = cd_set_error("tokenizer '%s' line %d: empty line", mpath, ln);
      break;
    }
    if (split_merge(p, &a, &b)) {
      rc = cd_set_error("tokenizer '%s' line %d: expected two symbols separated by a space", mpath, ln);
      break;
    }
    free(cat);
    cat = concat2(a, b);
    int ia = smap_find(t, a, strlen(a)), ib = smap_find(t, b, strlen(b));
    int im = smap_find(t, cat, strlen(cat));
    if (ia < 0 || ib < 0 || im < 0) {
      rc = cd_set_error("tokenizer '%s' line %d: '%s' is not in vocab.json", mpath, ln,
                        ia < 0 ? a : ib < 0 ? b : cat);
      break;
    }
    pmap_put(t, ia, ib, rank++, im);
    p = next;
  }
  free(cat);
  free(buf);
  if (!rc && rank == 0) rc = cd_set_error("tokenizer '%s': no merges", mpath);
  return rc;
}

static int load_hf(cd_tokenizer *t, const char *dir) {
  char *vpath = cd_path_join(dir, "vocab.json"), *mpath = cd_path_join(dir, "merges.txt");
  int rc = load_hf_files(t, vpath, mpath);
  free(vpath);
  free(mpath);
  return rc;
}

int cd_tokenizer_load(const char *path, cd_tokenizer **out) {
  *out = NULL;
  if (!path || !*path) return cd_set_error("tokenizer: empty vocabulary path");
  cd_tokenizer *t = cd_calloc(1, sizeof *t);
  int rc;
  if (cd_is_dir(path)) {
    /* a diffusers model folder holds the tokenizer in tokenizer/ */
    char *own = cd_path_join(path, "vocab.json"), *sub = cd_path_join(path, "tokenizer");
    char *probe = cd_path_join(sub, "vocab.json");
    rc = load_hf(t, !cd_is_file(own) && cd_is_file(probe) ? sub : path);
    free(own);
    free(sub);
    free(probe);
  } else if (cd_is_file(path)) {
    rc = load_openai(t, path);
  } else {
    rc = cd_set_error("tokenizer: vocabulary '%s' not found (need a folder with vocab.json + "
                      "merges.txt or a bpe_simple_vocab_16e6.txt.gz file)", path);
  }
  if (rc) { cd_tokenizer_free(t); return -1; }
  *out = t;
  return 0;
}

/* ---------------------------------------------------------------- options */

void cd_tokenizer_set_pad(cd_tokenizer *t, int pad_id) { t->pad = pad_id; }
int cd_tokenizer_pad(const cd_tokenizer *t) { return t->pad; }
int cd_tokenizer_sos(const cd_tokenizer *t) { return t->sos; }
int cd_tokenizer_eos(const cd_tokenizer *t) { return t->eos; }
int cd_tokenizer_vocab_size(const cd_tokenizer *t) { return t->n_str; }

void cd_tokenizer_set_hf_special_pad(cd_tokenizer *t, const char *s) {
  free(t->hf_special);
  t->hf_special = NULL;
  t->hf_special_id = -1;
  if (!s || !*s) return;
  int id = smap_find(t, s, strlen(s));
  if (id < 0) { cd_warn("tokenizer: special pad token '%s' is not in the vocabulary; ignored", s); return; }
  t->hf_special = cd_strdup(s);
  t->hf_special_id = id;
}

int cd_tokenizer_lookup(const cd_tokenizer *t, const char *s) {
  return s ? smap_find(t, s, strlen(s)) : -1;
}

const char *cd_tokenizer_token_str(const cd_tokenizer *t, int id) {
  return id >= 0 && id < t->n_str ? t->str[id] : NULL;
}

int cd_tokenizer_add_token(cd_tokenizer *t, const char *s) {
  if (!s || !*s) return cd_set_error("tokenizer: cannot add an empty token");
  int id = smap_find(t, s, strlen(s));
  if (id >= 0)
    return cd_set_error("tokenizer: token '%s' already exists (id %d)%s", s, id,
                        id < t->n_base ? "; choose a string that is not a vocabulary word" : "");
  push_str(t, cd_strdup(s));
  smap_put(t, t->n_str - 1);
  return t->n_str - 1;
}

/* reads "pad_token" (string or {"content": ...}) from a tokenizer_config.json-like file;
 * *pad = NULL if absent. 0 / -1. */
static int read_pad_token(const char *path, char **pad) {
  char *buf;
  size_t len;
  *pad = NULL;
  if (cd_read_file(path, &buf, &len)) return cd_prefix_error("tokenizer config");
  cJSON *js = cJSON_ParseWithLength(buf, len);
  free(buf);
  if (!js || !cJSON_IsObject(js)) { cJSON_Delete(js); return cd_set_error("tokenizer config '%s': invalid JSON", path); }
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(js, "pad_token");
  if (cJSON_IsObject(p)) p = cJSON_GetObjectItemCaseSensitive(p, "content");
  int rc = 0;
  if (cJSON_IsString(p)) *pad = cd_strdup(p->valuestring);
  else if (p && !cJSON_IsNull(p)) rc = cd_set_error("tokenizer config '%s': \"pad_token\" is not a string", path);
  cJSON_Delete(js);
  return rc;
}

int cd_tokenizer_configure_from_dir(cd_tokenizer *t, const char *dir) {
  static const char *names[] = {"tokenizer_config.json", "special_tokens_map.json",
                                "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"};
  char *path = NULL;
  for (int i = 0; i < 4 && !path; i++) {
    path = cd_path_join(dir, names[i]);
    if (!cd_is_file(path)) { free(path); path = NULL; }
  }
  if (!path) return cd_set_error("tokenizer: neither tokenizer_config.json nor special_tokens_map.json in '%s'", dir);
  char *pad;
  if (read_pad_token(path, &pad)) { free(path); return -1; }
  if (!pad) { free(path); return 0; } /* keep the default pad */
  int id = smap_find(t, pad, strlen(pad)), rc = 0;
  if (id < 0) {
    rc = cd_set_error("tokenizer config '%s': pad_token '%s' is not in the vocabulary", path, pad);
  } else {
    t->pad = id;
    /* HF registers the pad token as special; <|...|> tokens are split out by the regex anyway */
    int is_marker = id == t->sos || id == t->eos;
    cd_tokenizer_set_hf_special_pad(t, is_marker ? NULL : pad);
  }
  free(pad);
  free(path);
  return rc;
}

/* ---------------------------------------------------------------- tokenizing */

typedef struct {
  int *v;
  int n, cap;
} ivec;
static void ivec_push(ivec *a, int x) {
  if (a->n == a->cap) {
    a->cap = a->cap ? a->cap * 2 : 64;
    a->v = cd_realloc(a->v, (size_t)a->cap * sizeof *a->v);
  }
  a->v[a->n++] = x;
}

/* BPE of one pre-token's bytes; sym has room for len ids */
static void bpe(const cd_tokenizer *t, const unsigned char *b, int len, int *sym, ivec *out) {
  int n = len;
  for (int i = 0; i < n; i++) sym[i] = t->byte_id[b[i]];
  sym[n - 1] = t->byte_end_id[b[n - 1]];
  while (n > 1) {
    int best = INT_MAX, ba = 0, bb = 0, bm = 0;
    for (int i = 0; i + 1 < n; i++) {
      int m, r = pmap_get(t, sym[i], sym[i + 1], &m);
      if (r < best) { best = r; ba = sym[i]; bb = sym[i + 1]; bm = m; }
    }
    if (best == INT_MAX) break;
    int j = 0; /* merge every occurrence, left to right */
    for (int i = 0; i < n;) {
      if (i + 1 < n && sym[i] == ba && sym[i + 1] == bb) { sym[j++] = bm; i += 2; }
      else sym[j++] = sym[i++];
    }
    n = j;
  }
  for (int i = 0; i < n; i++) ivec_push(out, sym[i]);
}

static int match_ascii(const uint32_t *cp, int n, int i, const char *s) {
  int k = 0;
  for (; s[k]; k++)
    if (i + k >= n || cp[i + k] != (unsigned char)s[k]) return 0;
  return k;
}

/* regex 's|'t|'re|'ve|'m|'ll|'d (case-insensitive: U+017F long s folds to s) at i */
static int contraction(const uint32_t *cp, int n, int i) {
  if (cp[i] != '\'' || i + 1 >= n) return 0;
  uint32_t c = cp[i + 1], d = i + 2 < n ? cp[i + 2] : 0;
  if (c == 's' || c == 0x17f || c == 't' || c == 'm' || c == 'd') return 2;
  if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return 3;
  return 0;
}

/* clean + pre-tokenize + BPE one fragment (text between added tokens) */
static void tokenize_fragment(const cd_tokenizer *t, const char *s, size_t len, ivec *out) {
  if (!len) return;
  /* html.unescape twice (SimpleTokenizer's basic_clean) */
  char *u1 = NULL, *u2 = NULL;
  if (memchr(s, '&', len)) {
    u1 = cd_malloc(len + 1);
    len = html_unescape(s, len, u1);
    u2 = cd_malloc(len + 1);
    len = html_unescape(u1, len, u2);
    s = u2;
  }
  uint32_t *cp = cd_malloc((2 * len + 1) * sizeof *cp);
  int n = utf8_decode((const unsigned char *)s, len, cp);
  free(u1);
  free(u2);
  /* whitespace runs -> one space, strip */
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (is_space(cp[i])) {
      if (m && cp[m - 1] != ' ') cp[m++] = ' ';
    } else {
      cp[m++] = cp[i];
    }
  }
  if (m && cp[m - 1] == ' ') m--;
  n = m;
  /* str.lower(): U+0130 becomes two code points, capital sigma is final at a word end */
  int extra = 0;
  for (int i = 0; i < n; i++) extra += cp[i] == 0x130;
  uint32_t *lc = cd_malloc(((size_t)n + extra + 1) * sizeof *lc);
  m = 0;
  for (int i = 0; i < n; i++) {
    uint32_t c = cp[i];
    if (c == 0x130) { lc[m++] = 'i'; lc[m++] = 0x307; continue; }
    if (c == 0x3a3) {
      int final = i > 0 && is_letter(cp[i - 1]) && !(i + 1 < n && is_letter(cp[i + 1]));
      lc[m++] = final ? 0x3c2 : 0x3c3;
      continue;
    }
    lc[m++] = lower_cp(c);
  }
  free(cp);
  n = m;
  /* pre-tokenize; each piece -> UTF-8 bytes -> BPE */
  unsigned char *bytes = cd_malloc((size_t)n * 4 + 1);
  int *sym = cd_malloc(((size_t)n * 4 + 1) * sizeof *sym);
  for (int i = 0; i < n;) {
    if (lc[i] == ' ') { i++; continue; }
    int k;
    if (match_ascii(lc, n, i, "<|startoftext|>")) { ivec_push(out, t->sos); i += 15; continue; }
    if (match_ascii(lc, n, i, "<|endoftext|>")) { ivec_push(out, t->eos); i += 13; continue; }
    if ((k = contraction(lc, n, i))) {
    } else if (is_letter(lc[i])) {
      for (k = 1; i + k < n && is_letter(lc[i + k]); k++) {}
    } else if (is_number(lc[i])) {
      k = 1;
    } else {
      for (k = 1; i + k < n; k++) {
        uint32_t c = lc[i + k];
        if (c == ' ' || is_letter(c) || is_number(c)) break;
      }
    }
    int nb = 0;
    for (int j = 0; j < k; j++) nb += utf8_put(lc[i + j], bytes + nb);
    bpe(t, bytes, nb, sym, out);
    i += k;
  }
  free(sym);
  free(bytes);
  free(lc);
}

/* added tokens (and the HF special pad) are split out first, longest match at each byte */
static void tokenize_all(const cd_tokenizer *t, const char *text, ivec *out) {
  size_t len = strlen(text), start = 0, pos = 0;
  int n_added = t->n_str - t->n_base;
  while (pos < len) {
    size_t best_len = 0;
    int best_id = -1;
    for (int a = -1; a < n_added; a++) {
      const char *s = a < 0 ? t->hf_special : t->str[t->n_base + a];
      int id = a < 0 ? t->hf_special_id : t->n_base + a;
      if (!s || s[0] != text[pos]) continue;
      size_t sl = strlen(s);
      if (sl > best_len && sl <= len - pos && !memcmp(text + pos, s, sl)) { best_len = sl; best_id = id; }
    }
    if (!best_len) { pos++; continue; }
    tokenize_fragment(t, text + start, pos - start, out);
    ivec_push(out, best_id);
    pos += best_len;
    start = pos;
  }
  tokenize_fragment(t, text + start, len - start, out);
}

int cd_tokenize(const cd_tokenizer *t, const char *text, int *ids, int cap, int *n, int *n_total) {
  if (n) *n = 0;
  if (n_total) *n_total = 0;
  if (!t || !text) return cd_set_error("cd_tokenize: NULL tokenizer or text");
  if (cap < 0 || (cap > 0 && !ids)) return cd_set_error("cd_tokenize: bad output buffer (cap %d)", cap);
  ivec v = {0};
  tokenize_all(t, text, &v);
  int k = CD_MIN(cap, v.n);
  if (k) memcpy(ids, v.v, (size_t)k * sizeof *ids);
  if (n) *n = k;
  if (n_total) *n_total = v.n;
  free(v.v);
  return 0;
}

int cd_tokenize_padded(const cd_tokenizer *t, const char *text, int ids[CD_TOK_MAX_LEN], int *truncated) {
  enum { CONTENT = CD_TOK_MAX_LEN - 2 };
  int n, total;
  if (truncated) *truncated = 0;
  if (cd_tokenize(t, text, ids + 1, CONTENT, &n, &total)) return -1;
  ids[0] = t->sos;
  ids[n + 1] = t->eos;
  for (int i = n + 2; i < CD_TOK_MAX_LEN; i++) ids[i] = t->pad;
  if (truncated) *truncated = total > CONTENT;
  return 0;
}
