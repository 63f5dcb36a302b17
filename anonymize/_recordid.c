/*
 * _recordid: keyed BLAKE2b record ids in C, for fleetcloak.anonymize.record_id.
 *
 *   record_id = base32(BLAKE2b(key = K[scope, route, "record_id", epoch], digest 16 bytes,
 *                              tenant NUL canonical IMEI NUL content))
 *   base32 = RFC 4648 alphabet, lowercase, no padding: 26 characters for 16 bytes.
 *
 * Entry points (no numpy headers: columns come in through the buffer protocol):
 *   contents(timestamp_ms, priority, lon_raw, lat_raw, altitude, angle, satellites, speed,
 *            event_io_id, io_offsets, io_id, io_width, io_value, io_nx_len, nx_data)
 *       -> (content: bytes, offsets: bytes holding n+1 native int64)
 *       every record's content back to back; record i is content[offsets[i]:offsets[i+1]]:
 *         fixed part, 26 bytes, big-endian: ts u64 | priority u8 | lon i32 | lat i32 |
 *             altitude i16 | angle u16 | satellites u8 | speed u16 | event id u16
 *         one 11-byte entry per IO element in order: id u16 | width u8 | value u64
 *             (an NX element, width 0, carries its length as the value)
 *         then the bytes of the record's NX elements, in element order.
 *       This is batch_columns' former numpy packing (`_FIXED`, `_ELEMENT`), byte for byte.
 *   ids(keys, key_index, prefixes, prefix_index, content, offsets, rows=None, *, simd=True)
 *       -> list[str]
 *       row i: BLAKE2b-128 keyed with keys[key_index[i]] of
 *       prefixes[prefix_index[i]] + content[offsets[r]:offsets[r+1]], r = rows[i] (or i),
 *       as a 26-character str. key_index, prefix_index, offsets, rows: int64 arrays.
 *       One state per (key, prefix) pair met is prepared (key block and the prefix
 *       absorbed); a row costs a state copy, its content's blocks and the final block.
 *       With AVX2 (x86-64, checked at import; module constant LANES = 4, else 1) four
 *       rows are hashed side by side; simd=False forces the one-row loop (tests).
 *   b32_many(digests) -> list[str]     base32 of the first 16 bytes of each digest
 *   blake2b(data, key=b"", digest_size=16) -> bytes    for the tests (== hashlib.blake2b)
 *
 * BLAKE2b follows RFC 7693 (sections 2 and 3; 12 rounds, rotations 32/24/16/63, the
 * parameter block reduced to p[0] = 0x0101kknn, a non-empty key padded to one 128-byte
 * block that is hashed first). As in the RFC's reference code the last block is held
 * back until more data arrives, so it is always compressed with the final flag, even
 * when it is the key block of an empty message.
 *
 * SAFETY:
 *  - Every column is taken with PyObject_GetBuffer (C-contiguous, one-dimensional) and its
 *    item kind (signed / unsigned integer) and size checked against the expected dtype;
 *    native byte order only. Lengths: the record columns all have n items, io_offsets
 *    n+1, the IO columns one common length m.
 *  - contents: per record 0 <= io_offsets[i] <= io_offsets[i+1] <= m; per NX element
 *    start <= len(nx_data) and length <= len(nx_data) - start (in 64 bits, no wrap).
 *    The output size is summed with a check against PY_SSIZE_T_MAX at every step. The
 *    bytes are written by a second pass of the same code, which repeats every check and
 *    also checks each write against the size of the output it was given: a column
 *    changed by another thread between the passes gives an error, never an overrun.
 *    Each value is read once into a local before it is checked and used.
 *  - ids: per row 0 <= rows[i] < m, 0 <= offsets[r] <= offsets[r+1] <= len(content),
 *    key and prefix indexes within their lists; keys are 1..64 bytes. Keys and prefixes
 *    are copied into C memory before the loop.
 *  - GIL: released only around loops that touch C memory and held buffers (which keeps
 *    them alive and unresizable); errors found there are recorded in a plain struct and
 *    raised after the GIL is taken back.
 *  - Key material (copied keys, prepared states) is wiped before it is freed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>

/* ------------------------------------------------------------------ helpers ---- */

static inline uint64_t load64le(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24) |
           ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) | ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}
static inline void store64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void store16be(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void store32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void store64be(uint8_t *p, uint64_t v) { store32be(p, (uint32_t)(v >> 32)); store32be(p + 4, (uint32_t)v); }

/* Zero-filling a block: GCC expands memset(p, 0, 128) to `rep stos`, slow to start on
 * AMD Zen (it showed in profiles of the ids loop); a copy from a zero block becomes
 * eight vector moves. */
static const uint8_t ZERO128[128];

/* memset that the compiler may not drop as a dead store (key material). */
static void wipe(void *p, size_t n) {
    volatile uint8_t *v = p;
    while (n--) *v++ = 0;
}

/* ------------------------------------------------------------- BLAKE2b ---------- */
/* RFC 7693, section 3. */

static const uint64_t B2_IV[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
/* the mixing function G (RFC 7693 3.1) */
#define B2_G(a, b, c, d, x, y) do {                      \
        a = a + b + (x); d = ROTR64(d ^ a, 32);          \
        c = c + d;       b = ROTR64(b ^ c, 24);          \
        a = a + b + (y); d = ROTR64(d ^ a, 16);          \
        c = c + d;       b = ROTR64(b ^ c, 63);          \
    } while (0)
/* one round with message schedule SIGMA[r mod 10], spelled out so every index is a
 * constant and the 16 message words stay in registers */
#define B2_ROUND(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) do { \
        B2_G(v0, v4, v8,  v12, m[s0],  m[s1]);  B2_G(v1, v5, v9,  v13, m[s2],  m[s3]);       \
        B2_G(v2, v6, v10, v14, m[s4],  m[s5]);  B2_G(v3, v7, v11, v15, m[s6],  m[s7]);       \
        B2_G(v0, v5, v10, v15, m[s8],  m[s9]);  B2_G(v1, v6, v11, v12, m[s10], m[s11]);      \
        B2_G(v2, v7, v8,  v13, m[s12], m[s13]); B2_G(v3, v4, v9,  v14, m[s14], m[s15]);      \
    } while (0)

