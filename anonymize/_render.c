/*
 * _render: output records as JSON bytes, one bytes object per record, straight from
 * columns -- what `orjson.dumps(record_dict)` gives for the dicts of
 * transform.ProcessorResult.records() / ControllerResult.records(), without building
 * the dicts. Used by anonymize/render.py; nothing else should call it directly.
 *
 *   records(n, fields, rows, io) -> list[bytes]
 *   groups(values, bounds, prefix, sep, suffix) -> list[bytes]   (see render_groups)
 *
 *   fields: sequence of (name: str, kind: int, column), rendered in this order as the
 *           record's keys. Kinds (render.py names them):
 *             K_OBJ    list of Python values: None, bool, int, float, str, bytes (as
 *                      lowercase hex, the NX convention), or anything with __index__
 *             K_CONST  one Python value for every record
 *             K_I64    int64 buffer
 *             K_F64    float64 buffer, NaN (and +-inf, as orjson) -> null
 *             K_F64INT float64 buffer rendered as an integer (truncated like
 *                      astype(int64)), NaN -> null
 *             K_BOOL   one-byte buffer (numpy bool/uint8): false/true
 *   rows:   None (record r reads row r of every column) or an int64 buffer of n row
 *           indexes into the columns (a subset or permutation, without copying them).
 *   io:     None, or the processor record's IO object, rendered last under the key "io",
 *           by the rules of transform.ProcessorResult.record_io (render.py's io_spec):
 *           (io_offsets, io_id, io_width, io_value, io_nx_len, nx_data,
 *            keep, cell, strip, replace, multipart, (KEEP, OMIT))
 *           io_offsets..nx_data the decoded batch's columns (codecs/batch.py): row i's
 *                               elements are io_*[io_offsets[i] : io_offsets[i+1]], in
 *                               wire order (io_offsets int64, io_id u16, io_width u8
 *                               with 0 = NX, io_value u64, io_nx_len u16); an NX value
 *                               is io_nx_len bytes of nx_data from io_value, as hex
 *           keep (callable)     the tenant's IO filter, io_id -> bool; asked once per
 *                               distinct id of the records, before rendering
 *           cell (uint8[65536]) per IO id: 1 for the cell ids ...
 *           strip (bool, rows)  ... that row i leaves out where strip[i]
 *           replace (dict)      {io_id: list per row}: row i's value of io_id is
 *                               replace[io_id][i] (a Python value, see K_OBJ), or the
 *                               element's own value where it is KEEP, or none (the
 *                               element is left out) where it is OMIT
 *           multipart (list)    (first, others, values) per multi-part identifier whose
 *                               first id passes keep: a row without `first` but with
 *                               one of `others` gets "first": values[i] after its
 *                               elements when values[i] is a str (in list order)
 *           Row i of the io columns is row i of the fields (rows picks both). A record
 *           that names the same IO id twice renders it once, at its first place with its
 *           last value (what a dict built from the pairs holds).
 *
 * Numbers: integers in decimal; floats as the shortest text that reads back to the same
 * double (Python's repr; a fast exact path for values with at most 7 decimals, which
 * is every coordinate here), so json.loads gives back exactly the values of the dicts.
 *
 * SAFETY: every index read from a caller's buffer (rows, io_offsets, NX start/length) or
 * list is checked against the length of what it indexes before use, and a bad one
 * raises ValueError naming it; buffers are checked for their item size. The GIL is held
 * throughout (Python objects are read) and no Python code runs once rendering has
 * started (keep is asked before), so the buffers and lists cannot change under it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { K_OBJ = 0, K_CONST = 1, K_I64 = 2, K_F64 = 3, K_F64INT = 4, K_BOOL = 5 };

/* ------------------------------------------------------------------ output buffer -- */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_grow(Buf *b, Py_ssize_t need) {
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + need) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int reserve(Buf *b, Py_ssize_t need) {
    return (b->len + need <= b->cap) ? 0 : buf_grow(b, need);
}

static inline int put(Buf *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LIT(b, s) put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

static const char DIGITS2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static const uint64_t POW10[20] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull, 100000000ull,
    1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
    1000000000000000000ull, 10000000000000000000ull,
};

/* The writers w_*: text at o, which has room for it (the caller reserved), returning
 * the end; put_* reserve, then write. */

#define U64_MAX_TEXT 20

static inline char *w_u64(char *o, uint64_t v) {
    /* digits: from the bit length (log10(2) ~ 1233/4096), one above for some values */
    int n = ((64 - __builtin_clzll(v | 1)) * 1233) >> 12;
    n += (n < 20 && v >= POW10[n]) ? 1 : 0;
    n += n == 0;
    char *p = o + n;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, DIGITS2 + 2 * d, 2);
    }
    if (v >= 10) {
        memcpy(p - 2, DIGITS2 + 2 * v, 2);
    } else {
        p[-1] = (char)('0' + v);
    }
    return o + n;
}

static inline char *w_i64(char *o, int64_t v) {
    if (v >= 0) return w_u64(o, (uint64_t)v);
    *o++ = '-';
    return w_u64(o, (uint64_t)0 - (uint64_t)v);
}

