/*
 * _recordbatch: whole, uncompressed Kafka RecordBatch v2 buffers in C, both ways, for
 * fleetcloak.streams.recordbatch: the producer's batches built, and the consumer's fetched
 * batches read, without a Python call per message.
 *
 * Entry points:
 *   build(keys, values, timestamp_ms, max_bytes, rows=None) -> list[tuple[bytearray, int]]
 *       rows: None (every record, in order) or a C-contiguous int64 buffer of indexes into
 *       keys/values: the records to take, in that order (a partition's share of a block,
 *       without building its own lists). RecordTooLarge names the index into keys.
 *       the records in order, cut greedily into as few batches as possible, each one's
 *       encoded size <= max_bytes; (buffer, record count) per batch. A record that does
 *       not fit a batch of its own raises the class registered with
 *       set_too_large_error(cls) as cls(index, size, max_bytes) (ValueError before that).
 *   read(data, pos, topic, partition, next_offset, check_crcs) -> (records, next_offset, pos, stop)
 *       the records of a fetched partition's batches (one after another, from byte pos),
 *       as FetchedRecord struct sequences (ConsumerRecord's attributes), with aiokafka's
 *       PartitionRecords offset rules: a record below next_offset is skipped, an emitted
 *       one sets next_offset = its offset + 1, a finished batch sets it to the batch's
 *       last offset + 1. It reads whole batches only and stops, at pos = the start of the
 *       batch it did not read, with stop =
 *         STOP_END       no complete batch left (fewer than 12 bytes, or a batch cut off
 *                        by the fetch size: normal at the end of a fetch);
 *         STOP_FALLBACK  a batch for aiokafka's own reader: not magic 2, compressed,
 *                        transactional, control, or not well-formed in any way (lengths,
 *                        varints, record count, a header key not UTF-8); its records
 *                        are not in the list, aiokafka reads them or raises its error;
 *         STOP_BAD_CRC   check_crcs and the batch's CRC-32C does not match.
 *   pack(records) -> bytes | None, unpack(data, start, count, topic) -> list[FetchedRecord],
 *   columns(data) -> (keys, values, topics, starts), header_values(data, name) -> list
 *       FetchedRecords through a pipe in one buffer (see "packing" below)
 *   _crc32c(data, force_portable=False) -> int     CRC-32C, for the tests
 *   set_too_large_error(cls)
 *   FetchedRecord, constants BATCH_OVERHEAD (61), CRC_IMPL ("sse4.2" or "portable",
 *   chosen at import), STOP_END, STOP_FALLBACK, STOP_BAD_CRC
 *
 * Wire layout (Kafka's DefaultRecordBatch / DefaultRecord), integers big-endian:
 *    0 baseOffset i64 = 0 (the broker assigns it)
 *    8 length i32 = size - 12 (bytes after this field)
 *   12 partitionLeaderEpoch i32 = -1
 *   16 magic i8 = 2
 *   17 crc u32 = CRC-32C (Castagnoli) of bytes [21, size)
 *   21 attributes i16 = 0 (no compression, create time, not transactional, not control)
 *   23 lastOffsetDelta i32 = count - 1
 *   27 baseTimestamp i64 = timestamp_ms,  35 maxTimestamp i64 = timestamp_ms
 *   43 producerId i64 = -1,  51 producerEpoch i16 = -1
 *   53 baseSequence i32 = 0  (what aiokafka's producer writes: its BatchBuilder passes
 *                             base_sequence=0, not Kafka's NO_SEQUENCE -1)
 *   57 record count i32
 *   61 records, each: length varint (of the rest) | attributes i8 = 0 |
 *      timestampDelta varlong = 0 | offsetDelta varint | key length varint (-1: None) |
 *      key | value length varint (-1: None) | value | header count varint = 0
 *   Varints are zigzag-encoded base-128, low group first.
 * That is byte for byte what aiokafka's BatchBuilder(...).append(timestamp=t, key=k,
 * value=v) + _build() gives (tested). The cuts follow aiokafka's pure-Python builder: a
 * record joins the open batch when the batch's size with it is <= max_bytes. (Its
 * Cython builder, the one BatchBuilder uses, stops one byte earlier, at < batch_size.)
 *
 * SAFETY:
 *  - Pass 1 reads every key and value once and holds it until the end: a reference to
 *    each, and the buffer (PyObject_GetBuffer) of any object that is not bytes. It sums
 *    sizes in 64 bits and fixes the cuts; max_bytes <= INT32_MAX bounds every batch, so
 *    every field fits.
 *  - Pass 2 allocates one bytearray of the exact size per batch, then writes them from
 *    the spans pass 1 recorded, touching no Python object: without the GIL when every
 *    item is bytes or None (immutable, and held, so no other thread can free or change
 *    them), with it when an item is another object's buffer (whose owner could write to
 *    it). Each batch's size was computed from the same spans it is written from.
 *  - read() holds the buffer (y*: any C-contiguous bytes-like object) for the call. A batch's
 *    length is checked against the bytes left, and every varint, key, value and header
 *    against the end of its own record, before it is read; a record's fields must end
 *    exactly at its length and the batch's records at its end. A batch is read entirely
 *    or not at all: the records of one found malformed midway are dropped from the list.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BATCH_OVERHEAD 61       /* header bytes before the first record */
#define MIN_RECORD 7            /* length, attrs, ts, offset, key -1, value -1, headers */
#define CRC_START 21            /* the CRC covers attributes .. end */
#define BASE_SEQUENCE 0         /* as aiokafka's BatchBuilder (see above) */

static PyObject *TooLargeCls = NULL;   /* set_too_large_error */

/* ---------------------------------------------------------------- CRC-32C ------- */

/* Reflected Castagnoli polynomial. The running value is the inverted register, as for
 * the crc32 instruction: start from 0xFFFFFFFF, invert at the end. */
#define CRC32C_POLY 0x82F63B78u
static uint32_t crc_table[8][256];

static void crc_init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    for (int j = 1; j < 8; j++)
        for (int i = 0; i < 256; i++)
            crc_table[j][i] = (crc_table[j - 1][i] >> 8) ^ crc_table[0][crc_table[j - 1][i] & 0xFF];
}

