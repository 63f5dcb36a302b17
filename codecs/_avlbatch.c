/*
 * _avlbatch: strict Teltonika TCP AVL frame parser in C, for fleetcloak.codecs.batch.
 *
 * Two entry points share one parser core (parse_frame_core):
 *   decode_into(frames, cap, check_crc, rec_bufs, io_bufs, nx_buf, frame_bufs[, kinds])
 *       fills caller-allocated numpy columns (passed as writable buffers; no numpy
 *       headers needed) and returns (n_records, n_io, n_nx, errors). The heavy loop runs
 *       without the GIL. kinds: a u8 per frame, 1 for a UDP AVL datagram whose header
 *       the caller has checked: its AVL part (from byte 23, no CRC) is parsed, offsets
 *       the datagram's.
 *   bytes_column(n, record, width, value, nx_len, nx_data)
 *       one IO id's elements as bytes per record (None where absent; see below).
 *   parse_frame(frame, record_cls, cap, check_crc)
 *       one frame -> (codec, tuple of record_cls(...)); raises the class registered with
 *       set_decode_error(cls) (default fleetcloak.codecs.errors.DecodeError) as
 *       cls(reason, offset, detail).
 *
 * Wire layout (shared/teltonika-protocol.md 2.2, 4, 5), all big-endian:
 *   0  preamble u32 == 0 | 4 data length L u32 | 8 codec u8 | 9 N1 u8 | 10 records
 *   8+L-1 N2 u8 | 8+L CRC u32 (upper 16 bits 0) = CRC-16/ARC over [8, 8+L)
 *   record: ts u64 | prio u8 | lon i32 | lat i32 | alt i16 | angle u16 | sats u8 |
 *           speed u16 | IO element (codec-specific widths, 5.1)
 *
 * SAFETY (the argument in full: docs/decode_batch.md):
 *  - Frame level: nothing past byte 8 is read before n == L + 12 is established, so
 *    f[8 .. 8+L+3] (codec .. CRC) are all inside the frame; L >= 3 so Number of Data 2
 *    at 8+L-1 >= 10 exists and `end` (= 8+L-1) >= 10. A UDP datagram (kinds): n >= 26
 *    is checked first, its data field is [23, n), L = n - 23 >= 3, end = n - 1 >= 25;
 *    the record level below reads from d + 2 with the same bounds.
 *  - Record level: a group count is read only at q with q + count_size <= end, and q
 *    moves past the group's pairs only after q + count * pair_size <= end (8E: then the
 *    NX count after q + 2 <= end), so after this shape scan the whole fixed part of the
 *    record [p, q) lies inside [10, end). Each NX element checks q + 4 <= end and then
 *    q + 4 + len <= end before it reads its id/length resp. copies its value. q is a
 *    size_t that grows by at most 2 + 65535 * 10 per group from p < end: no overflow.
 *    Every length or count is read once into a local, so a bytearray mutated by another
 *    thread meanwhile can give garbage values, never an out-of-bounds read.
 *  - Counts from the wire only bound loops whose elements were already proven to be
 *    inside the frame (fixed groups) or that re-check per element (NX, records), so a
 *    hostile count fails fast with "truncated" and never reads out of bounds.
 *  - Writes: every record, IO element and NX byte is checked against the capacity of
 *    the buffers the caller passed in (P_NOROOM -> RuntimeError; batch.py sizes them so
 *    that this cannot happen). Output buffers are held (PyObject_GetBuffer) for the
 *    whole call; so are the input frames, which keeps them alive and unresizable while
 *    the loop runs without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>

/* ------------------------------------------------------------------ helpers ---- */

/* Byte-order-independent loads; GCC and Clang compile these shift patterns to a single
 * load (+ bswap), so they cost nothing over builtins and work on any host and compiler. */
static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }
static inline uint64_t le64(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) | ((uint64_t)p[3] << 24) |
           ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) | ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

/* CRC-16/ARC (a.k.a. CRC-16/IBM): reflected poly 0xA001, init 0, xorout 0.
 * Slicing-by-8: T[0] is the classic byte table, T[k][i] = (T[k-1][i] >> 8) ^ T[0][T[k-1][i] & 0xFF]. */
static uint16_t crc_tab[8][256];