static inline int put_u64(Buf *b, uint64_t v) {
    if (reserve(b, U64_MAX_TEXT) < 0) return -1;
    b->len = w_u64(b->p + b->len, v) - b->p;
    return 0;
}

static inline int put_i64(Buf *b, int64_t v) {
    if (reserve(b, U64_MAX_TEXT + 1) < 0) return -1;
    b->len = w_i64(b->p + b->len, v) - b->p;
    return 0;
}

/* The shortest round-trip text of v (Python's repr), null for NaN/inf (as orjson).
 * Fast path: v == k / 1e7 exactly for an integer k (IEEE division is correctly rounded,
 * so that double is the one nearest to the decimal k/1e7) and |k| < 1e15: then the
 * decimal k/1e7 with its trailing zeros trimmed has at most 15 significant digits, and
 * no other decimal of at most 15 digits reads back to the same double, so it is the
 * shortest round-trip text (Python may spell small ones with an exponent; same value).
 * k is v * 1e7 rounded half away from zero by hand (no libm call): a k that is off by
 * one fails the exactness check and takes the slow path, so the text stays exact.
 * Returns 1 when written, 0 when the fast path does not apply, -1 on error. */
static inline int put_f64_fast(Buf *b, double v) {
    double scaled = v * 1e7;
    if (!(fabs(scaled) < 1e15)) return 0;  /* NaN and inf too */
    int64_t k = (int64_t)(scaled >= 0 ? scaled + 0.5 : scaled - 0.5);
    if ((double)k / 1e7 != v || (k == 0 && signbit(v))) return 0;
    if (reserve(b, 32) < 0) return -1;  /* -, 8 digits, ., 7 decimals */
    char *o = b->p + b->len;
    uint64_t a = k < 0 ? (uint64_t)0 - (uint64_t)k : (uint64_t)k;
    uint64_t ip = a / 10000000u;
    unsigned fp = (unsigned)(a % 10000000u);
    if (k < 0) *o++ = '-';
    o = w_u64(o, ip);
    *o++ = '.';
    /* 7 decimals: one digit, then three pairs */
    o[0] = (char)('0' + fp / 1000000u);
    unsigned r = fp % 1000000u;
    memcpy(o + 1, DIGITS2 + 2 * (r / 10000u), 2);
    memcpy(o + 3, DIGITS2 + 2 * (r / 100u % 100u), 2);
    memcpy(o + 5, DIGITS2 + 2 * (r % 100u), 2);
    int nd = 7;
    while (nd > 1 && o[nd - 1] == '0') nd--;
    b->len = o + nd - b->p;
    return 1;
}

static int put_f64_slow(Buf *b, double v) {
    if (!isfinite(v)) return PUT_LIT(b, "null");
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return -1;
    int rc = put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return rc;
}

static int put_f64(Buf *b, double v) {
    int fast = put_f64_fast(b, v);
    return fast ? (fast < 0 ? -1 : 0) : put_f64_slow(b, v);
}

static const char HEX[] = "0123456789abcdef";

/* Any byte of x that JSON escapes: a control character (< 0x20), '"' or '\\'? Eight
 * bytes at a time; exact (a byte < n sets its high bit in x - n*ones, with no borrow
 * from the bytes below it, the lowest such byte anyway; bytes >= 0x80 are masked by ~x). */
static inline int escape_in8(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = x ^ (ones * '"'), s = x ^ (ones * '\\');
    return (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((s - ones) & ~s)) & high ? 1 : 0;
}

static int put_str_escaped(Buf *b, const char *s, Py_ssize_t n) {
    if (PUT_LIT(b, "\"") < 0) return -1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (put(b, s + start, i - start) < 0) return -1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        int len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0'; esc[4] = HEX[c >> 4]; esc[5] = HEX[c & 15];
            len = 6;
        }
        if (put(b, esc, len) < 0) return -1;
        start = i + 1;
    }
    if (put(b, s + start, n - start) < 0) return -1;
    return PUT_LIT(b, "\"");
}

/* a JSON string from UTF-8 bytes: copied as they are unless a byte needs escaping */
static int put_str_utf8(Buf *b, const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    uint64_t x;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, s + i, 8);
        if (escape_in8(x)) return put_str_escaped(b, s, n);
    }
    if (i < n) {
        x = 0x2020202020202020ull;  /* spaces: nothing to escape */
        memcpy(&x, s + i, (size_t)(n - i));
        if (escape_in8(x)) return put_str_escaped(b, s, n);
    }
    if (reserve(b, n + 2) < 0) return -1;
    char *o = b->p + b->len;
    *o = '"';
    memcpy(o + 1, s, (size_t)n);
    o[n + 1] = '"';
    b->len += n + 2;
    return 0;
}

static int put_hex(Buf *b, const unsigned char *s, Py_ssize_t n) {
    if (reserve(b, 2 * n + 2) < 0) return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        *o++ = HEX[s[i] >> 4];
        *o++ = HEX[s[i] & 15];
    }
    *o++ = '"';
    b->len += 2 * n + 2;
    return 0;
}