/* Slicing-by-8; bytes are combined explicitly, so it is independent of endianness. */
static uint32_t crc_portable(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        crc ^= (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        crc = crc_table[7][crc & 0xFF] ^ crc_table[6][(crc >> 8) & 0xFF] ^
              crc_table[5][(crc >> 16) & 0xFF] ^ crc_table[4][crc >> 24] ^
              crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_SSE42_PATH 1
__attribute__((target("sse4.2")))
static uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);                 /* unaligned load; x86 is little-endian */
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
static int have_sse42(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
#define HAVE_SSE42_PATH 0
#endif

typedef uint32_t (*crc_fn)(uint32_t, const uint8_t *, size_t);
static crc_fn crc_update = crc_portable;   /* set at import */

/* ---------------------------------------------------------------- encoding ------ */

static inline size_t uvarint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}
static inline uint8_t *put_uvarint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) { *p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *p++ = (uint8_t)v;
    return p;
}
/* zigzag of a length >= 0 is 2 * length; of -1 (None) it is 1 */
static inline uint64_t zz_len(Py_ssize_t len) { return len < 0 ? 1u : (uint64_t)len << 1; }

static inline void store16be(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void store32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void store64be(uint8_t *p, uint64_t v) { store32be(p, (uint32_t)(v >> 32)); store32be(p + 4, (uint32_t)v); }

/* Size of a record's body after its length varint, without the offsetDelta varint:
 * attributes + timestampDelta + key + value + header count. */
static inline uint64_t body_base(Py_ssize_t klen, Py_ssize_t vlen) {
    return 3 + (klen < 0 ? 1 : uvarint_size(zz_len(klen)) + (uint64_t)klen)
             + (vlen < 0 ? 1 : uvarint_size(zz_len(vlen)) + (uint64_t)vlen);
}
/* Whole record (length varint included) at offset delta `delta` in its batch. */
static inline uint64_t record_size(uint64_t base, Py_ssize_t delta) {
    uint64_t body = base + uvarint_size((uint64_t)delta << 1);
    return body + uvarint_size(body << 1);
}

/* ---------------------------------------------------------------- items --------- */

/* One key or value: None (len -1), bytes, or any C-contiguous buffer (then *view is
 * held and *held set; the caller releases it). */
typedef struct {
    const uint8_t *ptr;
    Py_ssize_t len;
    Py_buffer view;
    int held;
} Item;

static int item_get(PyObject *obj, const char *what, Py_ssize_t i, Item *it) {
    it->held = 0;
    if (obj == Py_None) { it->ptr = NULL; it->len = -1; return 0; }
    if (PyBytes_CheckExact(obj)) {
        it->ptr = (const uint8_t *)PyBytes_AS_STRING(obj);
        it->len = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s[%zd] is %.100s; expected bytes, a bytes-like object or None",
                     what, i, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, &it->view, PyBUF_SIMPLE) < 0) {   /* e.g. a strided memoryview */
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s[%zd] is a %.100s that is not one C-contiguous block of bytes",
                     what, i, Py_TYPE(obj)->tp_name);
        return -1;
    }
    it->held = 1;
    it->ptr = it->view.buf;
    it->len = it->view.len;
    return 0;
}
static inline void item_release(Item *it) {
    if (it->held) { PyBuffer_Release(&it->view); it->held = 0; }
}

/* ---------------------------------------------------------------- build --------- */

typedef struct { Py_ssize_t start, count; uint64_t size; } Cut;

static int raise_too_large(Py_ssize_t index, uint64_t size, Py_ssize_t max_bytes) {
    if (!TooLargeCls) {
        PyErr_Format(PyExc_ValueError,
                     "record %zd needs %llu bytes as a batch of its own, more than max_bytes=%zd",
                     index, (unsigned long long)size, max_bytes);
        return -1;
    }
    PyObject *exc = PyObject_CallFunction(TooLargeCls, "nKn", index, (unsigned long long)size, max_bytes);
    if (exc) { PyErr_SetObject((PyObject *)Py_TYPE(exc), exc); Py_DECREF(exc); }
    return -1;
}

/* A key or value to copy: its bytes (NULL, -1 for None). */
typedef struct { const uint8_t *ptr; Py_ssize_t len; } Span;

/* Writes the batch of records ks[0..count) / vs[0..count) into buf (exactly `size`
 * bytes, as pass 1 computed). Touches no Python object: runs without the GIL. */
static void fill_batch(uint8_t *const buf, uint64_t size, Py_ssize_t count, const Span *ks, const Span *vs,
                       int64_t timestamp_ms) {
    store64be(buf + 0, 0);
    store32be(buf + 8, (uint32_t)(size - 12));
    store32be(buf + 12, 0xFFFFFFFFu);                       /* partitionLeaderEpoch -1 */
    buf[16] = 2;                                            /* magic */
    store16be(buf + 21, 0);                                 /* attributes */
    store32be(buf + 23, (uint32_t)(count - 1));             /* lastOffsetDelta */
    store64be(buf + 27, (uint64_t)timestamp_ms);
    store64be(buf + 35, (uint64_t)timestamp_ms);
    store64be(buf + 43, UINT64_MAX);                        /* producerId -1 */
    store16be(buf + 51, 0xFFFF);                            /* producerEpoch -1 */
    store32be(buf + 53, (uint32_t)BASE_SEQUENCE);
    store32be(buf + 57, (uint32_t)count);

    uint8_t *p = buf + BATCH_OVERHEAD;
    for (Py_ssize_t d = 0; d < count; d++) {
        const Span k = ks[d], v = vs[d];
        uint64_t body = body_base(k.len, v.len) + uvarint_size((uint64_t)d << 1);
        p = put_uvarint(p, body << 1);
        *p++ = 0;                                           /* attributes */
        *p++ = 0;                                           /* timestampDelta 0 */
        p = put_uvarint(p, (uint64_t)d << 1);
        p = put_uvarint(p, zz_len(k.len));
        if (k.len > 0) { memcpy(p, k.ptr, (size_t)k.len); p += k.len; }
        p = put_uvarint(p, zz_len(v.len));
        if (v.len > 0) { memcpy(p, v.ptr, (size_t)v.len); p += v.len; }
        *p++ = 0;                                           /* header count */
    }
    store32be(buf + 17, ~crc_update(0xFFFFFFFFu, buf + CRC_START, size - CRC_START));
}

static void fill_batches(uint8_t *const *bufs, const Cut *cuts, Py_ssize_t ncuts, const Span *ks, const Span *vs,
                         int64_t timestamp_ms) {
    for (Py_ssize_t b = 0; b < ncuts; b++)
        fill_batch(bufs[b], cuts[b].size, cuts[b].count, ks + cuts[b].start, vs + cuts[b].start, timestamp_ms);
}

static PyObject *as_sequence(PyObject *obj, const char *what) {
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyByteArray_Check(obj) || PyMemoryView_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes or None, not %.100s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes or None, not %.100s", what, Py_TYPE(obj)->tp_name);
    }
    return seq;
}