/* the compression function F (RFC 7693 3.2): h ^= F(h, block, t, last) */
static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t0, uint64_t t1, int last) {
    uint64_t m[16];
    for (int i = 0; i < 16; i++) m[i] = load64le(block + 8 * i);
    uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3], v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
    uint64_t v8 = B2_IV[0], v9 = B2_IV[1], v10 = B2_IV[2], v11 = B2_IV[3];
    uint64_t v12 = B2_IV[4] ^ t0, v13 = B2_IV[5] ^ t1;
    uint64_t v14 = last ? ~B2_IV[6] : B2_IV[6], v15 = B2_IV[7];
    B2_ROUND( 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15);
    B2_ROUND(14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3);
    B2_ROUND(11,  8, 12,  0,  5,  2, 15, 13, 10, 14,  3,  6,  7,  1,  9,  4);
    B2_ROUND( 7,  9,  3,  1, 13, 12, 11, 14,  2,  6,  5, 10,  4,  0, 15,  8);
    B2_ROUND( 9,  0,  5,  7,  2,  4, 10, 15, 14,  1, 11, 12,  6,  8,  3, 13);
    B2_ROUND( 2, 12,  6, 10,  0, 11,  8,  3,  4, 13,  7,  5, 15, 14,  1,  9);
    B2_ROUND(12,  5,  1, 15, 14, 13,  4, 10,  0,  7,  6,  3,  9,  2,  8, 11);
    B2_ROUND(13, 11,  7, 14, 12,  1,  3,  9,  5,  0, 15,  4,  8,  6,  2, 10);
    B2_ROUND( 6, 15, 14,  9, 11,  3,  0,  8, 12,  2, 13,  7,  1,  4, 10,  5);
    B2_ROUND(10,  2,  8,  4,  7,  6,  1,  5, 15, 11,  9, 14,  3, 12, 13,  0);
    B2_ROUND( 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15);   /* SIGMA[10 mod 10] */
    B2_ROUND(14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3);   /* SIGMA[11 mod 10] */
    h[0] ^= v0 ^ v8;  h[1] ^= v1 ^ v9;  h[2] ^= v2 ^ v10; h[3] ^= v3 ^ v11;
    h[4] ^= v4 ^ v12; h[5] ^= v5 ^ v13; h[6] ^= v6 ^ v14; h[7] ^= v7 ^ v15;
}

/* Streaming state: buf holds 0..128 bytes not compressed yet; t counts the bytes
 * compressed so far (128-bit counter as two words). */
typedef struct {
    uint64_t h[8];
    uint64_t t0, t1;
    size_t buflen;
    uint8_t buf[128];
} B2;

static inline void b2_count(B2 *s, uint64_t inc) {
    s->t0 += inc;
    if (s->t0 < inc) s->t1++;
}

/* RFC 7693 3.3 init; keylen 0..64, outlen 1..64 (checked by the callers) */
static void b2_init(B2 *s, const uint8_t *key, size_t keylen, size_t outlen) {
    for (int i = 0; i < 8; i++) s->h[i] = B2_IV[i];
    s->h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
    s->t0 = s->t1 = 0;
    s->buflen = 0;
    memset(s->buf, 0, sizeof s->buf);
    if (keylen) {                  /* the key, zero-padded, is the first block */
        memcpy(s->buf, key, keylen);
        s->buflen = 128;
    }
}

static void b2_update(B2 *s, const uint8_t *in, size_t inlen) {
    if (inlen == 0) return;
    size_t fill = 128 - s->buflen;
    if (inlen > fill) {            /* more data follows the buffered bytes: they are not last */
        memcpy(s->buf + s->buflen, in, fill);
        b2_count(s, 128);
        b2_compress(s->h, s->buf, s->t0, s->t1, 0);
        s->buflen = 0;
        in += fill; inlen -= fill;
        while (inlen > 128) {      /* straight from the input; keep the last block back */
            b2_count(s, 128);
            b2_compress(s->h, in, s->t0, s->t1, 0);
            in += 128; inlen -= 128;
        }
    }
    memcpy(s->buf + s->buflen, in, inlen);
    s->buflen += inlen;
}

/* final block (zero-padded, final flag), then the first outlen bytes of h, little-endian */
static void b2_final(B2 *s, uint8_t *out, size_t outlen) {
    uint8_t full[64], block[128];
    memcpy(block, ZERO128, sizeof block);
    memcpy(block, s->buf, s->buflen);
    b2_count(s, s->buflen);
    b2_compress(s->h, block, s->t0, s->t1, 1);
    for (int i = 0; i < 8; i++) store64le(full + 8 * i, s->h[i]);
    memcpy(out, full, outlen);
}

/* ------------------------------------------------- BLAKE2b, 4 messages at once ---- */
/* On x86-64 with AVX2 (checked at import), ids() hashes four rows side by side: each
 * 256-bit register holds one state word of four independent messages, so one pass of
 * the RFC's G function mixes all four. Each lane has its own counter and final flag, and
 * a lane that finishes takes the next row, so rows of different lengths share the work.
 * Same arithmetic as b2_compress, lane by lane (the tests compare both paths). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_LANES 1
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2")))

AVX2_FN static inline __m256i rotr32x4(__m256i x) { return _mm256_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)); }
AVX2_FN static inline __m256i rotr24x4(__m256i x) {
    const __m256i r = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                       3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    return _mm256_shuffle_epi8(x, r);        /* byte j <- byte j+3 of its 64-bit word */
}
AVX2_FN static inline __m256i rotr16x4(__m256i x) {
    const __m256i r = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                       2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    return _mm256_shuffle_epi8(x, r);
}
AVX2_FN static inline __m256i rotr63x4(__m256i x) { return _mm256_or_si256(_mm256_srli_epi64(x, 63), _mm256_add_epi64(x, x)); }

#define B2_G4(a, b, c, d, x, y) do {                                                    \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), x); d = rotr32x4(_mm256_xor_si256(d, a)); \
        c = _mm256_add_epi64(c, d);                      b = rotr24x4(_mm256_xor_si256(b, c)); \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), y); d = rotr16x4(_mm256_xor_si256(d, a)); \
        c = _mm256_add_epi64(c, d);                      b = rotr63x4(_mm256_xor_si256(b, c)); \
    } while (0)