static void crc_init(void) {
    for (int i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)i;
        for (int b = 0; b < 8; b++) c = (c & 1) ? (uint16_t)((c >> 1) ^ 0xA001) : (uint16_t)(c >> 1);
        crc_tab[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            crc_tab[k][i] = (uint16_t)((crc_tab[k - 1][i] >> 8) ^ crc_tab[0][crc_tab[k - 1][i] & 0xFF]);
}

static uint16_t crc16_arc(const uint8_t *p, size_t n) {
    uint32_t crc = 0;
    while (n >= 8) {
        uint64_t w = le64(p) ^ crc;       /* first byte in the low bits (reflected CRC) */
        crc = crc_tab[7][w & 0xFF] ^ crc_tab[6][(w >> 8) & 0xFF] ^
              crc_tab[5][(w >> 16) & 0xFF] ^ crc_tab[4][(w >> 24) & 0xFF] ^
              crc_tab[3][(w >> 32) & 0xFF] ^ crc_tab[2][(w >> 40) & 0xFF] ^
              crc_tab[1][(w >> 48) & 0xFF] ^ crc_tab[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_tab[0][(crc ^ *p++) & 0xFF];
    return (uint16_t)crc;
}

/* ------------------------------------------------------------------ outputs ---- */

typedef struct {
    /* per record */
    int32_t *frame_index; uint64_t *timestamp_ms; uint8_t *priority;
    int32_t *lon_raw; int32_t *lat_raw; double *lon; double *lat;
    int16_t *altitude; uint16_t *angle; uint8_t *satellites; uint16_t *speed;
    uint16_t *event_io_id; int16_t *generation_type; uint8_t *codec;
    int64_t *io_offsets;          /* rec_cap + 1 entries */
    Py_ssize_t rec_cap;
    /* per IO element */
    uint16_t *io_id; uint8_t *io_width; uint64_t *io_value; uint16_t *io_nx_len;
    Py_ssize_t io_cap;
    /* NX value bytes */
    uint8_t *nx; Py_ssize_t nx_cap;
    /* fill levels */
    Py_ssize_t n_rec, n_io, n_nx;
} Cols;

#define DETAIL_LEN 120
typedef struct {
    Py_ssize_t frame;         /* index of the frame in the batch */
    const char *reason;       /* static string, one of errors.REASONS */
    Py_ssize_t offset;        /* from the start of the frame */
    char detail[DETAIL_LEN];
} Err;

enum { P_OK = 0, P_ERR = -1, P_NOROOM = -2 };

/* 65536-bit set of the IO ids seen in the current record (duplicate_io). */
typedef struct { uint64_t w[1024]; } IdSet;

static inline int idset_test_set(IdSet *s, uint16_t id) {
    uint64_t m = (uint64_t)1 << (id & 63);
    uint64_t *w = &s->w[id >> 6];
    if (*w & m) return 1;
    *w |= m; return 0;
}
static inline void idset_clear(IdSet *s, const uint16_t *ids, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) s->w[ids[i] >> 6] = 0;
}

#define FAIL(r, off, ...) do { e->reason = (r); e->offset = (Py_ssize_t)(off); \
        snprintf(e->detail, DETAIL_LEN, __VA_ARGS__); rc = P_ERR; goto out; } while (0)
/*
 * Parse one whole TCP AVL frame f[0:n] into c (records appended at c->n_rec ...).
 * On P_ERR, e describes the failure and the caller rolls the fill levels back.
 * Offsets are size_t positions within f.
 */
static int parse_frame_core(const uint8_t *f, size_t n, size_t cap, int check_crc, int udp,
                            int32_t findex, Cols *c, IdSet *seen, Err *e, int *codec_out)
{
    int rc = P_OK;
    size_t pos;
    size_t d = 8;      /* where the data field (codec .. Number of Data 2) starts */
    uint32_t L;        /* its length */

    if (udp) {
        /* A UDP AVL datagram whose header the caller checked (codecs/udp.py header(),
         * or the pipeline's exact match of it): its AVL part [23, n) is a data field
         * without a CRC; offsets stay the datagram's. */
        if (n < 26) FAIL("truncated", n, "a UDP AVL datagram has at least 26 bytes, got %zu", n);
        if (n > cap) FAIL("too_large", 0, "datagram of %zu bytes, above the cap of %zu", n, cap);
        d = 23;
        L = (uint32_t)(n - 23);
        goto data_field;
    }
    /* Frame checks in the order of the per-frame decoder (codecs/tcp.py), so both blame
     * the same reason at the same offset. The cap (which only batch decoding has) is
     * checked as soon as the declared length is known. */
    if (n == 0) FAIL("empty", 0, "no bytes");
    if (f[0] != 0 || (n >= 2 && f[1] != 0)) {
        if (n == 1) FAIL("bad_preamble", 0, "the byte %02X: a keep-alive, not an AVL data frame", f[0]);
        FAIL("bad_preamble", 0, "starts %02X%02X: an IMEI login or keep-alive, not an AVL data frame",
             f[0], f[1]);
    }
    if (n < 8) FAIL("truncated", n, "need the 8-byte frame header, got %zu", n);
    if (be32(f) != 0) FAIL("bad_preamble", 0, "preamble 0x%08X, not 0", be32(f));
    L = be32(f + 4);
    if ((uint64_t)L + 12 > (uint64_t)cap)
        FAIL("too_large", 4, "frame declares %llu bytes, above the cap of %zu",
             (unsigned long long)L + 12, cap);
    if (n != (size_t)L + 12) {
        if (n < (size_t)L + 12)
            FAIL("truncated", n, "frame declares %llu bytes, got %zu", (unsigned long long)L + 12, n);
        FAIL("trailing_bytes", (size_t)L + 12, "frame declares %llu bytes, got %zu",
             (unsigned long long)L + 12, n);
    }
    if (L < 3) FAIL("bad_length", 4, "data field length %u < 3", L);
    /* from here on n == L + 12 exactly, L >= 3 */
    if (check_crc) {
        uint32_t field = be32(f + 8 + L);
        uint16_t crc = crc16_arc(f + 8, L);
        if (field != crc)
            FAIL("crc_mismatch", 8 + (size_t)L, "CRC field 0x%08X, computed 0x%04X", field, crc);
    }
data_field:;
    /* from here on the data field f[d, d + L) lies inside f, L >= 3 */
    uint8_t codec = f[d];
    const int is_avl = codec == 0x08 || codec == 0x8E || codec == 0x10;
    if (!is_avl && (udp || !(codec >= 0x0C && codec <= 0x0F)))  /* UDP: AVL only, checked first (udp.decode) */
        FAIL("unknown_codec", d, "codec id 0x%02X", codec);
    if (f[d + 1] != f[d + L - 1])
        FAIL("count_mismatch", d + (size_t)L - 1, "Number of Data 1 is %u, Number of Data 2 is %u",
             f[d + 1], f[d + L - 1]);
    if (!is_avl)   /* a GPRS message (Codec 12-15): decode() takes it, a batch of AVL does not */
        FAIL("unknown_codec", d, "codec id 0x%02X is a GPRS codec, not AVL (8, 8E, 16)", codec);
    *codec_out = codec;
    unsigned n1 = f[d + 1];
    /* Records live in [d + 2, end): end is the position of Number of Data 2. */
    const size_t end = d + (size_t)L - 1;
    pos = d + 2;

    const int ext = (codec == 0x8E), c16 = (codec == 0x10);
    const size_t cs = ext ? 2 : 1;                       /* N total and group counts */
    const size_t isz = (codec == 0x08) ? 1 : 2;          /* IO id (and event id) */
    const size_t n1pos = (codec == 0x08) ? 26 : 28;      /* N1 count, from the record start */
    const size_t ntot_at = (codec == 0x08) ? 25 : ext ? 26 : 27;
    const size_t minrec = (codec == 0x08) ? 30 : ext ? 38 : 32;
    static const size_t widths[4] = {1, 2, 4, 8};

    if ((size_t)n1 * minrec > end - pos)
        FAIL("truncated", end, "%u records need at least %zu bytes, the data field holds %zu",
             n1, (size_t)n1 * minrec, end - pos);

    for (unsigned r = 0; r < n1; r++) {
        const size_t p = pos;
        const Py_ssize_t rec_io_start = c->n_io;
        /* (A "truncated" offset is clamped to `end`, as decode() does: a count can point
         *  far past the data; blame where the data runs out.)
         * 1. Shape scan: read each group count after checking it fits before `end`, then
         *    check that group's pairs fit (q + count x pair size <= end; the product is
         *    at most 65535 x 10, so the size_t sum cannot wrap). After this the whole
         *    fixed part of the record [p, q) is inside [10, end) and needs no further
         *    checks; NX elements are checked one by one below. */
        unsigned cnt[4];
        size_t q = p + n1pos;
        for (int g = 0; g < 4; g++) {
            if (q + cs > end)
                FAIL("truncated", q < end ? q : end, "IO group count needs %zu bytes at offset %zu, have %zu",
                     cs, q, end > q ? end - q : 0);
            cnt[g] = cs == 1 ? f[q] : be16(f + q);
            q += cs;
            const size_t need = (isz + widths[g]) * cnt[g];
            if (q + need > end)
                FAIL("truncated", q < end ? q : end, "%u IO pairs need %zu bytes at offset %zu, have %zu",
                     cnt[g], need, q, end > q ? end - q : 0);
            q += need;
        }
        size_t nx_at = 0;
        if (ext) {
            if (q + 2 > end)
                FAIL("truncated", q < end ? q : end, "NX count needs 2 bytes at offset %zu, have %zu", q,
                     end > q ? end - q : 0);
            nx_at = q;
            q += 2;
        }
        /* 2. Fixed fields: everything in [p, q) is readable. */
        if (c->n_rec >= c->rec_cap) { rc = P_NOROOM; goto out; }
        const unsigned nfixed = cnt[0] + cnt[1] + cnt[2] + cnt[3];
        if (c->io_cap - c->n_io < (Py_ssize_t)nfixed) { rc = P_NOROOM; goto out; }
        const Py_ssize_t ri = c->n_rec;
        const uint8_t *h = f + p;
        int32_t lon = (int32_t)be32(h + 9), lat = (int32_t)be32(h + 13);
        c->frame_index[ri] = findex;
        c->timestamp_ms[ri] = be64(h);
        c->priority[ri] = h[8];
        c->lon_raw[ri] = lon; c->lat_raw[ri] = lat;
        c->lon[ri] = (double)lon / 1e7; c->lat[ri] = (double)lat / 1e7;
        c->altitude[ri] = (int16_t)be16(h + 17);
        c->angle[ri] = be16(h + 19);
        c->satellites[ri] = h[21];
        c->speed[ri] = be16(h + 22);
        c->codec[ri] = codec;
        c->event_io_id[ri] = isz == 1 ? h[24] : be16(h + 24);
        c->generation_type[ri] = c16 ? (int16_t)h[26] : -1;
        c->io_offsets[ri] = c->n_io;
        unsigned ntot = cs == 1 ? h[ntot_at] : be16(h + ntot_at);

        size_t e_at = p + n1pos + cs;        /* first pair of N1 */
        for (int g = 0; g < 4; g++) {
            const size_t w = widths[g];
            for (unsigned k = 0; k < cnt[g]; k++) {
                const uint8_t *x = f + e_at;
                uint16_t id = isz == 1 ? x[0] : be16(x);
                if (idset_test_set(seen, id))
                    FAIL("duplicate_io", e_at, "IO id %u appears twice in one record", id);
                const uint8_t *v = x + isz;
                uint64_t val = w == 1 ? v[0] : w == 2 ? be16(v) : w == 4 ? be32(v) : be64(v);
                Py_ssize_t j = c->n_io++;
                c->io_id[j] = id; c->io_width[j] = (uint8_t)w;
                c->io_value[j] = val; c->io_nx_len[j] = 0;
                e_at += isz + w;
            }
            e_at += cs;                      /* next group's count (or NX count / end) */
        }
        unsigned nx = 0;
        if (ext) {
            /* decode() checks 8E priority before the NX elements */
            if (h[8] > 3) FAIL("bad_priority", p + 8, "priority %u > 3", h[8]);
            nx = be16(f + nx_at);
            for (unsigned k = 0; k < nx; k++) {
                if (q + 4 > end)
                    FAIL("truncated", q < end ? q : end, "NX element needs 4 bytes at offset %zu, have %zu", q,
                         end > q ? end - q : 0);
                uint16_t id = be16(f + q), len = be16(f + q + 2);
                if (q + 4 + len > end)
                    FAIL("truncated", q + 4, "NX value needs %u bytes at offset %zu, have %zu",
                         len, q + 4, end - (q + 4));
                if (idset_test_set(seen, id))
                    FAIL("duplicate_io", q, "IO id %u appears twice in one record", id);
                if (c->n_io >= c->io_cap || c->nx_cap - c->n_nx < (Py_ssize_t)len) {
                    rc = P_NOROOM; goto out;
                }
                Py_ssize_t j = c->n_io++;
                c->io_id[j] = id; c->io_width[j] = 0;
                c->io_value[j] = (uint64_t)c->n_nx; c->io_nx_len[j] = len;
                memcpy(c->nx + c->n_nx, f + q + 4, len);
                c->n_nx += len;
                q += 4 + (size_t)len;
            }
        }
        /* 3. Value checks, in the per-frame decoder's order. */
        if (h[8] > 3) FAIL("bad_priority", p + 8, "priority %u > 3", h[8]);
        if (c16 && h[26] > 7) FAIL("bad_generation_type", p + 26, "generation type %u > 7", h[26]);
        if (ntot != nfixed + nx)
            FAIL("count_mismatch", p + ntot_at, "N total %u but the groups hold %u", ntot, nfixed + nx);
        idset_clear(seen, c->io_id + rec_io_start, c->n_io - rec_io_start);
        c->n_rec++;
        pos = q;
    }
    if (pos != end)
        FAIL("bad_length", pos, "%u records end at offset %zu, but the data field has %zu more "
             "bytes before Number of Data 2", n1, pos, end - pos);
    c->io_offsets[c->n_rec] = c->n_io;
out:
    /* forget the ids of a record abandoned half-way (failures are rare: wipe all 8 KiB,
     * which also covers an id marked just before its value turned out truncated) */
    if (rc != P_OK) memset(seen, 0, sizeof *seen);
    return rc;
}

/* ----------------------------------------------------------------- buffers ----- */

typedef struct { Py_buffer v; int held; } Buf;

static int get_wbuf(PyObject *o, Buf *b, Py_ssize_t itemsize, const char *name, Py_ssize_t *cap) {
    if (PyObject_GetBuffer(o, &b->v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    b->held = 1;
    if (b->v.itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: itemsize %zd, expected %zd", name, b->v.itemsize, itemsize);
        return -1;
    }
    Py_ssize_t c = b->v.len / itemsize;
    if (*cap < 0 || c < *cap) *cap = c;
    return 0;
}

static void release_all(Buf *bufs, int n) {
    for (int i = 0; i < n; i++) if (bufs[i].held) { PyBuffer_Release(&bufs[i].v); bufs[i].held = 0; }
}

static PyObject *reason_strings[16];
static const char *REASON_NAMES[] = {
    "empty", "truncated", "bad_preamble", "too_large", "bad_length", "trailing_bytes",
    "unknown_codec", "crc_mismatch", "bad_priority", "bad_generation_type", "duplicate_io",
    "count_mismatch", NULL
};

static PyObject *reason_obj(const char *r) {
    for (int i = 0; REASON_NAMES[i]; i++)
        if (REASON_NAMES[i] == r || strcmp(REASON_NAMES[i], r) == 0) {
            Py_INCREF(reason_strings[i]); return reason_strings[i];
        }
    return PyUnicode_FromString(r);
}

/* -------------------------------------------------------------- decode_into ---- */

enum { NREC_BUFS = 15, NIO_BUFS = 4, NFRAME_BUFS = 3 };

static PyObject *decode_into(PyObject *self, PyObject *args) {
    PyObject *frames, *rec_t, *io_t, *nx_o, *fr_t, *kinds_o = Py_None;
    Py_ssize_t cap; int check_crc;
    if (!PyArg_ParseTuple(args, "OnpO!O!OO!|O:decode_into", &frames, &cap, &check_crc,
                          &PyTuple_Type, &rec_t, &PyTuple_Type, &io_t, &nx_o, &PyTuple_Type, &fr_t, &kinds_o))
        return NULL;
    if (cap < 0) { PyErr_SetString(PyExc_ValueError, "cap must be >= 0"); return NULL; }
    if (PyTuple_GET_SIZE(rec_t) != NREC_BUFS || PyTuple_GET_SIZE(io_t) != NIO_BUFS ||
        PyTuple_GET_SIZE(fr_t) != NFRAME_BUFS) {
        PyErr_SetString(PyExc_TypeError, "decode_into: wrong number of output buffers");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(frames, "frames must be a sequence of bytes-like objects");
    if (!seq) return NULL;
    Py_ssize_t nf = PySequence_Fast_GET_SIZE(seq);
    if (nf > INT32_MAX) { Py_DECREF(seq); PyErr_SetString(PyExc_OverflowError, "too many frames"); return NULL; }

    Buf bufs[NREC_BUFS + NIO_BUFS + 1 + NFRAME_BUFS];
    memset(bufs, 0, sizeof bufs);
    const int nbufs = NREC_BUFS + NIO_BUFS + 1 + NFRAME_BUFS;
    Py_buffer *in = NULL;      /* one view per frame: keeps the bytes alive and unresized */
    Py_buffer kinds_v = {0};   /* per frame: 0 a TCP frame, 1 a UDP datagram (optional) */
    const uint8_t *kinds = NULL;
    int kinds_held = 0;
    Py_ssize_t n_in = 0;
    Err *errs = NULL; Py_ssize_t n_err = 0;
    IdSet *seen = NULL;
    PyObject *result = NULL;
    Cols c; memset(&c, 0, sizeof c);

    static const Py_ssize_t rec_isz[NREC_BUFS] = {4, 8, 1, 4, 4, 8, 8, 2, 2, 1, 2, 2, 2, 1, 8};
    static const char *rec_names[NREC_BUFS] = {
        "frame_index", "timestamp_ms", "priority", "lon_raw", "lat_raw", "lon", "lat",
        "altitude", "angle", "satellites", "speed", "event_io_id", "generation_type",
        "codec", "io_offsets"};
    Py_ssize_t rec_cap = -1, off_cap = -1, io_cap = -1, nx_cap = -1, fr_cap = -1;
    for (int i = 0; i < NREC_BUFS; i++)
        if (get_wbuf(PyTuple_GET_ITEM(rec_t, i), &bufs[i], rec_isz[i], rec_names[i],
                     i == NREC_BUFS - 1 ? &off_cap : &rec_cap) < 0) goto done;
    static const Py_ssize_t io_isz[NIO_BUFS] = {2, 1, 8, 2};
    static const char *io_names[NIO_BUFS] = {"io_id", "io_width", "io_value", "io_nx_len"};
    for (int i = 0; i < NIO_BUFS; i++)
        if (get_wbuf(PyTuple_GET_ITEM(io_t, i), &bufs[NREC_BUFS + i], io_isz[i], io_names[i], &io_cap) < 0)
            goto done;
    if (get_wbuf(nx_o, &bufs[NREC_BUFS + NIO_BUFS], 1, "nx_data", &nx_cap) < 0) goto done;
    static const Py_ssize_t fr_isz[NFRAME_BUFS] = {1, 1, 4};   /* ok, codec, n_records */
    for (int i = 0; i < NFRAME_BUFS; i++)
        if (get_wbuf(PyTuple_GET_ITEM(fr_t, i), &bufs[NREC_BUFS + NIO_BUFS + 1 + i], fr_isz[i],
                     "frame column", &fr_cap) < 0) goto done;
    if (fr_cap < nf) { PyErr_SetString(PyExc_ValueError, "frame columns shorter than frames"); goto done; }
    if (off_cap < 1) { PyErr_SetString(PyExc_ValueError, "io_offsets must have >= 1 entry"); goto done; }
    if (rec_cap > off_cap - 1) rec_cap = off_cap - 1;

    c.frame_index = bufs[0].v.buf; c.timestamp_ms = bufs[1].v.buf; c.priority = bufs[2].v.buf;
    c.lon_raw = bufs[3].v.buf; c.lat_raw = bufs[4].v.buf; c.lon = bufs[5].v.buf; c.lat = bufs[6].v.buf;
    c.altitude = bufs[7].v.buf; c.angle = bufs[8].v.buf; c.satellites = bufs[9].v.buf;
    c.speed = bufs[10].v.buf; c.event_io_id = bufs[11].v.buf; c.generation_type = bufs[12].v.buf;
    c.codec = bufs[13].v.buf; c.io_offsets = bufs[14].v.buf; c.rec_cap = rec_cap;
    c.io_id = bufs[15].v.buf; c.io_width = bufs[16].v.buf; c.io_value = bufs[17].v.buf;
    c.io_nx_len = bufs[18].v.buf; c.io_cap = io_cap;
    c.nx = bufs[19].v.buf; c.nx_cap = nx_cap;
    uint8_t *fr_ok = bufs[20].v.buf, *fr_codec = bufs[21].v.buf;
    int32_t *fr_nrec = bufs[22].v.buf;

    if (kinds_o != Py_None) {
        if (PyObject_GetBuffer(kinds_o, &kinds_v, PyBUF_SIMPLE) < 0) goto done;
        kinds_held = 1;
        kinds = kinds_v.buf;
        if (kinds_v.len < nf) { PyErr_SetString(PyExc_ValueError, "kinds shorter than frames"); goto done; }
    }
    in = PyMem_Calloc(nf ? nf : 1, sizeof(Py_buffer));
    seen = PyMem_Calloc(1, sizeof(IdSet));
    if (!in || !seen) { PyErr_NoMemory(); goto done; }
    for (; n_in < nf; n_in++) {
        /* a C-level buffer exporter could run code that shrinks the list: re-check */
        if (PySequence_Fast_GET_SIZE(seq) != nf) {
            PyErr_SetString(PyExc_RuntimeError, "frames changed size during decode_batch");
            goto done;
        }
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, n_in), &in[n_in], PyBUF_SIMPLE) < 0) goto done;
    }

    int noroom = 0;
    Py_ssize_t err_cap = 0;
    c.io_offsets[0] = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nf; i++) {
        Py_ssize_t r0 = c.n_rec, io0 = c.n_io, nx0 = c.n_nx;
        Err e; e.reason = NULL; e.detail[0] = 0;
        int codec = 0;
        int rc = parse_frame_core(in[i].buf, (size_t)in[i].len, (size_t)cap, check_crc, kinds && kinds[i],
                                  (int32_t)i, &c, seen, &e, &codec);
        if (rc == P_NOROOM) { noroom = 1; break; }
        fr_codec[i] = (uint8_t)codec;
        if (rc == P_OK) {
            fr_ok[i] = 1; fr_nrec[i] = (int32_t)(c.n_rec - r0);
        } else {
            c.n_rec = r0; c.n_io = io0; c.n_nx = nx0;
            c.io_offsets[r0] = io0;
            fr_ok[i] = 0; fr_nrec[i] = 0;
            if (n_err == err_cap) {
                Py_ssize_t nc = err_cap ? err_cap * 2 : 16;
                Err *ne = PyMem_RawRealloc(errs, (size_t)nc * sizeof(Err));
                if (!ne) { noroom = 2; break; }
                errs = ne; err_cap = nc;
            }
            e.frame = i;
            errs[n_err++] = e;
        }
    }
    Py_END_ALLOW_THREADS
    if (noroom == 1) {
        PyErr_SetString(PyExc_RuntimeError, "decode_into: output buffers too small (bound bug)");
        goto done;
    }
    if (noroom == 2) { PyErr_NoMemory(); goto done; }

    PyObject *elist = PyList_New(n_err);
    if (!elist) goto done;
    for (Py_ssize_t k = 0; k < n_err; k++) {
        Err *e = &errs[k];
        PyObject *t = Py_BuildValue("(nNns)", e->frame, reason_obj(e->reason), e->offset, e->detail);
        if (!t) { Py_DECREF(elist); goto done; }
        PyList_SET_ITEM(elist, k, t);
    }
    result = Py_BuildValue("(nnnN)", c.n_rec, c.n_io, c.n_nx, elist);

done:
    if (kinds_held) PyBuffer_Release(&kinds_v);
    for (Py_ssize_t i = 0; i < n_in; i++) PyBuffer_Release(&in[i]);
    PyMem_Free(in);
    PyMem_Free(seen);
    PyMem_RawFree(errs);
    release_all(bufs, nbufs);
    Py_DECREF(seq);
    return result;
}