static PyObject *build(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *values, *rows_obj = Py_None;
    long long timestamp_ms;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "OOLn|O:build", &keys, &values, &timestamp_ms, &max_bytes, &rows_obj)) return NULL;
    if (max_bytes < BATCH_OVERHEAD + MIN_RECORD || max_bytes > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "max_bytes must be from %d (a batch header and the smallest record) "
                     "to %d, not %zd", BATCH_OVERHEAD + MIN_RECORD, INT32_MAX, max_bytes);
        return NULL;
    }
    PyObject *kseq = as_sequence(keys, "keys");
    if (!kseq) return NULL;
    PyObject *vseq = as_sequence(values, "values");
    if (!vseq) { Py_DECREF(kseq); return NULL; }
    PyObject *result = NULL;
    Cut *cuts = NULL;
    Py_ssize_t ncuts = 0, cap = 0;
    Py_buffer rows_buf = {0};
    const int64_t *rows = NULL;
    Span *ks = NULL, *vs = NULL;
    PyObject **held = NULL;
    Py_ssize_t nheld = 0, nviews = 0, capviews = 0;
    Py_buffer *views = NULL;
    uint8_t **bufs = NULL;

    const Py_ssize_t nkeys = PySequence_Fast_GET_SIZE(kseq);
    Py_ssize_t n = nkeys;
    if (PySequence_Fast_GET_SIZE(vseq) != nkeys) {
        PyErr_Format(PyExc_ValueError, "keys and values differ in length: %zd keys, %zd values",
                     nkeys, PySequence_Fast_GET_SIZE(vseq));
        goto done;
    }
    if (rows_obj != Py_None) {
        if (PyObject_GetBuffer(rows_obj, &rows_buf, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        if (rows_buf.itemsize != 8 || !rows_buf.format || (strcmp(rows_buf.format, "l") && strcmp(rows_buf.format, "q"))) {
            PyErr_SetString(PyExc_TypeError, "rows must be a C-contiguous int64 array");
            goto done;
        }
        rows = (const int64_t *)rows_buf.buf;
        n = rows_buf.len / 8;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (rows[j] < 0 || rows[j] >= nkeys) {
                PyErr_Format(PyExc_IndexError, "rows[%zd] = %lld is not an index of the %zd keys",
                             j, (long long)rows[j], nkeys);
                goto done;
            }
        }
    }

    /* pass 1: every record's key and value held (a reference, and the buffer of any
     * object that is not bytes), sizes summed, cuts fixed (greedy: a record joins the
     * open batch if it still fits) */
    if (!(ks = PyMem_Calloc((size_t)n + 1, sizeof(Span))) || !(vs = PyMem_Calloc((size_t)n + 1, sizeof(Span))) ||
        !(held = PyMem_Calloc(2 * (size_t)n + 1, sizeof(PyObject *)))) { PyErr_NoMemory(); goto done; }
    Py_ssize_t start = 0;
    uint64_t bsize = BATCH_OVERHEAD;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Py_ssize_t r = rows ? (Py_ssize_t)rows[i] : i;   /* the record's index in keys */
        PyObject *pair[2] = {PySequence_Fast_GET_ITEM(kseq, r), PySequence_Fast_GET_ITEM(vseq, r)};
        Span *spans[2] = {&ks[i], &vs[i]};
        for (int j = 0; j < 2; j++) {
            Item it;
            if (item_get(pair[j], j ? "values" : "keys", r, &it) < 0) goto done;
            if (it.held) {                                  /* kept until the batches are written */
                if (nviews == capviews) {
                    capviews = capviews ? 2 * capviews : 8;
                    Py_buffer *grown = PyMem_Realloc(views, (size_t)capviews * sizeof(Py_buffer));
                    if (!grown) { item_release(&it); PyErr_NoMemory(); goto done; }
                    views = grown;
                }
                views[nviews++] = it.view;
            }
            held[nheld++] = Py_NewRef(pair[j]);
            *spans[j] = (Span){it.ptr, it.len};
        }
        uint64_t base = body_base(ks[i].len, vs[i].len);
        uint64_t rs = record_size(base, i - start);
        if (bsize + rs > (uint64_t)max_bytes) {
            if (i > start) {
                if (ncuts == cap) {
                    cap = cap ? 2 * cap : 16;
                    Cut *grown = PyMem_Realloc(cuts, (size_t)cap * sizeof(Cut));
                    if (!grown) { PyErr_NoMemory(); goto done; }
                    cuts = grown;
                }
                cuts[ncuts++] = (Cut){start, i - start, bsize};
                start = i;
                bsize = BATCH_OVERHEAD;
                rs = record_size(base, 0);
            }
            if (BATCH_OVERHEAD + rs > (uint64_t)max_bytes) {
                raise_too_large(r, BATCH_OVERHEAD + rs, max_bytes);
                goto done;
            }
        }
        bsize += rs;
    }
    if (n > start) {
        if (ncuts == cap) {
            Cut *grown = PyMem_Realloc(cuts, (size_t)(cap + 1) * sizeof(Cut));
            if (!grown) { PyErr_NoMemory(); goto done; }
            cuts = grown;
        }
        cuts[ncuts++] = (Cut){start, n - start, bsize};
    }

    /* pass 2: one exact-size bytearray per batch, filled without the GIL when every item
     * is bytes or None (immutable, and held: nothing another thread does can move them) */
    PyObject *list = PyList_New(ncuts);
    if (!list) goto done;
    for (Py_ssize_t b = 0; b < ncuts; b++) {
        PyObject *ba = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)cuts[b].size);
        PyObject *pair = ba ? Py_BuildValue("(Nn)", ba, cuts[b].count) : NULL;
        if (!pair) { Py_DECREF(list); goto done; }
        PyList_SET_ITEM(list, b, pair);
    }
    if (!(bufs = PyMem_Calloc((size_t)ncuts + 1, sizeof(uint8_t *)))) { Py_DECREF(list); PyErr_NoMemory(); goto done; }
    for (Py_ssize_t b = 0; b < ncuts; b++)
        bufs[b] = (uint8_t *)PyByteArray_AS_STRING(PyTuple_GET_ITEM(PyList_GET_ITEM(list, b), 0));
    if (nviews) {   /* another object's buffer: keep the GIL */
        fill_batches(bufs, cuts, ncuts, ks, vs, (int64_t)timestamp_ms);
    } else {
        Py_BEGIN_ALLOW_THREADS
        fill_batches(bufs, cuts, ncuts, ks, vs, (int64_t)timestamp_ms);
        Py_END_ALLOW_THREADS
    }
    result = list;