/* any Python value a record holds; `what` names it in errors */
static int put_obj(Buf *b, PyObject *v, const char *what) {
    if (v == Py_None) return PUT_LIT(b, "null");
    if (v == Py_True) return PUT_LIT(b, "true");
    if (v == Py_False) return PUT_LIT(b, "false");
    if (PyUnicode_Check(v)) {
        if (PyUnicode_IS_READY(v) && PyUnicode_IS_COMPACT_ASCII(v))  /* its bytes, as they are */
            return put_str_utf8(b, (const char *)PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v));
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s) return -1;
        return put_str_utf8(b, s, n);
    }
    if (PyLong_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) return -1;
        if (!overflow) return put_i64(b, (int64_t)x);
        PyObject *s = PyObject_Str(v);  /* beyond 64 bits: Python's own digits */
        if (!s) return -1;
        Py_ssize_t n;
        const char *t = PyUnicode_AsUTF8AndSize(s, &n);
        int rc = t ? put(b, t, n) : -1;
        Py_DECREF(s);
        return rc;
    }
    if (PyFloat_Check(v)) return put_f64(b, PyFloat_AS_DOUBLE(v));
    if (PyBytes_Check(v)) return put_hex(b, (const unsigned char *)PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (PyByteArray_Check(v))
        return put_hex(b, (const unsigned char *)PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    if (PyIndex_Check(v)) {  /* numpy integers */
        PyObject *i = PyNumber_Index(v);
        if (!i) return -1;
        int rc = put_obj(b, i, what);
        Py_DECREF(i);
        return rc;
    }
    PyErr_Format(PyExc_TypeError, "_render: %s holds a %.100s, which has no JSON form here", what,
                 Py_TYPE(v)->tp_name);
    return -1;
}

/* ------------------------------------------------------------------ inputs --------- */

typedef struct {
    Py_buffer view;
    int held;
    Py_ssize_t n;      /* items */
} Arr;

static int arr_get(Arr *a, PyObject *obj, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, &a->view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Format(PyExc_TypeError, "_render: %s is not a contiguous buffer", what);
        return -1;
    }
    a->held = 1;
    if (a->view.itemsize != itemsize || a->view.len % itemsize) {
        PyErr_Format(PyExc_ValueError, "_render: %s has items of %zd bytes, expected %zd", what,
                     a->view.itemsize, itemsize);
        return -1;
    }
    a->n = a->view.len / itemsize;
    return 0;
}

static void arr_release(Arr *a) {
    if (a->held) PyBuffer_Release(&a->view);
    a->held = 0;
}

typedef struct {
    char prefix[80];        /* `{"name":` or `,"name":` */
    Py_ssize_t prefix_len;
    const char *name;
    int kind;
    PyObject *obj;          /* K_OBJ: the list; K_CONST: the value (borrowed) */
    Buf text;               /* K_CONST: the value's text, written once */
    Arr arr;                /* buffer kinds */
    Py_ssize_t len;         /* rows the column has */
} Field;

/* The processor route's IO object of a record: its elements, filtered and replaced
 * by the rules of transform.ProcessorResult.record_io, applied element by element. */
typedef struct {
    unsigned first;             /* the first id, whose pseudonym goes out */
    const uint16_t *others;     /* the other parts' ids */
    Py_ssize_t n_others;
    PyObject *values;           /* list per row (owned) */
} Multi;

typedef struct {
    int on;
    Arr offsets, id, width, value, nxlen, nx, cell, strip;
    PyObject *keep, *omit;            /* the KEEP and OMIT sentinels (borrowed) */
    PyObject *rep_cols[255];          /* replacement lists, by slot (owned) */
    int n_rep;
    Multi *multi;
    Py_ssize_t n_multi;
    uint16_t *others;                 /* every Multi's others, in one array */
    uint8_t *rule;                    /* per IO id: RULE_* bits, 0 = not asked */
    uint8_t *slot;                    /* per IO id: 0, or 1 + its slot in rep_cols */
    uint64_t *present, *done;         /* per IO id, one bit: in this record / rendered */
    int64_t *last;                    /* per IO id: its last element in this record (dups) */
} Io;

enum { RULE_SEEN = 1, RULE_PASS = 2, RULE_CELL = 4 };
enum { LEAVE_OUT = 0, OWN_VALUE = 1, REPLACED = 2 };

static inline int bit_test(const uint64_t *bits, unsigned id) { return (int)((bits[id >> 6] >> (id & 63)) & 1); }
static inline void bit_set(uint64_t *bits, unsigned id) { bits[id >> 6] |= (uint64_t)1 << (id & 63); }
static inline void bit_clear(uint64_t *bits, unsigned id) { bits[id >> 6] &= ~((uint64_t)1 << (id & 63)); }

static void io_release(Io *io) {
    Arr *arrs[] = {&io->offsets, &io->id, &io->width, &io->value, &io->nxlen, &io->nx, &io->cell, &io->strip};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) arr_release(arrs[i]);
    for (int s = 0; s < io->n_rep; s++) Py_CLEAR(io->rep_cols[s]);
    for (Py_ssize_t m = 0; m < io->n_multi; m++) Py_CLEAR(io->multi[m].values);
    PyMem_Free(io->multi);
    PyMem_Free(io->others);
    PyMem_Free(io->rule);
    PyMem_Free(io->slot);
    PyMem_Free(io->present);
    PyMem_Free(io->done);
    PyMem_Free(io->last);
    memset(io, 0, sizeof *io);
}