/* -------------------------------------------------------------- parse_frame ---- */

static PyObject *DecodeErrorCls = NULL;

static PyObject *set_decode_error(PyObject *self, PyObject *cls) {
    Py_XSETREF(DecodeErrorCls, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyObject *raise_decode_error(const Err *e) {
    if (!DecodeErrorCls) {
        /* not registered yet (batch.py registers it; the per-frame decoder may call
         * parse_frame without importing batch.py and numpy): import it here */
        PyObject *m = PyImport_ImportModule("fleetcloak.codecs.errors");
        if (m) { DecodeErrorCls = PyObject_GetAttrString(m, "DecodeError"); Py_DECREF(m); }
        if (!DecodeErrorCls) return NULL;
    }
    PyObject *cls = DecodeErrorCls;
    PyObject *r = reason_obj(e->reason);
    if (!r) return NULL;
    PyObject *exc = PyObject_CallFunction(cls, "Nns", r, e->offset, e->detail);
    if (exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); Py_DECREF(exc); }
    return NULL;
}

/* parse_frame(frame, record_cls, cap=1280, check_crc=True) -> (codec, (record, ...)).
 * record_cls is called positionally as
 *   record_cls(timestamp_ms, priority, lon, lat, altitude, angle, satellites, speed,
 *              event_io_id, io, io_width, generation_type)
 * with io = {id: int | bytes} in wire order and io_width = {id: width} for fixed-size values.
 * With widths_cls (codecs.avl.IoWidths, read-only), io_width is widths_cls(dict) and one
 * object is shared by consecutive records of the same layout, as the Python decoder does. */
static int same_layout(const Cols *c, Py_ssize_t a, Py_ssize_t b) {
    int64_t na = c->io_offsets[a + 1] - c->io_offsets[a], nb = c->io_offsets[b + 1] - c->io_offsets[b];
    if (na != nb) return 0;
    int64_t oa = c->io_offsets[a], ob = c->io_offsets[b];
    return memcmp(c->io_id + oa, c->io_id + ob, (size_t)na * sizeof *c->io_id) == 0
        && memcmp(c->io_width + oa, c->io_width + ob, (size_t)na) == 0;
}

static PyObject *parse_frame(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"frame", "record_cls", "cap", "check_crc", "widths_cls", NULL};
    Py_buffer fb; PyObject *rcls; Py_ssize_t cap = 1280; int check_crc = 1; PyObject *wcls = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O|npO:parse_frame", kwlist, &fb, &rcls, &cap, &check_crc, &wcls))
        return NULL;
    if (wcls == Py_None) wcls = NULL;
    PyObject *prev_iow = NULL;  /* borrowed from the previous record (which the tuple owns) */
    PyObject *result = NULL, *recs = NULL;
    Cols c; memset(&c, 0, sizeof c);
    IdSet *seen = NULL; void *mem = NULL;
    /* Bounds as in batch.py: a record written spans >= 30 bytes, an IO element >= 2; a frame
     * longer than the cap fails before anything is written (so a huge input costs nothing). */
    Py_ssize_t n = fb.len;
    if (cap < 0) cap = 0;
    Py_ssize_t room = n <= cap ? n : 0;
    c.rec_cap = room / 30 + 1; c.io_cap = room / 2 + 1; c.nx_cap = room;
    size_t per_rec = 4 + 8 + 1 + 4 + 4 + 8 + 8 + 2 + 2 + 1 + 2 + 2 + 2 + 1 + 8;
    size_t per_io = 2 + 1 + 8 + 2;
    size_t total = per_rec * (size_t)(c.rec_cap + 1) + per_io * (size_t)c.io_cap + (size_t)c.nx_cap + 64;
    mem = PyMem_Malloc(total);
    seen = PyMem_Calloc(1, sizeof(IdSet));
    if (!mem || !seen) { PyErr_NoMemory(); goto done; }
    {
        /* carve: 8-byte columns first keep everything aligned */
        uint8_t *p = mem; Py_ssize_t R = c.rec_cap + 1, I = c.io_cap;
        c.timestamp_ms = (uint64_t *)p; p += 8 * R;
        c.lon = (double *)p; p += 8 * R;
        c.lat = (double *)p; p += 8 * R;
        c.io_offsets = (int64_t *)p; p += 8 * R;
        c.io_value = (uint64_t *)p; p += 8 * I;
        c.frame_index = (int32_t *)p; p += 4 * R;
        c.lon_raw = (int32_t *)p; p += 4 * R;
        c.lat_raw = (int32_t *)p; p += 4 * R;
        c.altitude = (int16_t *)p; p += 2 * R;
        c.angle = (uint16_t *)p; p += 2 * R;
        c.speed = (uint16_t *)p; p += 2 * R;
        c.event_io_id = (uint16_t *)p; p += 2 * R;
        c.generation_type = (int16_t *)p; p += 2 * R;
        c.io_id = (uint16_t *)p; p += 2 * I;
        c.io_nx_len = (uint16_t *)p; p += 2 * I;
        c.priority = p; p += R;
        c.satellites = p; p += R;
        c.codec = p; p += R;
        c.io_width = p; p += I;
        c.nx = p;
    }
    Err e; e.reason = NULL; e.detail[0] = 0;
    int codec = 0;
    c.io_offsets[0] = 0;
    int rc = parse_frame_core(fb.buf, (size_t)n, (size_t)cap, check_crc, 0, 0, &c, seen, &e, &codec);
    if (rc == P_NOROOM) { PyErr_SetString(PyExc_RuntimeError, "parse_frame: bound bug"); goto done; }
    if (rc == P_ERR) { raise_decode_error(&e); goto done; }

    recs = PyTuple_New(c.n_rec);
    if (!recs) goto done;
    for (Py_ssize_t i = 0; i < c.n_rec; i++) {
        int reuse = wcls && prev_iow && same_layout(&c, i - 1, i);
        PyObject *io = PyDict_New(), *iow = reuse ? Py_NewRef(prev_iow) : PyDict_New();
        PyObject *argv[12] = {0};
        PyObject *rec = NULL;
        if (!io || !iow) goto rec_fail;
        for (int64_t j = c.io_offsets[i]; j < c.io_offsets[i + 1]; j++) {
            PyObject *key = PyLong_FromUnsignedLong(c.io_id[j]);
            PyObject *val = c.io_width[j]
                ? PyLong_FromUnsignedLongLong(c.io_value[j])
                : PyBytes_FromStringAndSize((const char *)c.nx + c.io_value[j], c.io_nx_len[j]);
            int bad = !key || !val || PyDict_SetItem(io, key, val) < 0;
            if (!bad && c.io_width[j] && !reuse) {
                PyObject *w = PyLong_FromLong(c.io_width[j]);
                bad = !w || PyDict_SetItem(iow, key, w) < 0;
                Py_XDECREF(w);
            }
            Py_XDECREF(key); Py_XDECREF(val);
            if (bad) goto rec_fail;
        }
        if (wcls && !reuse) {  /* the shared, read-only kind */
            PyObject *shared = PyObject_CallOneArg(wcls, iow);
            Py_SETREF(iow, shared);
            if (!iow) goto rec_fail;
        }
        prev_iow = iow;  /* the record built below holds a reference */
        argv[0] = PyLong_FromUnsignedLongLong(c.timestamp_ms[i]);
        argv[1] = PyLong_FromLong(c.priority[i]);
        argv[2] = PyFloat_FromDouble(c.lon[i]);
        argv[3] = PyFloat_FromDouble(c.lat[i]);
        argv[4] = PyLong_FromLong(c.altitude[i]);
        argv[5] = PyLong_FromLong(c.angle[i]);
        argv[6] = PyLong_FromLong(c.satellites[i]);
        argv[7] = PyLong_FromLong(c.speed[i]);
        argv[8] = PyLong_FromLong(c.event_io_id[i]);
        argv[9] = io; io = NULL;
        argv[10] = iow; iow = NULL;
        argv[11] = c.generation_type[i] < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(c.generation_type[i]);
        for (int a = 0; a < 12; a++) if (!argv[a]) goto rec_fail;
        rec = PyObject_Vectorcall(rcls, argv, 12, NULL);
    rec_fail:
        Py_XDECREF(io); Py_XDECREF(iow);
        for (int a = 0; a < 12; a++) Py_XDECREF(argv[a]);
        if (!rec) { Py_CLEAR(recs); goto done; }
        PyTuple_SET_ITEM(recs, i, rec);
    }
    result = Py_BuildValue("(iN)", codec, recs);
    recs = NULL;
done:
    Py_XDECREF(recs);
    PyMem_Free(mem);
    PyMem_Free(seen);
    PyBuffer_Release(&fb);
    return result;
}