#define B2_ROUND4(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15) do { \
        B2_G4(v0, v4, v8,  v12, m[s0],  m[s1]);  B2_G4(v1, v5, v9,  v13, m[s2],  m[s3]);       \
        B2_G4(v2, v6, v10, v14, m[s4],  m[s5]);  B2_G4(v3, v7, v11, v15, m[s6],  m[s7]);       \
        B2_G4(v0, v5, v10, v15, m[s8],  m[s9]);  B2_G4(v1, v6, v11, v12, m[s10], m[s11]);      \
        B2_G4(v2, v7, v8,  v13, m[s12], m[s13]); B2_G4(v3, v4, v9,  v14, m[s14], m[s15]);      \
    } while (0)

/* h[w][lane] ^= F(h, blocks[lane], t, f) for four lanes; f = all ones on a final block */
AVX2_FN static void b2_compress4(uint64_t h[8][4], const uint8_t *const blocks[4],
                                 const uint64_t t0[4], const uint64_t t1[4], const uint64_t f[4]) {
    __m256i m[16];
    for (int w = 0; w < 16; w += 4) {        /* words w..w+3 of each lane, transposed */
        __m256i r0 = _mm256_loadu_si256((const __m256i *)(blocks[0] + 8 * w));
        __m256i r1 = _mm256_loadu_si256((const __m256i *)(blocks[1] + 8 * w));
        __m256i r2 = _mm256_loadu_si256((const __m256i *)(blocks[2] + 8 * w));
        __m256i r3 = _mm256_loadu_si256((const __m256i *)(blocks[3] + 8 * w));
        __m256i a = _mm256_unpacklo_epi64(r0, r1), b = _mm256_unpackhi_epi64(r0, r1);
        __m256i c = _mm256_unpacklo_epi64(r2, r3), d = _mm256_unpackhi_epi64(r2, r3);
        m[w + 0] = _mm256_permute2x128_si256(a, c, 0x20);
        m[w + 1] = _mm256_permute2x128_si256(b, d, 0x20);
        m[w + 2] = _mm256_permute2x128_si256(a, c, 0x31);
        m[w + 3] = _mm256_permute2x128_si256(b, d, 0x31);
    }
#define LD(i) _mm256_loadu_si256((const __m256i *)h[i])
    __m256i v0 = LD(0), v1 = LD(1), v2 = LD(2), v3 = LD(3), v4 = LD(4), v5 = LD(5), v6 = LD(6), v7 = LD(7);
#undef LD
    __m256i v8 = _mm256_set1_epi64x((long long)B2_IV[0]), v9 = _mm256_set1_epi64x((long long)B2_IV[1]);
    __m256i v10 = _mm256_set1_epi64x((long long)B2_IV[2]), v11 = _mm256_set1_epi64x((long long)B2_IV[3]);
    __m256i v12 = _mm256_xor_si256(_mm256_set1_epi64x((long long)B2_IV[4]), _mm256_loadu_si256((const __m256i *)t0));
    __m256i v13 = _mm256_xor_si256(_mm256_set1_epi64x((long long)B2_IV[5]), _mm256_loadu_si256((const __m256i *)t1));
    __m256i v14 = _mm256_xor_si256(_mm256_set1_epi64x((long long)B2_IV[6]), _mm256_loadu_si256((const __m256i *)f));
    __m256i v15 = _mm256_set1_epi64x((long long)B2_IV[7]);
    B2_ROUND4( 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15);
    B2_ROUND4(14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3);
    B2_ROUND4(11,  8, 12,  0,  5,  2, 15, 13, 10, 14,  3,  6,  7,  1,  9,  4);
    B2_ROUND4( 7,  9,  3,  1, 13, 12, 11, 14,  2,  6,  5, 10,  4,  0, 15,  8);
    B2_ROUND4( 9,  0,  5,  7,  2,  4, 10, 15, 14,  1, 11, 12,  6,  8,  3, 13);
    B2_ROUND4( 2, 12,  6, 10,  0, 11,  8,  3,  4, 13,  7,  5, 15, 14,  1,  9);
    B2_ROUND4(12,  5,  1, 15, 14, 13,  4, 10,  0,  7,  6,  3,  9,  2,  8, 11);
    B2_ROUND4(13, 11,  7, 14, 12,  1,  3,  9,  5,  0, 15,  4,  8,  6,  2, 10);
    B2_ROUND4( 6, 15, 14,  9, 11,  3,  0,  8, 12,  2, 13,  7,  1,  4, 10,  5);
    B2_ROUND4(10,  2,  8,  4,  7,  6,  1,  5, 15, 11,  9, 14,  3, 12, 13,  0);
    B2_ROUND4( 0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15);
    B2_ROUND4(14, 10,  4,  8,  9, 15, 13,  6,  1, 12,  0,  2, 11,  7,  5,  3);
#define ST(i, x, y) _mm256_storeu_si256((__m256i *)h[i], \
        _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)h[i]), _mm256_xor_si256(x, y)))
    ST(0, v0, v8); ST(1, v1, v9); ST(2, v2, v10); ST(3, v3, v11);
    ST(4, v4, v12); ST(5, v5, v13); ST(6, v6, v14); ST(7, v7, v15);
#undef ST
}

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");   /* (libgcc also checks that the OS saves YMM) */
}
#else
#define HAVE_LANES 0
static int have_avx2(void) { return 0; }
#endif
static int use_lanes = 0;                    /* set at import */

/* -------------------------------------------------------------- base32 ---------- */

/* RFC 4648 base32 of 16 bytes, lowercase, unpadded: the 128 bits as two big-endian
 * words hi|lo cut into 25 groups of 5 bits and a last group of 3 bits shifted left by 2;
 * a group g is the letter 'a' + g below 26, else the digit '2' + g - 26 (arithmetic
 * instead of a table, so the compiler vectorises the second loop). */