/* an IO id from the caller, 0..65535 */
static int io_id_of(PyObject *o, const char *what) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "_render: %s: %R is not an int", what, o);
        return -1;
    }
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v > 65535) {
        PyErr_Format(PyExc_ValueError, "_render: %s: %ld is not an IO id (0-65535)", what, v);
        return -1;
    }
    return (int)v;
}

/* a list per row, as many rows as needed */
static int io_rows_list(PyObject *col, Py_ssize_t need, const char *what, int id) {
    if (!PyList_Check(col)) {
        PyErr_Format(PyExc_TypeError, "_render: %s of IO %d is not a list", what, id);
        return -1;
    }
    if (PyList_GET_SIZE(col) < need) {
        PyErr_Format(PyExc_ValueError, "_render: %s of IO %d has %zd rows, %zd needed", what, id,
                     PyList_GET_SIZE(col), need);
        return -1;
    }
    return 0;
}

static int io_parse_replace(Io *io, PyObject *replace, Py_ssize_t need) {
    if (!PyDict_Check(replace)) {
        PyErr_SetString(PyExc_TypeError, "_render: io replace is a dict {io_id: list}");
        return -1;
    }
    if (PyDict_GET_SIZE(replace) > 255) {
        PyErr_SetString(PyExc_ValueError, "_render: io replace has more than 255 ids");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *col;
    while (PyDict_Next(replace, &pos, &key, &col)) {
        int id = io_id_of(key, "io replace");
        if (id < 0 || io_rows_list(col, need, "io replace", id) < 0) return -1;
        Py_INCREF(col);
        io->rep_cols[io->n_rep++] = col;
        io->slot[id] = (uint8_t)io->n_rep;
    }
    return 0;
}

static int io_parse_multipart(Io *io, PyObject *multipart, Py_ssize_t need) {
    static const char *form = "_render: io multipart is a list of (first: int, others: tuple, values: list)";
    if (!PyList_Check(multipart)) {
        PyErr_SetString(PyExc_TypeError, form);
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(multipart), n_others = 0;
    for (Py_ssize_t m = 0; m < n; m++) {
        PyObject *item = PyList_GET_ITEM(multipart, m);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3 || !PyTuple_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, form);
            return -1;
        }
        n_others += PyTuple_GET_SIZE(PyTuple_GET_ITEM(item, 1));
    }
    io->multi = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Multi));
    io->others = PyMem_Malloc(n_others ? (size_t)n_others * sizeof(uint16_t) : 1);
    if (!io->multi || !io->others) { PyErr_NoMemory(); return -1; }
    uint16_t *o = io->others;
    for (Py_ssize_t m = 0; m < n; m++) {
        PyObject *item = PyList_GET_ITEM(multipart, m), *others = PyTuple_GET_ITEM(item, 1);
        Multi *mp = &io->multi[m];
        int first = io_id_of(PyTuple_GET_ITEM(item, 0), "io multipart first id");
        if (first < 0 || io_rows_list(PyTuple_GET_ITEM(item, 2), need, "io multipart values", first) < 0) return -1;
        mp->first = (unsigned)first;
        mp->others = o;
        mp->n_others = PyTuple_GET_SIZE(others);
        for (Py_ssize_t j = 0; j < mp->n_others; j++) {
            int id = io_id_of(PyTuple_GET_ITEM(others, j), "io multipart other id");
            if (id < 0) return -1;
            *o++ = (uint16_t)id;
        }
        mp->values = PyTuple_GET_ITEM(item, 2);
        Py_INCREF(mp->values);
        io->n_multi = m + 1;
    }
    return 0;
}

/* The filter's verdict on every distinct IO id of the records, asked once per id
 * before rendering (so that no Python code runs while rendering). */
static int io_ask_filter(Io *io, PyObject *keep_fn, const int64_t *row, Py_ssize_t n) {
    if (!PyCallable_Check(keep_fn)) {
        PyErr_SetString(PyExc_TypeError, "_render: io keep is a callable io_id -> bool");
        return -1;
    }
    const int64_t *off = io->offsets.view.buf;
    const uint16_t *ids = io->id.view.buf;
    const uint8_t *cell = io->cell.view.buf;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t i = row ? (Py_ssize_t)row[r] : r;
        for (int64_t e = off[i]; e < off[i + 1]; e++) {
            unsigned id = ids[e];
            if (io->rule[id]) continue;
            PyObject *verdict = PyObject_CallFunction(keep_fn, "I", id);
            if (!verdict) return -1;
            int pass = PyObject_IsTrue(verdict);
            Py_DECREF(verdict);
            if (pass < 0) return -1;
            io->rule[id] = (uint8_t)(RULE_SEEN | (pass ? RULE_PASS : 0) | (cell[id] ? RULE_CELL : 0));
        }
    }
    return 0;
}