done:
    for (Py_ssize_t v = 0; v < nviews; v++) PyBuffer_Release(&views[v]);
    for (Py_ssize_t h = 0; h < nheld; h++) Py_DECREF(held[h]);
    PyMem_Free(bufs);
    PyMem_Free(views);
    PyMem_Free(held);
    PyMem_Free(ks);
    PyMem_Free(vs);
    if (rows_buf.obj) PyBuffer_Release(&rows_buf);
    PyMem_Free(cuts);
    Py_DECREF(kseq);
    Py_DECREF(vseq);
    return result;
}

/* ---------------------------------------------------------------- reading ------- */

/* What read() hands out per record: the attributes of aiokafka's ConsumerRecord, in its
 * field order (a struct sequence: a tuple with named fields, as cheap to make as one). */
static PyTypeObject *FetchedRecordType = NULL;

static PyStructSequence_Field fetched_fields[] = {
    {"topic", NULL}, {"partition", NULL}, {"offset", NULL},
    {"timestamp", "ms since the epoch"},
    {"timestamp_type", "0 CreateTime, 1 LogAppendTime (then the batch's maxTimestamp)"},
    {"key", "bytes or None"}, {"value", "bytes or None"},
    {"checksum", "None (v2 records have no per-record checksum)"},
    {"serialized_key_size", "len(key), -1 for None"},
    {"serialized_value_size", "len(value), -1 for None"},
    {"headers", "tuple of (str, bytes or None)"},
    {NULL, NULL}
};
static PyStructSequence_Desc fetched_desc = {
    "fleetcloak.streams._recordbatch.FetchedRecord",
    "One consumed record, with the attributes of aiokafka's ConsumerRecord.",
    fetched_fields, 11
};

enum { STOP_END = 0, STOP_FALLBACK = 1, STOP_BAD_CRC = 2 };

#define ATTR_COMPRESSION 0x07
#define ATTR_LOG_APPEND_TIME 0x08
#define ATTR_TRANSACTIONAL 0x10
#define ATTR_CONTROL 0x20

static inline uint16_t load16be(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t load32be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t load64be(const uint8_t *p) { return ((uint64_t)load32be(p) << 32) | load32be(p + 4); }

/* A zigzag varint of up to 10 bytes at *pp, below end. -1 if it runs past end or is
 * longer than 64 bits. */
static inline int get_varint(const uint8_t **pp, const uint8_t *end, int64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return -1;
}

/* Header keys repeat on every record of a topic: decode each distinct one once per call. */
#define KEY_CACHE 8
typedef struct { const uint8_t *ptr; Py_ssize_t len; PyObject *str; } KeyEntry;
typedef struct { KeyEntry e[KEY_CACHE]; int n; } KeyCache;

/* New reference to the str of these UTF-8 bytes; NULL (no exception set) if they are not
 * UTF-8, NULL with MemoryError if out of memory. */
static PyObject *header_key(KeyCache *kc, const uint8_t *p, Py_ssize_t n) {
    for (int i = 0; i < kc->n; i++)
        if (kc->e[i].len == n && memcmp(kc->e[i].ptr, p, (size_t)n) == 0) return Py_NewRef(kc->e[i].str);
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (!s) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
        return NULL;
    }
    if (kc->n < KEY_CACHE) kc->e[kc->n++] = (KeyEntry){p, n, Py_NewRef(s)};
    return s;
}

/* Bytes of length n at p, None for n == -1. */
static inline PyObject *nullable_bytes(const uint8_t *p, int64_t n) {
    return n < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
}

/* Result of reading one record: appended, skipped (offset below the fetch offset), not
 * well-formed (the batch goes to aiokafka), or a Python error (out of memory). */
enum { REC_OK = 0, REC_MALFORMED = 1, REC_ERROR = -1 };

typedef struct {
    int64_t base_offset, first_ts, max_ts;
    int log_append;
    PyObject *topic, *partition, *out;
    KeyCache *keys;
} BatchCtx;

/* Reads the record at *pp (below bend), advances *pp past it and appends it to ctx->out
 * unless its offset is below *min_offset; then *min_offset = offset + 1 (aiokafka's
 * next_fetch_offset). Every length is checked against the record's own end. */
static int read_record(const BatchCtx *ctx, const uint8_t **pp, const uint8_t *bend, int64_t *min_offset) {
    const uint8_t *p = *pp;
    int64_t rlen, attrs, ts_delta, off_delta, klen, vlen, hcount;
    if (get_varint(&p, bend, &rlen) < 0 || rlen < 0 || rlen > bend - p) return REC_MALFORMED;
    const uint8_t *rend = p + rlen;
    /* attributes are read as a varint, as aiokafka does (always 0 in practice) */
    if (get_varint(&p, rend, &attrs) < 0 || get_varint(&p, rend, &ts_delta) < 0 ||
        get_varint(&p, rend, &off_delta) < 0 || get_varint(&p, rend, &klen) < 0) return REC_MALFORMED;
    if (klen < -1 || klen > rend - p) return REC_MALFORMED;
    const uint8_t *kp = p;
    if (klen > 0) p += klen;
    if (get_varint(&p, rend, &vlen) < 0 || vlen < -1 || vlen > rend - p) return REC_MALFORMED;
    const uint8_t *vp = p;
    if (vlen > 0) p += vlen;
    if (get_varint(&p, rend, &hcount) < 0 || hcount < 0 || hcount > rend - p) return REC_MALFORMED;

    const int64_t offset = (int64_t)((uint64_t)ctx->base_offset + (uint64_t)off_delta);
    const int emit = offset >= *min_offset;
    PyObject *headers = NULL, *rec = NULL;
    int status = REC_ERROR;
    if (emit && !(headers = PyTuple_New((Py_ssize_t)hcount))) return REC_ERROR;
    for (int64_t h = 0; h < hcount; h++) {
        int64_t hklen, hvlen;
        if (get_varint(&p, rend, &hklen) < 0 || hklen < 0 || hklen > rend - p) goto malformed;
        const uint8_t *hkp = p;
        p += hklen;
        if (get_varint(&p, rend, &hvlen) < 0 || hvlen < -1 || hvlen > rend - p) goto malformed;
        const uint8_t *hvp = p;
        if (hvlen > 0) p += hvlen;
        if (!emit) continue;
        PyObject *k = header_key(ctx->keys, hkp, (Py_ssize_t)hklen);
        if (!k) {
            if (PyErr_Occurred()) goto done;
            goto malformed;                    /* not UTF-8: aiokafka's error, not ours */
        }
        PyObject *v = nullable_bytes(hvp, hvlen);
        if (!v) { Py_DECREF(k); goto done; }
        PyObject *pair = PyTuple_Pack(2, k, v);
        Py_DECREF(k);
        Py_DECREF(v);
        if (!pair) goto done;
        PyObject_GC_UnTrack(pair);  /* a str and bytes/None: no cycle through it */
        PyTuple_SET_ITEM(headers, (Py_ssize_t)h, pair);
    }
    if (p != rend) goto malformed;             /* the record's length must match its fields */
    *pp = p;
    if (!emit) return REC_OK;
    /* Untracked like its pairs (and the struct sequence, which 3.11 does not track): the
     * cyclic GC need not walk a fetch's thousands of records, none can be in a cycle. */
    if (hcount) PyObject_GC_UnTrack(headers);

    const int64_t ts = ctx->log_append ? ctx->max_ts
                                       : (int64_t)((uint64_t)ctx->first_ts + (uint64_t)ts_delta);
    if (!(rec = PyStructSequence_New(FetchedRecordType))) goto done;
    /* Items left NULL on a failure are skipped by the struct sequence's dealloc. */
    PyObject *item;
    PyStructSequence_SET_ITEM(rec, 0, Py_NewRef(ctx->topic));
    PyStructSequence_SET_ITEM(rec, 1, Py_NewRef(ctx->partition));
    if (!(item = PyLong_FromLongLong(offset))) goto done;
    PyStructSequence_SET_ITEM(rec, 2, item);
    if (!(item = PyLong_FromLongLong(ts))) goto done;
    PyStructSequence_SET_ITEM(rec, 3, item);
    if (!(item = PyLong_FromLong(ctx->log_append))) goto done;
    PyStructSequence_SET_ITEM(rec, 4, item);
    if (!(item = nullable_bytes(kp, klen))) goto done;
    PyStructSequence_SET_ITEM(rec, 5, item);
    if (!(item = nullable_bytes(vp, vlen))) goto done;
    PyStructSequence_SET_ITEM(rec, 6, item);
    PyStructSequence_SET_ITEM(rec, 7, Py_NewRef(Py_None));
    if (!(item = PyLong_FromLongLong(klen))) goto done;
    PyStructSequence_SET_ITEM(rec, 8, item);
    if (!(item = PyLong_FromLongLong(vlen))) goto done;
    PyStructSequence_SET_ITEM(rec, 9, item);
    PyStructSequence_SET_ITEM(rec, 10, headers);
    headers = NULL;
    if (PyList_Append(ctx->out, rec) < 0) goto done;
    *min_offset = offset + 1;
    status = REC_OK;
    goto done;
malformed:
    status = REC_MALFORMED;
done:
    Py_XDECREF(headers);
    Py_XDECREF(rec);
    return status;
}