static inline uint64_t load64be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
static void b32_words(uint64_t hi, uint64_t lo, char out[26]) {
    uint8_t g[26];
    for (int k = 0; k < 12; k++) g[k] = (uint8_t)((hi >> (59 - 5 * k)) & 31);    /* bits 0..59 */
    g[12] = (uint8_t)(((hi & 15) << 1) | (lo >> 63));                            /* 60..64 */
    for (int k = 13; k < 25; k++) g[k] = (uint8_t)((lo >> (123 - 5 * k)) & 31);  /* 65..124 */
    g[25] = (uint8_t)((lo & 7) << 2);                                            /* 125..127, 00 */
    for (int k = 0; k < 26; k++) out[k] = (char)(g[k] + (g[k] < 26 ? 'a' : '2' - 26));
}
static void b32_16(const uint8_t d[16], char out[26]) { b32_words(load64be(d), load64be(d + 8), out); }

/* A BLAKE2b-128 digest is h[0], h[1] stored little-endian: its base32 straight from the
 * two words (byte-swapped: base32 reads the bytes most significant first). */
static inline uint64_t bswap64(uint64_t v) {
    v = ((v & 0x00FF00FF00FF00FFULL) << 8) | ((v >> 8) & 0x00FF00FF00FF00FFULL);
    v = ((v & 0x0000FFFF0000FFFFULL) << 16) | ((v >> 16) & 0x0000FFFF0000FFFFULL);
    return (v << 32) | (v >> 32);
}
static inline void b32_digest(uint64_t h0, uint64_t h1, char out[26]) { b32_words(bswap64(h0), bswap64(h1), out); }

/* 26 ASCII chars -> a compact str (no decoding) */
static PyObject *ascii26(const char *c) {
    PyObject *s = PyUnicode_New(26, 127);
    if (s) memcpy(PyUnicode_1BYTE_DATA(s), c, 26);
    return s;
}

/* ----------------------------------------------------------------- buffers ----- */

typedef struct { Py_buffer v; int held; } Buf;

static void release_all(Buf *bufs, int n) {
    for (int i = 0; i < n; i++) if (bufs[i].held) { PyBuffer_Release(&bufs[i].v); bufs[i].held = 0; }
}

/* 'i' signed integer, 'u' unsigned integer, 0 anything else (a float, a big-endian or a
 * structured array). A NULL format is plain bytes ("B"). */
static char fmt_kind(const char *f) {
    if (!f) return 'u';
    if (*f == '@' || *f == '=') f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<') f++;
#else
    else if (*f == '>' || *f == '!') f++;
#endif
    if (!f[0] || f[1]) return 0;
    if (strchr("bhilqn", f[0])) return 'i';
    if (strchr("BHILQN", f[0])) return 'u';
    return 0;
}

/* A one-dimensional C-contiguous integer column of the given kind and item size;
 * *count = its number of items. */
static int get_col(PyObject *o, Buf *b, char kind, Py_ssize_t itemsize, const char *name, Py_ssize_t *count) {
    if (PyObject_GetBuffer(o, &b->v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous buffer (numpy array) of %sint%zd, got %.80s",
                     name, kind == 'u' ? "u" : "", 8 * itemsize, Py_TYPE(o)->tp_name);
        return -1;
    }
    b->held = 1;
    if (fmt_kind(b->v.format) != kind || b->v.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected %sint%zd in native byte order, got format '%s' (itemsize %zd)",
                     name, kind == 'u' ? "u" : "", 8 * itemsize, b->v.format ? b->v.format : "B", b->v.itemsize);
        return -1;
    }
    if (b->v.ndim != 1) {
        PyErr_Format(PyExc_ValueError, "%s: expected one dimension, got %d", name, b->v.ndim);
        return -1;
    }
    *count = b->v.len / itemsize;
    return 0;
}