/* `need`: rows the io columns must have (every rows[r] below it) */
static int io_parse(Io *io, PyObject *spec, const int64_t *row, Py_ssize_t n, Py_ssize_t need) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 12) {
        PyErr_SetString(PyExc_TypeError, "_render: io is a tuple of 12 items (see _render.c)");
        return -1;
    }
    PyObject *o[12];
    for (int i = 0; i < 12; i++) o[i] = PyTuple_GET_ITEM(spec, i);
    if (arr_get(&io->offsets, o[0], 8, "io_offsets") < 0 || arr_get(&io->id, o[1], 2, "io_id") < 0 ||
        arr_get(&io->width, o[2], 1, "io_width") < 0 || arr_get(&io->value, o[3], 8, "io_value") < 0 ||
        arr_get(&io->nxlen, o[4], 2, "io_nx_len") < 0 || arr_get(&io->nx, o[5], 1, "nx_data") < 0 ||
        arr_get(&io->cell, o[7], 1, "io cell") < 0 || arr_get(&io->strip, o[8], 1, "io strip") < 0)
        return -1;
    if (io->width.n != io->id.n || io->value.n != io->id.n || io->nxlen.n != io->id.n) {
        PyErr_SetString(PyExc_ValueError, "_render: io_id, io_width, io_value, io_nx_len differ in length");
        return -1;
    }
    if (io->cell.n != 65536) {
        PyErr_SetString(PyExc_ValueError, "_render: io cell is a table of 65536 bytes, one per IO id");
        return -1;
    }
    if (io->offsets.n < need + 1 || io->strip.n < need) {
        PyErr_Format(PyExc_ValueError, "_render: io_offsets / io strip cover fewer than the %zd rows needed", need);
        return -1;
    }
    const int64_t *off = io->offsets.view.buf;
    for (Py_ssize_t i = 0; i + 1 < io->offsets.n; i++)
        if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > io->id.n) {
            PyErr_Format(PyExc_ValueError, "_render: io_offsets[%zd:%zd] is not a range of elements", i, i + 2);
            return -1;
        }
    if (!PyTuple_Check(o[11]) || PyTuple_GET_SIZE(o[11]) != 2) {
        PyErr_SetString(PyExc_TypeError, "_render: the last io item is the (KEEP, OMIT) sentinels");
        return -1;
    }
    io->keep = PyTuple_GET_ITEM(o[11], 0);
    io->omit = PyTuple_GET_ITEM(o[11], 1);
    io->rule = PyMem_Calloc(65536, 1);
    io->slot = PyMem_Calloc(65536, 1);
    io->present = PyMem_Calloc(1024, sizeof(uint64_t));
    io->done = PyMem_Calloc(1024, sizeof(uint64_t));
    if (!io->rule || !io->slot || !io->present || !io->done) { PyErr_NoMemory(); return -1; }
    if (io_ask_filter(io, o[6], row, n) < 0 || io_parse_replace(io, o[9], need) < 0 ||
        io_parse_multipart(io, o[10], need) < 0)
        return -1;
    io->on = 1;
    return 0;
}

/* one element's own value (fixed-size: its integer; NX: its bytes as hex) */
static int put_element_value(Buf *b, Io *io, int64_t e) {
    const uint8_t *width = io->width.view.buf;
    const uint64_t *value = io->value.view.buf;
    if (width[e] != 0) return put_u64(b, value[e]);
    const uint16_t *nxlen = io->nxlen.view.buf;
    uint64_t start = value[e], len = nxlen[e];
    if (start > (uint64_t)io->nx.n || len > (uint64_t)io->nx.n - start) {
        PyErr_Format(PyExc_ValueError, "_render: NX element %lld lies outside nx_data", (long long)e);
        return -1;
    }
    return put_hex(b, (const unsigned char *)io->nx.view.buf + start, (Py_ssize_t)len);
}

/* What row i's IO `id` becomes (record_io): left out (the filter; a cell id of a
 * stripped row; OMIT), its own value (no replacement; KEEP), or *rep. */
static inline int element_fate(const Io *io, unsigned id, Py_ssize_t i, PyObject **rep) {
    uint8_t rule = io->rule[id];
    if (!(rule & RULE_PASS)) return LEAVE_OUT;
    if ((rule & RULE_CELL) && ((const uint8_t *)io->strip.view.buf)[i]) return LEAVE_OUT;
    uint8_t slot = io->slot[id];
    if (!slot) return OWN_VALUE;
    PyObject *v = PyList_GET_ITEM(io->rep_cols[slot - 1], i);
    if (v == io->omit) return LEAVE_OUT;
    if (v == io->keep) return OWN_VALUE;
    *rep = v;
    return REPLACED;
}

/* Every IO id's key text, "65535": at most 8 bytes, written once at import: a key
 * is then one 8-byte copy (after the comma), not a number conversion per element. */
static char io_key_text[65536][8];
static uint8_t io_key_len[65536];

static void io_keys_init(void) {
    for (unsigned id = 0; id < 65536; id++) {
        char t[16], *o = t;
        *o++ = '"';
        o = w_u64(o, id);
        *o++ = '"';
        *o++ = ':';
        memcpy(io_key_text[id], t, 8);  /* the unused tail bytes are never counted */
        io_key_len[id] = (uint8_t)(o - t);
    }
}