static PyObject *read_batches(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"data", "pos", "topic", "partition", "next_offset", "check_crcs", NULL};
    Py_buffer data;
    Py_ssize_t pos;
    PyObject *topic, *partition;
    long long next_offset;
    int check_crcs;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*nUO!Lp:read", kwlist, &data, &pos, &topic,
                                     &PyLong_Type, &partition, &next_offset, &check_crcs)) return NULL;
    PyObject *out = NULL, *result = NULL;
    KeyCache keys = {.n = 0};
    if (pos < 0 || pos > data.len) {
        PyErr_Format(PyExc_ValueError, "pos %zd is outside the %zd-byte buffer", pos, data.len);
        goto done;
    }
    if (!(out = PyList_New(0))) goto done;
    const uint8_t *const buf = data.buf;
    const size_t len = (size_t)data.len;
    size_t at = (size_t)pos;
    int64_t min_offset = next_offset;
    int stop;
    for (;;) {
        const uint8_t *b = buf + at;
        const size_t rem = len - at;
        if (rem < 12) { stop = STOP_END; break; }                 /* what is left is no batch */
        const int32_t length = (int32_t)load32be(b + 8);
        if (length < 0) { stop = STOP_FALLBACK; break; }
        if ((uint64_t)length + 12 > rem) { stop = STOP_END; break; }  /* cut by the fetch size */
        const size_t bsize = (size_t)length + 12;
        if (bsize < BATCH_OVERHEAD || b[16] != 2) { stop = STOP_FALLBACK; break; }
        const uint16_t attrs = load16be(b + 21);
        if (attrs & (ATTR_COMPRESSION | ATTR_TRANSACTIONAL | ATTR_CONTROL)) { stop = STOP_FALLBACK; break; }
        if (check_crcs && ~crc_update(0xFFFFFFFFu, b + CRC_START, bsize - CRC_START) != load32be(b + 17)) {
            stop = STOP_BAD_CRC;
            break;
        }
        const int32_t count = (int32_t)load32be(b + 57);
        if (count < 0) { stop = STOP_FALLBACK; break; }
        const BatchCtx ctx = {
            .base_offset = (int64_t)load64be(b), .first_ts = (int64_t)load64be(b + 27),
            .max_ts = (int64_t)load64be(b + 35), .log_append = (attrs & ATTR_LOG_APPEND_TIME) != 0,
            .topic = topic, .partition = partition, .out = out, .keys = &keys,
        };
        const Py_ssize_t mark = PyList_GET_SIZE(out);
        int64_t batch_min = min_offset;
        const uint8_t *p = b + BATCH_OVERHEAD, *const bend = b + bsize;
        int rc = REC_OK;
        for (int32_t i = 0; i < count && rc == REC_OK; i++) rc = read_record(&ctx, &p, bend, &batch_min);
        if (rc == REC_ERROR) goto done;
        if (rc == REC_MALFORMED || p != bend) {   /* whole batches only: drop what it gave */
            if (PyList_SetSlice(out, mark, PyList_GET_SIZE(out), NULL) < 0) goto done;
            stop = STOP_FALLBACK;
            break;
        }
        /* as aiokafka: after a v2 batch, the next offset is its last offset + 1 even if
         * compaction removed the records at the end */
        min_offset = (int64_t)((uint64_t)ctx.base_offset + (uint64_t)(int64_t)(int32_t)load32be(b + 23) + 1);
        at += bsize;
    }
    result = Py_BuildValue("(OLni)", out, (long long)min_offset, (Py_ssize_t)at, stop);
done:
    for (int i = 0; i < keys.n; i++) Py_DECREF(keys.e[i].str);
    Py_XDECREF(out);
    PyBuffer_Release(&data);
    return result;
}

/* ---------------------------------------------------------------- packing ------ */
/* pack(records) -> bytes | None and unpack(data) -> list[FetchedRecord]: fetched records
 * handed from the worker to its pipeline process (streams/runner.py) as one buffer,
 * written and read in one pass each, where pickling the records' fields took ~10x as
 * long on each side. Native byte order (both ends are the same machine). Per record:
 *   i32 topic length (-1: the previous record's topic) | topic UTF-8 | i32 partition |
 *   i64 offset | i64 timestamp | i32 timestamp_type | i64 key length (-1: None) | key |
 *   i64 value length (-1: None) | value | i32 header count |
 *   per header: i32 key length | key UTF-8 | i64 value length (-1: None) | value
 * pack returns None (nothing raised) for anything it would not give back exactly: an
 * item that is not a FetchedRecord, a field of another type, serialized sizes that are
 * not the lengths, a checksum that is not None; the caller then sends them another way.
 * unpack checks every length against the end of the buffer (ValueError if it runs past). */