/* Any contiguous bytes-like object, read as bytes. */
static int get_bytes(PyObject *o, Buf *b, const char *name) {
    if (PyObject_GetBuffer(o, &b->v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous bytes-like object, got %.80s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    b->held = 1;
    return 0;
}

#define DETAIL_LEN 200
typedef struct {
    PyObject *exc;                 /* PyExc_ValueError, PyExc_OverflowError, ... */
    char detail[DETAIL_LEN];
} Err;

#define FAIL(e, type, ...) do { (e)->exc = (type); snprintf((e)->detail, DETAIL_LEN, __VA_ARGS__); return -1; } while (0)

/* ------------------------------------------------------------- contents --------- */

enum { FIXED_SIZE = 26, ELEMENT_SIZE = 11 };

typedef struct {
    const uint64_t *ts; const uint8_t *pri; const int32_t *lon; const int32_t *lat;
    const int16_t *alt; const uint16_t *ang; const uint8_t *sat; const uint16_t *spd;
    const uint16_t *evt; const int64_t *io_offsets;
    const uint16_t *io_id; const uint8_t *io_width; const uint64_t *io_value; const uint16_t *io_nx_len;
    const uint8_t *nx; uint64_t nx_size;
    Py_ssize_t n, m;
} Cols;

/* One pass over the records. out == NULL: check and count (*total). Otherwise write the
 * contents into out[0:cap] and the record offsets into off[0:n+1], checking again. */
static int build(const Cols *c, uint8_t *out, uint64_t cap, int64_t *off, uint64_t *total, Err *e) {
    const uint64_t limit = (uint64_t)PY_SSIZE_T_MAX;
    uint64_t pos = 0;
    for (Py_ssize_t i = 0; i < c->n; i++) {
        const int64_t o0 = c->io_offsets[i], o1 = c->io_offsets[i + 1];
        if (o0 < 0 || o1 < o0 || o1 > (int64_t)c->m)
            FAIL(e, PyExc_ValueError, "io_offsets[%zd:%zd] = [%lld, %lld] is not a range of the %zd IO elements",
                 i, i + 2, (long long)o0, (long long)o1, c->m);
        /* (o1 - o0) <= m <= 2^60 (8-byte items): 11 x that + 26 fits in 64 bits */
        const uint64_t need = FIXED_SIZE + ELEMENT_SIZE * (uint64_t)(o1 - o0);
        if (need > limit - pos) FAIL(e, PyExc_OverflowError, "record contents exceed the largest bytes object");
        if (out) {
            if (need > cap - pos) FAIL(e, PyExc_RuntimeError, "columns changed while record contents were built");
            uint8_t *w = out + pos;
            off[i] = (int64_t)pos;
            store64be(w, c->ts[i]);
            w[8] = c->pri[i];
            store32be(w + 9, (uint32_t)c->lon[i]);
            store32be(w + 13, (uint32_t)c->lat[i]);
            store16be(w + 17, (uint16_t)c->alt[i]);
            store16be(w + 19, c->ang[i]);
            w[21] = c->sat[i];
            store16be(w + 22, c->spd[i]);
            store16be(w + 24, c->evt[i]);
            w += FIXED_SIZE;
            for (int64_t j = o0; j < o1; j++, w += ELEMENT_SIZE) {
                const uint8_t width = c->io_width[j];
                store16be(w, c->io_id[j]);
                w[2] = width;
                store64be(w + 3, width ? c->io_value[j] : (uint64_t)c->io_nx_len[j]);
            }
        }
        pos += need;
        for (int64_t j = o0; j < o1; j++) {
            if (c->io_width[j] != 0) continue;
            const uint64_t start = c->io_value[j], len = c->io_nx_len[j];
            if (start > c->nx_size || len > c->nx_size - start)
                FAIL(e, PyExc_ValueError, "NX element %lld (record %zd): bytes [%llu, %llu + %llu) run past "
                     "nx_data (%llu bytes)", (long long)j, i, (unsigned long long)start,
                     (unsigned long long)start, (unsigned long long)len, (unsigned long long)c->nx_size);
            if (len > limit - pos) FAIL(e, PyExc_OverflowError, "record contents exceed the largest bytes object");
            if (out) {
                if (len > cap - pos) FAIL(e, PyExc_RuntimeError, "columns changed while record contents were built");
                memcpy(out + pos, c->nx + start, (size_t)len);
            }
            pos += len;
        }
    }
    if (out) {
        if (pos != cap) FAIL(e, PyExc_RuntimeError, "columns changed while record contents were built");
        off[c->n] = (int64_t)pos;
    }
    *total = pos;
    return 0;
}

enum { NCOLS = 15 };

static PyObject *contents(PyObject *self, PyObject *args) {
    (void)self;
    static const struct { const char *name; char kind; Py_ssize_t size; } spec[NCOLS] = {
        {"timestamp_ms", 'u', 8}, {"priority", 'u', 1}, {"lon_raw", 'i', 4}, {"lat_raw", 'i', 4},
        {"altitude", 'i', 2}, {"angle", 'u', 2}, {"satellites", 'u', 1}, {"speed", 'u', 2},
        {"event_io_id", 'u', 2}, {"io_offsets", 'i', 8},
        {"io_id", 'u', 2}, {"io_width", 'u', 1}, {"io_value", 'u', 8}, {"io_nx_len", 'u', 2},
        {"nx_data", 'u', 1},
    };
    PyObject *o[NCOLS];
    if (!PyArg_UnpackTuple(args, "contents", NCOLS, NCOLS, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                           &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14]))
        return NULL;
    Buf bufs[NCOLS];
    memset(bufs, 0, sizeof bufs);
    Py_ssize_t len[NCOLS];
    PyObject *content = NULL, *offsets = NULL, *result = NULL;
    for (int i = 0; i < NCOLS - 1; i++)
        if (get_col(o[i], &bufs[i], spec[i].kind, spec[i].size, spec[i].name, &len[i]) < 0) goto done;
    if (get_bytes(o[NCOLS - 1], &bufs[NCOLS - 1], "nx_data") < 0) goto done;
    const Py_ssize_t n = len[0], m = len[10];
    for (int i = 1; i < 9; i++)
        if (len[i] != n) {
            PyErr_Format(PyExc_ValueError, "%s has %zd items, timestamp_ms %zd: one per record", spec[i].name, len[i], n);
            goto done;
        }
    if (len[9] != n + 1) {
        PyErr_Format(PyExc_ValueError, "io_offsets has %zd items, expected n + 1 = %zd", len[9], n + 1);
        goto done;
    }
    for (int i = 11; i < 14; i++)
        if (len[i] != m) {
            PyErr_Format(PyExc_ValueError, "%s has %zd items, io_id %zd: one per IO element", spec[i].name, len[i], m);
            goto done;
        }
    Cols c = {
        bufs[0].v.buf, bufs[1].v.buf, bufs[2].v.buf, bufs[3].v.buf, bufs[4].v.buf, bufs[5].v.buf,
        bufs[6].v.buf, bufs[7].v.buf, bufs[8].v.buf, bufs[9].v.buf,
        bufs[10].v.buf, bufs[11].v.buf, bufs[12].v.buf, bufs[13].v.buf,
        bufs[14].v.buf, (uint64_t)bufs[14].v.len, n, m,
    };
    Err e = {NULL, {0}};
    uint64_t total = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = build(&c, NULL, 0, NULL, &total, &e);
    Py_END_ALLOW_THREADS
    if (rc < 0) { PyErr_SetString(e.exc, e.detail); goto done; }
    content = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    if (!content || !offsets) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(content);
    int64_t *off = (int64_t *)PyBytes_AS_STRING(offsets);   /* bytes data is 8-aligned */
    Py_BEGIN_ALLOW_THREADS
    rc = build(&c, out, total, off, &total, &e);
    Py_END_ALLOW_THREADS
    if (rc < 0) { PyErr_SetString(e.exc, e.detail); goto done; }
    result = PyTuple_Pack(2, content, offsets);
done:
    Py_XDECREF(content);
    Py_XDECREF(offsets);
    release_all(bufs, NCOLS);
    return result;
}

/* ------------------------------------------------------------------ ids --------- */

/* One prepared state per (key, prefix) pair met, found through an open-addressing
 * table keyed by the pair. */
typedef struct {
    B2 *states;                     /* per pair: key block and prefix absorbed */
    Py_ssize_t *pair_key, *pair_prefix;
    Py_ssize_t n_pairs, max_pairs;
    Py_ssize_t *slots;              /* pair index or -1; size mask + 1 (a power of two) */
    size_t mask;
} Pairs;

static inline size_t pair_hash(Py_ssize_t k, Py_ssize_t p) {
    uint64_t x = (uint64_t)k * 0x9E3779B97F4A7C15ULL ^ (uint64_t)p;
    x ^= x >> 29; x *= 0xBF58476D1CE4E5B9ULL; x ^= x >> 32;
    return (size_t)x;
}

typedef struct {
    const B2 *key_states;           /* per key: b2_init done, key block buffered */
    const uint8_t *prefix_data; const Py_ssize_t *prefix_off;   /* prefixes back to back */
} Inputs;

static const B2 *pair_state(Pairs *P, const Inputs *in, Py_ssize_t k, Py_ssize_t p) {
    size_t s = pair_hash(k, p) & P->mask;
    for (;;) {
        Py_ssize_t q = P->slots[s];
        if (q < 0) break;
        if (P->pair_key[q] == k && P->pair_prefix[q] == p) return &P->states[q];
        s = (s + 1) & P->mask;
    }
    /* new pair: max_pairs >= the number of distinct pairs, and the table is at least
     * twice that, so there is room and a free slot */
    Py_ssize_t q = P->n_pairs++;
    B2 *st = &P->states[q];
    *st = in->key_states[k];
    b2_update(st, in->prefix_data + in->prefix_off[p], (size_t)(in->prefix_off[p + 1] - in->prefix_off[p]));
    P->pair_key[q] = k; P->pair_prefix[q] = p;
    P->slots[s] = q;
    return st;
}

/* What the hashing loops read (buffers held, keys and prefixes copied), and where the
 * first bad row is described. */
typedef struct {
    const int64_t *kidx, *pidx, *offs, *rows;    /* rows NULL: row i is record i */
    const uint8_t *content; int64_t clen;
    Py_ssize_t n, m, nk, np_;
    Pairs *P; const Inputs *in;
    char *chars;                                 /* out: 26 per row */
    const B2 *last; int64_t last_k, last_p;     /* rows of one device and epoch often come together */
    Err e;
} Job;

/* Row i's prepared state and content, after checking every index (-1: J->e says why). */
static int row_input(Job *J, Py_ssize_t i, const B2 **st, const uint8_t **data, size_t *len) {
    const int64_t r = J->rows ? J->rows[i] : i, k = J->kidx[i], p = J->pidx[i];
    if (r < 0 || r >= J->m)
        FAIL(&J->e, PyExc_IndexError, "rows[%zd] = %lld: content holds %zd records", i, (long long)r, J->m);
    if (k < 0 || k >= J->nk || p < 0 || p >= J->np_)
        FAIL(&J->e, PyExc_IndexError, "row %zd: key_index %lld / prefix_index %lld outside the %zd keys / %zd prefixes",
             i, (long long)k, (long long)p, J->nk, J->np_);
    const int64_t o0 = J->offs[r], o1 = J->offs[r + 1];
    if (o0 < 0 || o1 < o0 || o1 > J->clen)
        FAIL(&J->e, PyExc_ValueError, "offsets[%lld:%lld] = [%lld, %lld] is not a range of the %lld content bytes",
             (long long)r, (long long)r + 2, (long long)o0, (long long)o1, (long long)J->clen);
    if (k != J->last_k || p != J->last_p) {
        J->last = pair_state(J->P, J->in, (Py_ssize_t)k, (Py_ssize_t)p);
        J->last_k = k; J->last_p = p;
    }
    *st = J->last;
    *data = J->content + o0;
    *len = (size_t)(o1 - o0);
    return 0;
}

/* One row after the other. */
static int hash_rows(Job *J) {
    B2 st;
    const B2 *ps; const uint8_t *data; size_t len;
    uint8_t digest[16];
    int rc = 0;
    for (Py_ssize_t i = 0; i < J->n; i++) {
        if ((rc = row_input(J, i, &ps, &data, &len)) < 0) break;
        st = *ps;
        b2_update(&st, data, len);
        b2_final(&st, digest, 16);
        b32_16(digest, J->chars + 26 * (size_t)i);
    }
    wipe(&st, sizeof st);
    return rc;
}

#if HAVE_LANES
/* A row in a lane: the stream still to hash is buf[0:buflen] (the prepared state's
 * buffered bytes, 1..128 of them) then data[0:dlen]; pos is how much of it is done. */
typedef struct {
    Py_ssize_t row;                /* -1: idle */
    const uint8_t *buf, *data;
    size_t buflen, dlen, pos, total;
    int final;
} Lane;

static int lane_load(Job *J, Py_ssize_t *next, Lane *L, int l, uint64_t h[8][4], uint64_t t0[4], uint64_t t1[4]) {
    L->row = -1;
    if (*next >= J->n) return 0;
    const B2 *ps;
    if (row_input(J, *next, &ps, &L->data, &L->dlen) < 0) return -1;
    for (int w = 0; w < 8; w++) h[w][l] = ps->h[w];
    t0[l] = ps->t0; t1[l] = ps->t1;
    L->buf = ps->buf; L->buflen = ps->buflen;
    L->pos = 0; L->total = L->buflen + L->dlen;
    L->row = (*next)++;
    return 0;
}

/* Four rows at a time (b2_compress4); the same blocks, counters and final flags as
 * b2_update + b2_final give each row on its own. */
static int hash_rows_lanes(Job *J) {
    uint64_t h[8][4], t0[4], t1[4], f[4];
    uint8_t scratch[4][128];
    const uint8_t *blocks[4];
    Lane L[4];
    Py_ssize_t next = 0;
    int rc = 0, active = 0;
    for (int l = 0; l < 4; l++) {
        if ((rc = lane_load(J, &next, &L[l], l, h, t0, t1)) < 0) goto out;
        active += L[l].row >= 0;
    }
    while (active) {
        for (int l = 0; l < 4; l++) {
            Lane *x = &L[l];
            if (x->row < 0) { blocks[l] = ZERO128; f[l] = 0; continue; }
            const size_t rem = x->total - x->pos;
            const int fin = rem <= 128;            /* the last block is held back, as in b2_update */
            const size_t bl = fin ? rem : 128;
            if (x->pos == 0) {                     /* first block: the buffered bytes, then data */
                if (fin) memcpy(scratch[l], ZERO128, 128);   /* (else all 128 bytes are written) */
                memcpy(scratch[l], x->buf, x->buflen);
                memcpy(scratch[l] + x->buflen, x->data, bl - x->buflen);
                blocks[l] = scratch[l];
            } else {                               /* pos >= 128 >= buflen: inside data */
                const uint8_t *src = x->data + (x->pos - x->buflen);
                if (fin) {
                    memcpy(scratch[l], ZERO128, 128);
                    memcpy(scratch[l], src, bl);
                    blocks[l] = scratch[l];
                } else {
                    blocks[l] = src;               /* rem > 128: a whole block of data */
                }
            }
            t0[l] += bl;
            if (t0[l] < bl) t1[l]++;
            f[l] = fin ? ~0ULL : 0;
            x->pos += bl;
            x->final = fin;
        }
        b2_compress4(h, blocks, t0, t1, f);
        for (int l = 0; l < 4; l++) {
            if (L[l].row < 0 || !L[l].final) continue;
            b32_digest(h[0][l], h[1][l], J->chars + 26 * (size_t)L[l].row);
            if ((rc = lane_load(J, &next, &L[l], l, h, t0, t1)) < 0) goto out;
            active -= L[l].row < 0;
        }
    }
out:
    wipe(h, sizeof h);
    wipe(scratch, sizeof scratch);
    return rc;
}
#else
static int hash_rows_lanes(Job *J) { return hash_rows(J); }
#endif

static PyObject *ids(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"keys", "key_index", "prefixes", "prefix_index", "content", "offsets", "rows",
                             "simd", NULL};
    PyObject *keys_o, *kidx_o, *prefixes_o, *pidx_o, *content_o, *off_o, *rows_o = Py_None;
    int simd = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|O$p:ids", kwlist, &keys_o, &kidx_o, &prefixes_o, &pidx_o,
                                     &content_o, &off_o, &rows_o, &simd))
        return NULL;
    enum { KIDX, PIDX, CONTENT, OFFS, ROWS, NB };
    Buf bufs[NB];
    memset(bufs, 0, sizeof bufs);
    PyObject *keys = NULL, *prefixes = NULL, *result = NULL;
    B2 *key_states = NULL;
    uint8_t *prefix_data = NULL;
    Py_ssize_t *prefix_off = NULL;
    char *chars = NULL;
    Pairs P;
    memset(&P, 0, sizeof P);
    Py_ssize_t n, n2, n_off, n_rows = 0, nk, np_;

    keys = PySequence_Fast(keys_o, "keys must be a sequence of bytes");
    prefixes = keys ? PySequence_Fast(prefixes_o, "prefixes must be a sequence of bytes") : NULL;
    if (!keys || !prefixes) goto done;
    if (get_col(kidx_o, &bufs[KIDX], 'i', 8, "key_index", &n) < 0 ||
        get_col(pidx_o, &bufs[PIDX], 'i', 8, "prefix_index", &n2) < 0 ||
        get_bytes(content_o, &bufs[CONTENT], "content") < 0 ||
        get_col(off_o, &bufs[OFFS], 'i', 8, "offsets", &n_off) < 0)
        goto done;
    if (rows_o != Py_None && get_col(rows_o, &bufs[ROWS], 'i', 8, "rows", &n_rows) < 0) goto done;
    if (n2 != n) {
        PyErr_Format(PyExc_ValueError, "prefix_index has %zd items, key_index %zd: one per row", n2, n);
        goto done;
    }
    if (n_off < 1) { PyErr_SetString(PyExc_ValueError, "offsets must have n + 1 >= 1 items"); goto done; }
    const Py_ssize_t m = n_off - 1;             /* records in content */
    if (rows_o == Py_None ? m != n : n_rows != n) {
        PyErr_Format(PyExc_ValueError, rows_o == Py_None
                     ? "content holds %zd records (offsets), key_index has %zd rows: pass rows to hash a subset"
                     : "rows has %zd items, key_index %zd: one per row", rows_o == Py_None ? m : n_rows, n);
        goto done;
    }

    /* keys -> prepared states; prefixes -> one C block */
    nk = PySequence_Fast_GET_SIZE(keys);
    np_ = PySequence_Fast_GET_SIZE(prefixes);
    key_states = PyMem_Calloc(nk ? (size_t)nk : 1, sizeof(B2));
    prefix_off = PyMem_Calloc((size_t)np_ + 1, sizeof(Py_ssize_t));
    if (!key_states || !prefix_off) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < nk; k++) {
        Py_buffer kb;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(keys, k), &kb, PyBUF_SIMPLE) < 0) goto done;
        if (kb.len < 1 || kb.len > 64) {
            PyErr_Format(PyExc_ValueError, "keys[%zd] has %zd bytes: a BLAKE2b key has 1 to 64", k, kb.len);
            PyBuffer_Release(&kb);
            goto done;
        }
        b2_init(&key_states[k], kb.buf, (size_t)kb.len, 16);
        PyBuffer_Release(&kb);
    }
    size_t ptotal = 0;
    for (Py_ssize_t p = 0; p < np_; p++) {   /* sizes first, then one copy */
        PyObject *it = PySequence_Fast_GET_ITEM(prefixes, p);
        if (!PyBytes_Check(it)) {
            PyErr_Format(PyExc_TypeError, "prefixes[%zd] is %.80s, not bytes", p, Py_TYPE(it)->tp_name);
            goto done;
        }
        ptotal += (size_t)PyBytes_GET_SIZE(it);
        prefix_off[p + 1] = (Py_ssize_t)ptotal;
    }
    prefix_data = PyMem_Malloc(ptotal ? ptotal : 1);
    if (!prefix_data) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t p = 0; p < np_; p++)
        memcpy(prefix_data + prefix_off[p], PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(prefixes, p)),
               (size_t)(prefix_off[p + 1] - prefix_off[p]));

    /* at most min(n, nk x np) distinct pairs; a table of >= twice that many slots */
    P.max_pairs = n;
    if (nk && np_ && nk <= n / np_ && nk * np_ < n) P.max_pairs = nk * np_;
    size_t nslots = 16;
    while (nslots < 2 * (size_t)P.max_pairs) nslots <<= 1;
    P.mask = nslots - 1;
    P.slots = PyMem_Malloc(nslots * sizeof(Py_ssize_t));
    P.states = PyMem_Malloc((P.max_pairs ? (size_t)P.max_pairs : 1) * sizeof(B2));
    P.pair_key = PyMem_Malloc((P.max_pairs ? (size_t)P.max_pairs : 1) * sizeof(Py_ssize_t));
    P.pair_prefix = PyMem_Malloc((P.max_pairs ? (size_t)P.max_pairs : 1) * sizeof(Py_ssize_t));
    chars = PyMem_Malloc(n ? (size_t)n * 26 : 1);
    if (!P.slots || !P.states || !P.pair_key || !P.pair_prefix || !chars) { PyErr_NoMemory(); goto done; }
    memset(P.slots, 0xFF, nslots * sizeof(Py_ssize_t));    /* all -1 */

    Inputs in = {key_states, prefix_data, prefix_off};
    Job J = {
        bufs[KIDX].v.buf, bufs[PIDX].v.buf, bufs[OFFS].v.buf, rows_o == Py_None ? NULL : bufs[ROWS].v.buf,
        bufs[CONTENT].v.buf, (int64_t)bufs[CONTENT].v.len, n, m, nk, np_, &P, &in, chars,
        NULL, -1, -1, {NULL, {0}},
    };
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = (use_lanes && simd && n >= 8) ? hash_rows_lanes(&J) : hash_rows(&J);
    Py_END_ALLOW_THREADS
    if (bad) { PyErr_SetString(J.e.exc, J.e.detail); goto done; }

    PyObject *list = PyList_New(n);
    if (!list) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = ascii26(chars + 26 * (size_t)i);
        if (!s) { Py_DECREF(list); goto done; }
        PyList_SET_ITEM(list, i, s);
    }
    result = list;