static inline int put_key(Buf *b, int first, unsigned id) {
    if (reserve(b, 9) < 0) return -1;  /* ,"65535": */
    char *o = b->p + b->len;
    if (!first) *o++ = ',';
    memcpy(o, io_key_text[id], 8);
    b->len = (o - b->p) + io_key_len[id];
    return 0;
}

/* row i's IO object */
static int put_io(Buf *b, Io *io, Py_ssize_t i) {
    const int64_t *off = io->offsets.view.buf;
    const uint16_t *ids = io->id.view.buf;
    int64_t e0 = off[i], e1 = off[i + 1];
    int dup = 0;  /* a repeated id (rare): then first place, last value */
    for (int64_t e = e0; e < e1; e++) {
        unsigned id = ids[e];
        dup |= bit_test(io->present, id);
        bit_set(io->present, id);
    }
    if (dup) {
        if (!io->last && !(io->last = PyMem_Malloc(65536 * sizeof(int64_t)))) { PyErr_NoMemory(); return -1; }
        for (int64_t e = e0; e < e1; e++) io->last[ids[e]] = e;
    }
    if (PUT_LIT(b, "{") < 0) return -1;
    int first = 1;
    for (int64_t e = e0; e < e1; e++) {
        unsigned id = ids[e];
        int64_t src = e;
        if (dup) {
            if (bit_test(io->done, id)) continue;
            bit_set(io->done, id);
            src = io->last[id];
        }
        PyObject *rep = NULL;
        int fate = element_fate(io, id, i, &rep);
        if (fate == LEAVE_OUT) continue;
        if (put_key(b, first, id) < 0) return -1;
        first = 0;
        if (fate == REPLACED ? put_obj(b, rep, "an IO replacement") : put_element_value(b, io, src)) return -1;
    }
    /* a multi-part identifier whose first part is missing but another part is there */
    for (Py_ssize_t m = 0; m < io->n_multi; m++) {
        const Multi *mp = &io->multi[m];
        if (bit_test(io->present, mp->first)) continue;
        int other = 0;
        for (Py_ssize_t j = 0; j < mp->n_others && !other; j++) other = bit_test(io->present, mp->others[j]);
        PyObject *v = PyList_GET_ITEM(mp->values, i);
        if (!other || !PyUnicode_Check(v)) continue;
        if (put_key(b, first, mp->first) < 0 || put_obj(b, v, "an IO pseudonym") < 0) return -1;
        first = 0;
    }
    for (int64_t e = e0; e < e1; e++) {
        bit_clear(io->present, ids[e]);
        bit_clear(io->done, ids[e]);
    }
    return PUT_LIT(b, "}");
}

/* ------------------------------------------------------------------ records() ------ */

static int field_parse(Field *f, PyObject *spec, int index) {
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3) {
        PyErr_SetString(PyExc_TypeError, "_render: a field is a (name, kind, column) tuple");
        return -1;
    }
    PyObject *name = PyTuple_GET_ITEM(spec, 0), *kind = PyTuple_GET_ITEM(spec, 1);
    f->obj = PyTuple_GET_ITEM(spec, 2);
    Py_ssize_t n;
    f->name = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &n) : NULL;
    if (!f->name) {
        PyErr_SetString(PyExc_TypeError, "_render: a field name is a str");
        return -1;
    }
    if (n == 0 || n > 64) {
        PyErr_Format(PyExc_ValueError, "_render: field name %R must have 1-64 characters", name);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)f->name[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            PyErr_Format(PyExc_ValueError, "_render: field name %R needs escaping; use plain ASCII", name);
            return -1;
        }
    }
    f->prefix[0] = index ? ',' : '{';
    f->prefix[1] = '"';
    memcpy(f->prefix + 2, f->name, (size_t)n);
    f->prefix[n + 2] = '"';
    f->prefix[n + 3] = ':';
    f->prefix_len = n + 4;
    f->kind = (int)PyLong_AsLong(kind);
    if (f->kind == -1 && PyErr_Occurred()) return -1;
    switch (f->kind) {
    case K_OBJ:
        if (!PyList_Check(f->obj)) {
            PyErr_Format(PyExc_TypeError, "_render: field %s: a K_OBJ column is a list", f->name);
            return -1;
        }
        f->len = PyList_GET_SIZE(f->obj);
        return 0;
    case K_CONST:
        f->len = PY_SSIZE_T_MAX;
        return put_obj(&f->text, f->obj, f->name);
    case K_I64: case K_F64: case K_F64INT:
        if (arr_get(&f->arr, f->obj, 8, f->name) < 0) return -1;
        f->len = f->arr.n;
        return 0;
    case K_BOOL:
        if (arr_get(&f->arr, f->obj, 1, f->name) < 0) return -1;
        f->len = f->arr.n;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "_render: field %s has an unknown kind %d", f->name, f->kind);
    return -1;
}