typedef struct { uint8_t *p; size_t size; } Packer;   /* p NULL: sizing pass */

static inline void pk_put(Packer *w, const void *src, size_t n) {
    if (w->p) { memcpy(w->p, src, n); w->p += n; }
    w->size += n;
}
static inline void pk_i32(Packer *w, int32_t v) { pk_put(w, &v, 4); }
static inline void pk_i64(Packer *w, int64_t v) { pk_put(w, &v, 8); }

/* -1 if obj is not None/bytes (or its declared size differs); else writes it. */
static int pk_bytes(Packer *w, PyObject *obj, PyObject *declared) {
    int64_t n;
    if (obj == Py_None) n = -1;
    else if (PyBytes_CheckExact(obj)) n = PyBytes_GET_SIZE(obj);
    else return -1;
    if (declared && (!PyLong_CheckExact(declared) || PyLong_AsLongLong(declared) != n)) {
        PyErr_Clear();
        return -1;
    }
    pk_i64(w, n);
    if (n > 0) pk_put(w, PyBytes_AS_STRING(obj), (size_t)n);
    return 0;
}

static int pk_str(Packer *w, PyObject *obj) {
    if (!PyUnicode_CheckExact(obj)) return -1;
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(obj, &n);
    if (!u || n > INT32_MAX) { PyErr_Clear(); return -1; }
    pk_i32(w, (int32_t)n);
    pk_put(w, u, (size_t)n);
    return 0;
}

static int pk_int(PyObject *obj, int64_t lo, int64_t hi, int64_t *out) {
    if (!PyLong_CheckExact(obj)) return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred()) || v < lo || v > hi) { PyErr_Clear(); return -1; }
    *out = v;
    return 0;
}

/* One pass over the records (sizing when w->p is NULL); -1: not packable. */
static int pk_records(Packer *w, PyObject *seq) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *last_topic = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        if (Py_TYPE(r) != FetchedRecordType) return -1;
        PyObject *topic = PyStructSequence_GET_ITEM(r, 0), *headers = PyStructSequence_GET_ITEM(r, 10);
        int64_t partition, offset, ts, ts_type;
        if (pk_int(PyStructSequence_GET_ITEM(r, 1), INT32_MIN, INT32_MAX, &partition) < 0 ||
            pk_int(PyStructSequence_GET_ITEM(r, 2), INT64_MIN, INT64_MAX, &offset) < 0 ||
            pk_int(PyStructSequence_GET_ITEM(r, 3), INT64_MIN, INT64_MAX, &ts) < 0 ||
            pk_int(PyStructSequence_GET_ITEM(r, 4), INT32_MIN, INT32_MAX, &ts_type) < 0 ||
            PyStructSequence_GET_ITEM(r, 7) != Py_None || !PyTuple_CheckExact(headers) ||
            PyTuple_GET_SIZE(headers) > INT32_MAX) return -1;
        if (last_topic && topic == last_topic) pk_i32(w, -1);
        else if (pk_str(w, topic) < 0) return -1;
        last_topic = topic;
        pk_i32(w, (int32_t)partition);
        pk_i64(w, offset);
        pk_i64(w, ts);
        pk_i32(w, (int32_t)ts_type);
        if (pk_bytes(w, PyStructSequence_GET_ITEM(r, 5), PyStructSequence_GET_ITEM(r, 8)) < 0 ||
            pk_bytes(w, PyStructSequence_GET_ITEM(r, 6), PyStructSequence_GET_ITEM(r, 9)) < 0) return -1;
        pk_i32(w, (int32_t)PyTuple_GET_SIZE(headers));
        for (Py_ssize_t h = 0; h < PyTuple_GET_SIZE(headers); h++) {
            PyObject *pair = PyTuple_GET_ITEM(headers, h);
            if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                pk_str(w, PyTuple_GET_ITEM(pair, 0)) < 0 || pk_bytes(w, PyTuple_GET_ITEM(pair, 1), NULL) < 0)
                return -1;
        }
    }
    return 0;
}

static PyObject *pack_records(PyObject *self, PyObject *records) {
    (void)self;
    PyObject *seq = PySequence_Fast(records, "pack() takes a sequence of records");
    if (!seq) return NULL;
    PyObject *out = NULL;
    Packer sizing = {NULL, 0};
    if (pk_records(&sizing, seq) < 0) { out = Py_NewRef(Py_None); goto done; }
    if (!(out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizing.size))) goto done;
    Packer w = {(uint8_t *)PyBytes_AS_STRING(out), 0};
    /* no Python code ran between the passes (nothing was allocated but `out`, whose
     * allocation runs no finalizer of ours): the same records, the same sizes */
    if (pk_records(&w, seq) < 0 || w.size != sizing.size) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "records changed while pack() was reading them");
        out = NULL;
    }
done:
    Py_DECREF(seq);
    return out;
}

typedef struct { const uint8_t *p, *end; } Unpacker;