done:
    if (key_states) wipe(key_states, (nk ? (size_t)nk : 1) * sizeof(B2));
    if (P.states) wipe(P.states, (size_t)P.n_pairs * sizeof(B2));
    PyMem_Free(key_states);
    PyMem_Free(P.states);
    PyMem_Free(P.slots);
    PyMem_Free(P.pair_key);
    PyMem_Free(P.pair_prefix);
    PyMem_Free(prefix_data);
    PyMem_Free(prefix_off);
    PyMem_Free(chars);
    release_all(bufs, NB);
    Py_XDECREF(keys);
    Py_XDECREF(prefixes);
    return result;
}

/* ------------------------------------------------------------- b32_many --------- */

static PyObject *b32_many(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "digests must be a sequence of bytes");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *list = PyList_New(n);
    if (!list) { Py_DECREF(seq); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer b;
        char c[26];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &b, PyBUF_SIMPLE) < 0) goto fail;
        if (b.len < 16) {
            PyErr_Format(PyExc_ValueError, "digests[%zd] has %zd bytes, fewer than 16", i, b.len);
            PyBuffer_Release(&b);
            goto fail;
        }
        b32_16(b.buf, c);
        PyBuffer_Release(&b);
        PyObject *s = ascii26(c);
        if (!s) goto fail;
        PyList_SET_ITEM(list, i, s);
    }
    Py_DECREF(seq);
    return list;