/* A value the fast path takes (a raw position: 7 decimals) is written at once. The
 * others (cell centres: up to 17 digits) take repr's slow path, ~1 us a value, and
 * repeat (a parked vehicle, a grid cell, a fleet's records interleaved in a batch, the
 * same fleet's cells batch after batch): a direct-mapped cache of their texts, keyed by
 * the value's bits, kept from call to call (a text depends on the value only; the GIL,
 * held throughout records(), serialises its users). Raw positions no longer pass
 * through it (measured: 1,506 -> 1,346 ns a processor record, medians of 15). */
#define F64_TEXTS_BITS 12
struct F64Text {
    uint64_t bits;
    uint8_t len;            /* 0: empty */
    char txt[31];
};
static struct F64Text f64_texts[1 << F64_TEXTS_BITS];

static int put_f64_cached(Buf *b, double v) {
    int fast = put_f64_fast(b, v);  /* 7 decimals or fewer (raw positions): cheaper than the cache */
    if (fast) return fast < 0 ? -1 : 0;
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    struct F64Text *t = &f64_texts[(bits * 0x9E3779B97F4A7C15ull) >> (64 - F64_TEXTS_BITS)];
    if (t->len && t->bits == bits) {
        if (reserve(b, sizeof t->txt) < 0) return -1;
        memcpy(b->p + b->len, t->txt, sizeof t->txt);  /* whole: a fixed-size copy */
        b->len += t->len;
        return 0;
    }
    Py_ssize_t start = b->len;
    if (put_f64_slow(b, v) < 0) return -1;
    Py_ssize_t n = b->len - start;
    if (n <= (Py_ssize_t)sizeof t->txt) {
        memcpy(t->txt, b->p + start, (size_t)n);
        t->len = (uint8_t)n;
        t->bits = bits;
    }
    return 0;
}

/* FIXED_ROOM: room for any fixed-size value (I64, F64INT, BOOL; a cached F64 text) */
#define FIXED_ROOM 32

static int put_field(Buf *b, Field *f, Py_ssize_t i) {
    if (reserve(b, f->prefix_len + FIXED_ROOM) < 0) return -1;
    if (f->prefix_len <= 32)  /* the usual short key: a fixed-size copy */
        memcpy(b->p + b->len, f->prefix, 32);
    else
        memcpy(b->p + b->len, f->prefix, (size_t)f->prefix_len);
    b->len += f->prefix_len;
    char *o = b->p + b->len;
    switch (f->kind) {
    case K_OBJ: return put_obj(b, PyList_GET_ITEM(f->obj, i), f->name);
    case K_CONST: return put(b, f->text.p, f->text.len);
    case K_I64: o = w_i64(o, ((const int64_t *)f->arr.view.buf)[i]); break;
    case K_F64: return put_f64_cached(b, ((const double *)f->arr.view.buf)[i]);
    case K_F64INT: {
        double v = ((const double *)f->arr.view.buf)[i];
        if (isnan(v)) {
            memcpy(o, "null", 4);
            o += 4;
        } else if (fabs(v) < 9.2e18) {
            o = w_i64(o, (int64_t)v);
        } else {
            PyErr_Format(PyExc_ValueError, "_render: field %s: %g is not a 64-bit integer", f->name, v);
            return -1;
        }
        break;
    }
    case K_BOOL:
        if (((const uint8_t *)f->arr.view.buf)[i]) {
            memcpy(o, "true", 4);
            o += 4;
        } else {
            memcpy(o, "false", 5);
            o += 5;
        }
        break;
    }
    b->len = o - b->p;
    return 0;
}

static PyObject *render_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t n;
    PyObject *fields_obj, *rows_obj, *io_obj;
    if (!PyArg_ParseTuple(args, "nOOO:records", &n, &fields_obj, &rows_obj, &io_obj)) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "_render: n = %zd", n);
    PyObject *seq = PySequence_Fast(fields_obj, "_render: fields is a sequence");
    if (!seq) return NULL;
    Py_ssize_t nf = PySequence_Fast_GET_SIZE(seq);
    Field *fields = PyMem_Calloc(nf ? (size_t)nf : 1, sizeof(Field));
    Io io;
    memset(&io, 0, sizeof io);
    Arr rows;
    memset(&rows, 0, sizeof rows);
    Buf b = {NULL, 0, 0};
    PyObject *out = NULL;
    if (!fields) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < nf; k++)
        if (field_parse(&fields[k], PySequence_Fast_GET_ITEM(seq, k), (int)k) < 0) goto done;
    const int64_t *row = NULL;
    Py_ssize_t need = n;  /* rows each column must have */
    if (rows_obj != Py_None) {
        if (arr_get(&rows, rows_obj, 8, "rows") < 0) goto done;
        if (rows.n != n) {
            PyErr_Format(PyExc_ValueError, "_render: rows has %zd items for %zd records", rows.n, n);
            goto done;
        }
        row = rows.view.buf;
        need = 0;
        for (Py_ssize_t r = 0; r < n; r++) {
            if (row[r] < 0) {
                PyErr_Format(PyExc_ValueError, "_render: rows[%zd] is negative", r);
                goto done;
            }
            if (row[r] + 1 > need) need = (Py_ssize_t)row[r] + 1;
        }
    }
    /* io first: its filter is Python code, run before the columns' lengths are checked */
    if (io_obj != Py_None && io_parse(&io, io_obj, row, n, need) < 0) goto done;
    for (Py_ssize_t k = 0; k < nf; k++)
        if (fields[k].len < need) {
            PyErr_Format(PyExc_ValueError, "_render: field %s has %zd rows, %zd needed", fields[k].name,
                         fields[k].len, need);
            goto done;
        }
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t i = row ? (Py_ssize_t)row[r] : r;
        b.len = 0;
        if (nf == 0 && PUT_LIT(&b, "{") < 0) goto fail;
        for (Py_ssize_t k = 0; k < nf; k++)
            if (put_field(&b, &fields[k], i) < 0) goto fail;
        if (io.on) {
            if ((nf ? PUT_LIT(&b, ",\"io\":") : PUT_LIT(&b, "\"io\":")) < 0) goto fail;
            if (put_io(&b, &io, i) < 0) goto fail;
        }
        if (PUT_LIT(&b, "}") < 0) goto fail;
        PyObject *one = PyBytes_FromStringAndSize(b.p, b.len);
        if (!one) goto fail;
        PyList_SET_ITEM(out, r, one);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (Py_ssize_t k = 0; fields && k < nf; k++) {
        arr_release(&fields[k].arr);
        PyMem_Free(fields[k].text.p);
    }
    PyMem_Free(fields);
    io_release(&io);
    arr_release(&rows);
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return out;
}