static inline int up_get(Unpacker *r, void *dst, size_t n) {
    if ((size_t)(r->end - r->p) < n) return -1;
    memcpy(dst, r->p, n);
    r->p += n;
    return 0;
}
/* The next n bytes (n >= 0 checked by the caller), or NULL if they run past the end. */
static inline const uint8_t *up_take(Unpacker *r, int64_t n) {
    if (n < 0 || (uint64_t)n > (uint64_t)(r->end - r->p)) return NULL;
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

/* One packed record, as places in the buffer (every length checked against its end). */
typedef struct {
    const uint8_t *topic;        /* NULL: the previous record's topic */
    int32_t tlen, partition, ts_type, hcount;
    int64_t offset, ts, klen, vlen;
    const uint8_t *key, *value;
    const uint8_t *headers;      /* the first header; hcount of them, each checked */
} PackedRec;

/* Reads the record at r->p into x and moves past it; -1 if it is malformed. */
static int up_record(Unpacker *r, PackedRec *x) {
    if (up_get(r, &x->tlen, 4) < 0) return -1;
    x->topic = NULL;
    if (x->tlen >= 0 && !(x->topic = up_take(r, x->tlen))) return -1;
    if (up_get(r, &x->partition, 4) < 0 || up_get(r, &x->offset, 8) < 0 || up_get(r, &x->ts, 8) < 0 ||
        up_get(r, &x->ts_type, 4) < 0 || up_get(r, &x->klen, 8) < 0 || x->klen < -1) return -1;
    if (!(x->key = x->klen > 0 ? up_take(r, x->klen) : r->p) || up_get(r, &x->vlen, 8) < 0 || x->vlen < -1) return -1;
    if (!(x->value = x->vlen > 0 ? up_take(r, x->vlen) : r->p) || up_get(r, &x->hcount, 4) < 0 || x->hcount < 0 ||
        x->hcount > r->end - r->p) return -1;
    x->headers = r->p;
    for (int32_t h = 0; h < x->hcount; h++) {
        int32_t hklen;
        int64_t hvlen;
        if (up_get(r, &hklen, 4) < 0 || !up_take(r, hklen) || up_get(r, &hvlen, 8) < 0 || hvlen < -1 ||
            (hvlen > 0 && !up_take(r, hvlen))) return -1;
    }
    return 0;
}

/* The next header of a record up_record read (no checks left to make). */
static inline const uint8_t *next_header(const uint8_t *p, const uint8_t **k, int32_t *klen,
                                         const uint8_t **v, int64_t *vlen) {
    memcpy(klen, p, 4);
    *k = p + 4;
    memcpy(vlen, *k + *klen, 8);
    *v = *k + *klen + 8;
    return *v + (*vlen > 0 ? *vlen : 0);
}

/* The FetchedRecord of x; NULL with an exception set, or with none if a header key is
 * not UTF-8 (malformed). */
static PyObject *fetched_record(const PackedRec *x, PyObject *topic, KeyCache *keys) {
    PyObject *headers = PyTuple_New(x->hcount), *item;
    if (!headers) return NULL;
    const uint8_t *p = x->headers;
    for (int32_t h = 0; h < x->hcount; h++) {
        const uint8_t *hk, *hv;
        int32_t hklen;
        int64_t hvlen;
        p = next_header(p, &hk, &hklen, &hv, &hvlen);
        PyObject *k = header_key(keys, hk, hklen);
        if (!k) { Py_DECREF(headers); return NULL; }
        PyObject *v = nullable_bytes(hv, hvlen);
        PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
        Py_DECREF(k);
        Py_XDECREF(v);
        if (!pair) { Py_DECREF(headers); return NULL; }
        PyObject_GC_UnTrack(pair);
        PyTuple_SET_ITEM(headers, h, pair);
    }
    if (x->hcount) PyObject_GC_UnTrack(headers);
    PyObject *rec = PyStructSequence_New(FetchedRecordType);
    if (!rec) { Py_DECREF(headers); return NULL; }
    PyStructSequence_SET_ITEM(rec, 10, headers);
    PyStructSequence_SET_ITEM(rec, 0, Py_NewRef(topic));
    PyStructSequence_SET_ITEM(rec, 7, Py_NewRef(Py_None));
#define SET(i, expr) do { if (!(item = (expr))) { Py_DECREF(rec); return NULL; } PyStructSequence_SET_ITEM(rec, i, item); } while (0)
    SET(1, PyLong_FromLong(x->partition));
    SET(2, PyLong_FromLongLong(x->offset));
    SET(3, PyLong_FromLongLong(x->ts));
    SET(4, PyLong_FromLong(x->ts_type));
    SET(5, nullable_bytes(x->key, x->klen));
    SET(6, nullable_bytes(x->value, x->vlen));
    SET(8, PyLong_FromLongLong(x->klen));
    SET(9, PyLong_FromLongLong(x->vlen));
#undef SET
    return rec;
}

static PyObject *malformed_at(const Unpacker *r, const Py_buffer *data) {
    return PyErr_Format(PyExc_ValueError, "packed records are malformed at byte %zd of %zd",
                        (Py_ssize_t)(r->p - (const uint8_t *)data->buf), data->len);
}

/* The next record into x, and *topic its topic (a new str where it names one); -1 with
 * an exception set if it is malformed. */
static int up_next(Unpacker *r, const Py_buffer *data, PackedRec *x, PyObject **topic) {
    if (up_record(r, x) < 0) {
        malformed_at(r, data);
        return -1;
    }
    if (x->topic) {
        Py_XSETREF(*topic, PyUnicode_DecodeUTF8((const char *)x->topic, x->tlen, "strict"));
        return *topic ? 0 : -1;
    }
    if (!*topic) {
        malformed_at(r, data);
        return -1;
    }
    return 0;
}

/* unpack(data, start=0, count=-1, topic=None) -> list[FetchedRecord]: `count` records (-1:
 * all) from byte `start`, `topic` being the one of the record before (for a record that
 * names none). */
static PyObject *unpack_records(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"data", "start", "count", "topic", NULL};
    Py_buffer data;
    Py_ssize_t start = 0, count = -1;
    PyObject *topic = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|nnO:unpack", kwlist, &data, &start, &count, &topic)) return NULL;
    if (start < 0 || start > data.len || (topic != Py_None && !PyUnicode_CheckExact(topic))) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "unpack: start %zd out of 0..%zd, or topic not a str", start, data.len);
    }
    Unpacker r = {(const uint8_t *)data.buf + start, (const uint8_t *)data.buf + data.len};
    PyObject *out = PyList_New(0), *result = NULL;
    topic = topic == Py_None ? NULL : Py_NewRef(topic);
    KeyCache keys = {.n = 0};
    if (!out) goto done;
    for (Py_ssize_t i = 0; r.p < r.end && (count < 0 || i < count); i++) {
        PackedRec x;
        if (up_next(&r, &data, &x, &topic) < 0) goto done;
        PyObject *rec = fetched_record(&x, topic, &keys);
        if (!rec) {
            if (!PyErr_Occurred()) malformed_at(&r, &data);
            goto done;
        }
        int failed = PyList_Append(out, rec) < 0;
        Py_DECREF(rec);
        if (failed) goto done;
    }
    result = Py_NewRef(out);
done:
    for (int i = 0; i < keys.n; i++) Py_DECREF(keys.e[i].str);
    Py_XDECREF(topic);
    Py_XDECREF(out);
    PyBuffer_Release(&data);
    return result;
}

/* columns(data) -> (keys, values, topics, starts): per record its key and value (bytes or
 * None), its topic (one str object per run of equal topics) and the byte it starts at
 * (an int64 array's bytes), for unpack(data, start, 1, topic). One pass; no record object. */