fail:
    Py_DECREF(list);
    Py_DECREF(seq);
    return NULL;
}

/* -------------------------------------------------------------- blake2b --------- */

static PyObject *blake2b(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"data", "key", "digest_size", NULL};
    Py_buffer data, key = {0};
    Py_ssize_t outlen = 16;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|y*n:blake2b", kwlist, &data, &key, &outlen)) return NULL;
    PyObject *result = NULL;
    if (key.len > 64) PyErr_SetString(PyExc_ValueError, "a BLAKE2b key has at most 64 bytes");
    else if (outlen < 1 || outlen > 64) PyErr_SetString(PyExc_ValueError, "digest_size must be 1..64");
    else {
        B2 s;
        uint8_t out[64];
        b2_init(&s, key.buf, (size_t)key.len, (size_t)outlen);
        Py_BEGIN_ALLOW_THREADS
        b2_update(&s, data.buf, (size_t)data.len);
        b2_final(&s, out, (size_t)outlen);
        Py_END_ALLOW_THREADS
        wipe(&s, sizeof s);
        result = PyBytes_FromStringAndSize((const char *)out, outlen);
    }
    PyBuffer_Release(&data);
    if (key.obj) PyBuffer_Release(&key);
    return result;
}

static PyMethodDef methods[] = {
    {"contents", contents, METH_VARARGS,
     "contents(timestamp_ms, priority, lon_raw, lat_raw, altitude, angle, satellites, speed, event_io_id,\n"
     "         io_offsets, io_id, io_width, io_value, io_nx_len, nx_data) -> (content, offsets)\n"
     "Every record's content back to back, and n+1 native int64 offsets (as bytes)."},
    {"ids", (PyCFunction)(void (*)(void))ids, METH_VARARGS | METH_KEYWORDS,
     "ids(keys, key_index, prefixes, prefix_index, content, offsets, rows=None, *, simd=True) -> list[str]\n"
     "Per row base32(BLAKE2b-128(key=keys[key_index[i]], prefixes[prefix_index[i]] + content of record rows[i]))."},
    {"b32_many", b32_many, METH_O, "b32_many(digests) -> list[str]: lowercase unpadded base32 of each first 16 bytes."},
    {"blake2b", (PyCFunction)(void (*)(void))blake2b, METH_VARARGS | METH_KEYWORDS,
     "blake2b(data, key=b'', digest_size=16) -> bytes (RFC 7693; equal to hashlib.blake2b)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_recordid",
    "Keyed BLAKE2b record ids and record contents (see fleetcloak.anonymize.record_id).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recordid(void) {
    use_lanes = have_avx2();
    PyObject *m = PyModule_Create(&mod);
    /* LANES: ids() hashes 4 rows at a time (AVX2) unless called with simd=False */
    if (m && PyModule_AddIntConstant(m, "LANES", use_lanes ? 4 : 1) < 0) Py_CLEAR(m);
    return m;
}