/* groups(values, bounds, prefix, sep, suffix) -> list[bytes]
 * values: list of bytes; bounds: int64 buffer b0 <= b1 <= ... <= bk (b0 >= 0, bk <=
 * len(values)); group g is prefix + sep.join(values[b_g : b_g+1]) + suffix. One
 * allocation and a memcpy per part: the per-packet output mode's
 * b'{"records":[' + b",".join(...) + b"]}" per packet, without a Python loop. */
static PyObject *render_groups(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values, *bounds_o;
    Py_buffer pre, sep, suf, bb = {0};
    if (!PyArg_ParseTuple(args, "O!Oy*y*y*:groups", &PyList_Type, &values, &bounds_o, &pre, &sep, &suf)) return NULL;
    PyObject *out = NULL;
    if (PyObject_GetBuffer(bounds_o, &bb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
    if (bb.itemsize != 8) { PyErr_SetString(PyExc_TypeError, "groups: bounds must be int64"); goto done; }
    const int64_t *b = bb.buf;
    const Py_ssize_t nb = bb.len / 8, nv = PyList_GET_SIZE(values);
    for (Py_ssize_t g = 0; g < nb; g++) {
        if (b[g] < 0 || b[g] > nv || (g && b[g] < b[g - 1])) {
            PyErr_Format(PyExc_ValueError, "groups: bounds[%zd] = %lld is out of order or outside the %zd values",
                         g, (long long)b[g], nv);
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < nv; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(values, i))) {
            PyErr_Format(PyExc_TypeError, "groups: values[%zd] is not bytes", i);
            goto done;
        }
    }
    out = PyList_New(nb > 0 ? nb - 1 : 0);
    if (!out) goto done;
    for (Py_ssize_t g = 0; g + 1 < nb; g++) {
        Py_ssize_t len = pre.len + suf.len;
        for (int64_t i = b[g]; i < b[g + 1]; i++) len += PyBytes_GET_SIZE(PyList_GET_ITEM(values, i)) + (i > b[g] ? sep.len : 0);
        PyObject *o = PyBytes_FromStringAndSize(NULL, len);
        if (!o) { Py_CLEAR(out); goto done; }
        char *p = PyBytes_AS_STRING(o);
        memcpy(p, pre.buf, pre.len); p += pre.len;
        for (int64_t i = b[g]; i < b[g + 1]; i++) {
            if (i > b[g]) { memcpy(p, sep.buf, sep.len); p += sep.len; }
            PyObject *v = PyList_GET_ITEM(values, i);
            memcpy(p, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)); p += PyBytes_GET_SIZE(v);
        }
        memcpy(p, suf.buf, suf.len);
        PyList_SET_ITEM(out, g, o);
    }
done:
    if (bb.obj) PyBuffer_Release(&bb);
    PyBuffer_Release(&pre);
    PyBuffer_Release(&sep);
    PyBuffer_Release(&suf);
    return out;
}

static PyMethodDef methods[] = {
    {"records", render_records, METH_VARARGS,
     "records(n, fields, rows, io) -> list[bytes]: one JSON object per record (see _render.c)"},
    {"groups", render_groups, METH_VARARGS,
     "groups(values, bounds, prefix, sep, suffix) -> list[bytes]: prefix + sep.join(group) + suffix per group"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_render", "Output records as JSON bytes.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__render(void) {
    io_keys_init();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "K_OBJ", K_OBJ) < 0 || PyModule_AddIntConstant(m, "K_CONST", K_CONST) < 0 ||
        PyModule_AddIntConstant(m, "K_I64", K_I64) < 0 || PyModule_AddIntConstant(m, "K_F64", K_F64) < 0 ||
        PyModule_AddIntConstant(m, "K_F64INT", K_F64INT) < 0 || PyModule_AddIntConstant(m, "K_BOOL", K_BOOL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