static PyObject *packed_columns(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    Unpacker r = {data.buf, (const uint8_t *)data.buf + data.len};
    PyObject *keys = PyList_New(0), *values = PyList_New(0), *topics = PyList_New(0), *topic = NULL;
    PyObject *starts = NULL, *result = NULL;
    int64_t *at = NULL;
    Py_ssize_t n = 0, cap = 0;
    if (!keys || !values || !topics) goto done;
    while (r.p < r.end) {
        const int64_t here = (int64_t)(r.p - (const uint8_t *)data.buf);
        PackedRec x;
        if (up_next(&r, &data, &x, &topic) < 0) goto done;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            int64_t *grown = PyMem_Realloc(at, (size_t)cap * sizeof *at);
            if (!grown) { PyErr_NoMemory(); goto done; }
            at = grown;
        }
        at[n++] = here;
        PyObject *k = nullable_bytes(x.key, x.klen), *v = k ? nullable_bytes(x.value, x.vlen) : NULL;
        int failed = !v || PyList_Append(keys, k) < 0 || PyList_Append(values, v) < 0 ||
                     PyList_Append(topics, topic) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (failed) goto done;
    }
    if (!(starts = PyBytes_FromStringAndSize((const char *)at, n * (Py_ssize_t)sizeof *at))) goto done;
    result = PyTuple_Pack(4, keys, values, topics, starts);
done:
    PyMem_Free(at);
    Py_XDECREF(starts);
    Py_XDECREF(topic);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(topics);
    PyBuffer_Release(&data);
    return result;
}

/* header_values(data, name) -> list: per record, the value (bytes or None) of its first
 * header called `name`, None if it has none; equal values share one bytes object. */
#define SHARED_VALUES 16
static PyObject *header_values(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    const char *name;
    Py_ssize_t name_len;
    if (!PyArg_ParseTuple(args, "y*s#:header_values", &data, &name, &name_len)) return NULL;
    Unpacker r = {data.buf, (const uint8_t *)data.buf + data.len};
    PyObject *out = PyList_New(0), *result = NULL;
    PyObject *shared[SHARED_VALUES];
    int nshared = 0;
    if (!out) goto done;
    while (r.p < r.end) {
        PackedRec x;
        if (up_record(&r, &x) < 0) { malformed_at(&r, &data); goto done; }
        PyObject *v = Py_None;
        const uint8_t *p = x.headers;
        for (int32_t h = 0; h < x.hcount; h++) {
            const uint8_t *hk, *hv;
            int32_t hklen;
            int64_t hvlen;
            p = next_header(p, &hk, &hklen, &hv, &hvlen);
            if (hklen != name_len || memcmp(hk, name, (size_t)name_len) != 0) continue;
            if (hvlen < 0) break;
            v = NULL;
            for (int i = 0; i < nshared && !v; i++)
                if (PyBytes_GET_SIZE(shared[i]) == hvlen && memcmp(PyBytes_AS_STRING(shared[i]), hv, (size_t)hvlen) == 0)
                    v = shared[i];
            if (!v) {
                if (!(v = PyBytes_FromStringAndSize((const char *)hv, (Py_ssize_t)hvlen))) goto done;
                int failed = PyList_Append(out, v) < 0;
                if (nshared < SHARED_VALUES) shared[nshared++] = v; else Py_DECREF(v);
                if (failed) goto done;
                v = NULL;  /* appended */
            }
            break;
        }
        if (v && PyList_Append(out, v) < 0) goto done;
    }
    result = Py_NewRef(out);
done:
    for (int i = 0; i < nshared; i++) Py_DECREF(shared[i]);
    Py_XDECREF(out);
    PyBuffer_Release(&data);
    return result;
}

/* ---------------------------------------------------------------- helpers ------- */

static PyObject *crc32c(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"data", "force_portable", NULL};
    Py_buffer data;
    int force_portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|p:_crc32c", kwlist, &data, &force_portable)) return NULL;
    crc_fn f = force_portable ? crc_portable : crc_update;
    uint32_t crc = ~f(0xFFFFFFFFu, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *set_too_large_error(PyObject *self, PyObject *cls) {
    (void)self;
    Py_XSETREF(TooLargeCls, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS,
     "build(keys, values, timestamp_ms, max_bytes, rows=None) -> list[tuple[bytearray, int]]\n"
     "The records cut into as few RecordBatch v2 buffers of at most max_bytes as possible."},
    {"read", (PyCFunction)(void (*)(void))read_batches, METH_VARARGS | METH_KEYWORDS,
     "read(data, pos, topic, partition, next_offset, check_crcs) -> (records, next_offset, pos, stop)\n"
     "The records of the fetched batches from pos on, up to the first batch left to aiokafka."},
    {"_crc32c", (PyCFunction)(void (*)(void))crc32c, METH_VARARGS | METH_KEYWORDS,
     "_crc32c(data, force_portable=False) -> int: CRC-32C (Castagnoli) of a bytes-like object."},
    {"pack", pack_records, METH_O,
     "pack(records) -> bytes | None: FetchedRecords as one buffer for unpack(); None if any is not packable."},
    {"unpack", (PyCFunction)(void (*)(void))unpack_records, METH_VARARGS | METH_KEYWORDS,
     "unpack(data, start=0, count=-1, topic=None) -> list[FetchedRecord]: what pack() packed."},
    {"columns", packed_columns, METH_O,
     "columns(data) -> (keys, values, topics, starts): pack()'s records as columns."},
    {"header_values", header_values, METH_VARARGS,
     "header_values(data, name) -> list: each packed record's first header `name`, or None."},
    {"set_too_large_error", set_too_large_error, METH_O,
     "Register the exception class build raises as cls(index, size, max_bytes)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_recordbatch",
    "Kafka RecordBatch v2 buffers built and read in C (see fleetcloak.streams.recordbatch).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recordbatch(void) {
    crc_init_tables();
#if HAVE_SSE42_PATH
    if (have_sse42()) crc_update = crc_sse42;
#endif
    if (!FetchedRecordType && !(FetchedRecordType = PyStructSequence_NewType(&fetched_desc))) return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (m && (PyModule_AddIntConstant(m, "BATCH_OVERHEAD", BATCH_OVERHEAD) < 0 ||
              PyModule_AddStringConstant(m, "CRC_IMPL", crc_update == crc_portable ? "portable" : "sse4.2") < 0 ||
              PyModule_AddIntConstant(m, "STOP_END", STOP_END) < 0 ||
              PyModule_AddIntConstant(m, "STOP_FALLBACK", STOP_FALLBACK) < 0 ||
              PyModule_AddIntConstant(m, "STOP_BAD_CRC", STOP_BAD_CRC) < 0 ||
              PyModule_AddObjectRef(m, "FetchedRecord", (PyObject *)FetchedRecordType) < 0))
        Py_CLEAR(m);
    return m;
}