static PyObject *crc16(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    uint16_t r = crc16_arc(b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromLong(r);
}

/* bytes_column(n, record, width, value, nx_len, nx_data) -> list of n (bytes or None)
 * One IO id's elements of a decoded batch as the bytes each record carries: an NX
 * element's bytes (nx_data[value : value + nx_len]), a fixed one's value as `width`
 * big-endian bytes; None for a record without the id; the last element of a record wins.
 * record int64, width uint8, value uint64, nx_len uint16, all C-contiguous and of one
 * length (anonymize/batch_columns.py `_bytes_column`, which did this per element in
 * Python). */
static int get_column(PyObject *o, Py_buffer *b, Py_ssize_t itemsize, const char *name) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (b->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "bytes_column: %s must have %zd-byte items, not %zd", name, itemsize, b->itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static PyObject *bytes_column(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n;
    PyObject *ro, *wo, *vo, *lo, *xo;
    if (!PyArg_ParseTuple(args, "nOOOOO:bytes_column", &n, &ro, &wo, &vo, &lo, &xo)) return NULL;
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "bytes_column: n must be >= 0"); return NULL; }
    Py_buffer rb = {0}, wb = {0}, vb = {0}, lb = {0}, xb = {0};
    PyObject *out = NULL;
    if (get_column(ro, &rb, 8, "record") < 0 || get_column(wo, &wb, 1, "width") < 0 ||
        get_column(vo, &vb, 8, "value") < 0 || get_column(lo, &lb, 2, "nx_len") < 0 ||
        PyObject_GetBuffer(xo, &xb, PyBUF_SIMPLE) < 0) goto done;
    const Py_ssize_t m = rb.len / 8;
    if (wb.len != m || vb.len / 8 != m || lb.len / 2 != m) {
        PyErr_SetString(PyExc_ValueError, "bytes_column: record, width, value and nx_len differ in length");
        goto done;
    }
    const int64_t *rec = rb.buf;
    const uint8_t *wid = wb.buf;
    const uint64_t *val = vb.buf;
    const uint16_t *len = lb.buf;
    const char *nx = xb.buf;
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) { Py_INCREF(Py_None); PyList_SET_ITEM(out, i, Py_None); }
    for (Py_ssize_t j = 0; j < m; j++) {
        const int64_t r = rec[j];
        if (r < 0 || r >= n) {
            PyErr_Format(PyExc_IndexError, "bytes_column: record[%zd] = %lld is not a row of %zd", j, (long long)r, n);
            goto fail;
        }
        PyObject *b;
        const uint8_t w = wid[j];
        if (w == 0) {
            if (val[j] > (uint64_t)xb.len || len[j] > (uint64_t)xb.len - val[j]) {
                PyErr_Format(PyExc_ValueError, "bytes_column: NX element %zd lies outside nx_data", j);
                goto fail;
            }
            b = PyBytes_FromStringAndSize(nx + val[j], len[j]);
        } else if (w == 1 || w == 2 || w == 4 || w == 8) {
            if (w < 8 && (val[j] >> (8 * w)) != 0) {
                PyErr_Format(PyExc_OverflowError, "bytes_column: value %zd does not fit %u bytes", j, (unsigned)w);
                goto fail;
            }
            char tmp[8];
            for (int k = 0; k < w; k++) tmp[k] = (char)(val[j] >> (8 * (w - 1 - k)));
            b = PyBytes_FromStringAndSize(tmp, w);
        } else {
            PyErr_Format(PyExc_ValueError, "bytes_column: width[%zd] = %u is not 0, 1, 2, 4 or 8", j, (unsigned)w);
            goto fail;
        }
        if (!b) goto fail;
        PyObject *old = PyList_GET_ITEM(out, r);
        PyList_SET_ITEM(out, r, b);
        Py_DECREF(old);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    if (rb.obj) PyBuffer_Release(&rb);
    if (wb.obj) PyBuffer_Release(&wb);
    if (vb.obj) PyBuffer_Release(&vb);
    if (lb.obj) PyBuffer_Release(&lb);
    if (xb.obj) PyBuffer_Release(&xb);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_into", decode_into, METH_VARARGS, "Fill caller-allocated columns from AVL frames."},
    {"parse_frame", (PyCFunction)(void (*)(void))parse_frame, METH_VARARGS | METH_KEYWORDS,
     "parse_frame(frame, record_cls, cap=1280, check_crc=True) -> (codec, records)"},
    {"set_decode_error", set_decode_error, METH_O, "Register the exception class parse_frame raises."},
    {"crc16", crc16, METH_O, "CRC-16/ARC (IBM) of a bytes-like object."},
    {"bytes_column", bytes_column, METH_VARARGS,
     "bytes_column(n, record, width, value, nx_len, nx_data) -> list: one IO id's values per record as bytes."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_avlbatch",
    "Strict columnar Teltonika AVL frame parser (see fleetcloak.codecs.batch).", -1, methods};

PyMODINIT_FUNC PyInit__avlbatch(void) {
    crc_init();
    for (int i = 0; REASON_NAMES[i]; i++) {
        reason_strings[i] = PyUnicode_InternFromString(REASON_NAMES[i]);
        if (!reason_strings[i]) return NULL;
    }
    return PyModule_Create(&mod);
}
