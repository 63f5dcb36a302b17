/*
 * _render: output records as JSON bytes, one bytes object per record, straight from
 * columns -- what `orjson.dumps(record_dict)` gives for the dicts of
 * transform.ProcessorResult.records() / ControllerResult.records(), without building
 * the dicts. Used by anonymize/render.py; nothing else should call it directly.
 *
 *   records(n, fields, rows, io) -> list[bytes]
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
 *   io:     None, or the record's IO object, rendered last under the key "io":
 *           (el, bounds, io_id, io_width, io_value, io_nx_len, nx_data,
 *            rep_pos, rep_val, extra_rows, extra_items)
 *           el (int64)          batch element indexes of the kept elements, record after
 *                               record; record r owns el[bounds[r] : bounds[r+1]]
 *           bounds (int64, n+1) non-decreasing, bounds[0] == 0, bounds[n] <= len(el)
 *           io_id u16, io_width u8 (0 = NX), io_value u64 (NX: start in nx_data),
 *           io_nx_len u16       the decoded batch's element columns (codecs/batch.py)
 *           nx_data (bytes)     the NX bytes
 *           rep_pos (int64)     strictly increasing positions into `el` whose value is
 *                               replaced by rep_val[k] (a Python value, see K_OBJ)
 *           extra_rows (int64)  non-decreasing record numbers that get one more IO
 *           extra_items (list)  member each, (key: str, value), after their elements
 *           A record that names the same IO id twice renders it once, at its first
 *           place with its last value (what a dict built from the pairs holds).
 *
 * Numbers: integers in decimal; floats as the shortest text that reads back to the same
 * double (Python's repr; a fast exact path for values with at most 7 decimals, which
 * is every coordinate here), so json.loads gives back exactly the values of the dicts.
 *
 * SAFETY: every index read from a caller's buffer (rows, el, bounds, rep_pos, extra_rows,
 * NX start/length) is checked against the length of what it indexes before use, and a
 * bad one raises ValueError naming it; buffers are checked for their item size. The
 * GIL is held throughout (Python objects are read), so the buffers cannot change.
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

/* decimal of v into the end of tmp[24], returns the start */
static inline char *u64_text(uint64_t v, char *end) {
    char *p = end;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, DIGITS2 + 2 * d, 2);
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, DIGITS2 + 2 * v, 2);
    } else {
        *--p = (char)('0' + v);
    }
    return p;
}

static inline int put_u64(Buf *b, uint64_t v) {
    char tmp[24];
    char *s = u64_text(v, tmp + sizeof tmp);
    return put(b, s, tmp + sizeof tmp - s);
}

static inline int put_i64(Buf *b, int64_t v) {
    if (v < 0) {
        if (PUT_LIT(b, "-") < 0) return -1;
        return put_u64(b, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(b, (uint64_t)v);
}

/* The shortest round-trip text of v (Python's repr), null for NaN/inf (as orjson).
 * Fast path: v == k / 1e7 exactly for an integer k (IEEE division is correctly rounded,
 * so that double is the one nearest to the decimal k/1e7) and |k| < 1e15: then the
 * decimal k/1e7 with its trailing zeros trimmed has at most 15 significant digits, and
 * no other decimal of at most 15 digits reads back to the same double, so it is the
 * shortest round-trip text (Python may spell small ones with an exponent; same value). */
static int put_f64(Buf *b, double v) {
    if (!isfinite(v)) return PUT_LIT(b, "null");
    double scaled = v * 1e7;
    if (fabs(scaled) < 1e15) {
        int64_t k = (int64_t)llround(scaled);
        if ((double)k / 1e7 == v && !(k == 0 && signbit(v))) {
            uint64_t a = k < 0 ? (uint64_t)0 - (uint64_t)k : (uint64_t)k;
            uint64_t ip = a / 10000000u, fp = a % 10000000u;
            if (k < 0 && PUT_LIT(b, "-") < 0) return -1;
            if (put_u64(b, ip) < 0) return -1;
            char frac[8];
            int nd = 7;
            for (int i = 6; i >= 0; i--) { frac[i] = (char)('0' + fp % 10); fp /= 10; }
            while (nd > 1 && frac[nd - 1] == '0') nd--;
            if (PUT_LIT(b, ".") < 0) return -1;
            return put(b, frac, nd);
        }
    }
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return -1;
    int rc = put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return rc;
}

static const char HEX[] = "0123456789abcdef";

/* a JSON string from UTF-8 bytes */
static int put_str_utf8(Buf *b, const char *s, Py_ssize_t n) {
    if (reserve(b, n + 2) < 0) return -1;
    b->p[b->len++] = '"';
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
    Arr arr;                /* buffer kinds */
    Py_ssize_t len;         /* rows the column has */
    struct F64Text *texts;  /* K_F64: texts written, by value (see put_f64_cached) */
} Field;

typedef struct {
    int on;
    Arr el, bounds, id, width, value, nxlen, nx, rep_pos, extra_rows;
    PyObject *rep_val, *extra_items;   /* borrowed lists */
    uint32_t *stamp;                   /* per IO id: the record that last saw it */
    int32_t *last;                     /* per IO id: its last position in that record */
} Io;

static void io_release(Io *io) {
    Arr *arrs[] = {&io->el, &io->bounds, &io->id, &io->width, &io->value, &io->nxlen, &io->nx,
                   &io->rep_pos, &io->extra_rows};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) arr_release(arrs[i]);
    PyMem_Free(io->stamp);
    PyMem_Free(io->last);
    io->stamp = NULL;
    io->last = NULL;
}

static int io_parse(Io *io, PyObject *spec) {
    PyObject *o[11];
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 11) {
        PyErr_SetString(PyExc_TypeError, "_render: io is a tuple of 11 items (see _render.c)");
        return -1;
    }
    for (int i = 0; i < 11; i++) o[i] = PyTuple_GET_ITEM(spec, i);
    if (arr_get(&io->el, o[0], 8, "io el") < 0 || arr_get(&io->bounds, o[1], 8, "io bounds") < 0 ||
        arr_get(&io->id, o[2], 2, "io_id") < 0 || arr_get(&io->width, o[3], 1, "io_width") < 0 ||
        arr_get(&io->value, o[4], 8, "io_value") < 0 || arr_get(&io->nxlen, o[5], 2, "io_nx_len") < 0 ||
        arr_get(&io->nx, o[6], 1, "nx_data") < 0 || arr_get(&io->rep_pos, o[7], 8, "io rep_pos") < 0 ||
        arr_get(&io->extra_rows, o[9], 8, "io extra_rows") < 0)
        return -1;
    if (!PyList_Check(o[8]) || PyList_GET_SIZE(o[8]) != io->rep_pos.n) {
        PyErr_SetString(PyExc_ValueError, "_render: io rep_val is a list as long as rep_pos");
        return -1;
    }
    if (!PyList_Check(o[10]) || PyList_GET_SIZE(o[10]) != io->extra_rows.n) {
        PyErr_SetString(PyExc_ValueError, "_render: io extra_items is a list as long as extra_rows");
        return -1;
    }
    io->rep_val = o[8];
    io->extra_items = o[10];
    if (io->width.n != io->id.n || io->value.n != io->id.n || io->nxlen.n != io->id.n) {
        PyErr_SetString(PyExc_ValueError, "_render: io_id, io_width, io_value, io_nx_len differ in length");
        return -1;
    }
    const int64_t *el = io->el.view.buf;
    for (Py_ssize_t j = 0; j < io->el.n; j++)
        if (el[j] < 0 || el[j] >= io->id.n) {
            PyErr_Format(PyExc_ValueError, "_render: io el[%zd] = %lld is not an element of the batch", j,
                         (long long)el[j]);
            return -1;
        }
    const int64_t *rp = io->rep_pos.view.buf;
    for (Py_ssize_t k = 0; k < io->rep_pos.n; k++)
        if (rp[k] < 0 || rp[k] >= io->el.n || (k && rp[k] <= rp[k - 1])) {
            PyErr_Format(PyExc_ValueError, "_render: io rep_pos[%zd] is out of range or not increasing", k);
            return -1;
        }
    io->stamp = PyMem_Calloc(65536, sizeof(uint32_t));
    io->last = PyMem_Malloc(65536 * sizeof(int32_t));
    if (!io->stamp || !io->last) { PyErr_NoMemory(); return -1; }
    io->on = 1;
    return 0;
}

static int io_check_rows(Io *io, Py_ssize_t n) {
    if (io->bounds.n != n + 1) {
        PyErr_Format(PyExc_ValueError, "_render: io bounds has %zd items for %zd records", io->bounds.n, n);
        return -1;
    }
    const int64_t *bd = io->bounds.view.buf;
    if (bd[0] != 0 || bd[n] > io->el.n) {
        PyErr_SetString(PyExc_ValueError, "_render: io bounds must start at 0 and end within el");
        return -1;
    }
    for (Py_ssize_t r = 0; r < n; r++)
        if (bd[r + 1] < bd[r]) {
            PyErr_Format(PyExc_ValueError, "_render: io bounds decrease at %zd", r);
            return -1;
        }
    const int64_t *er = io->extra_rows.view.buf;
    for (Py_ssize_t k = 0; k < io->extra_rows.n; k++)
        if (er[k] < 0 || er[k] >= n || (k && er[k] < er[k - 1])) {
            PyErr_Format(PyExc_ValueError, "_render: io extra_rows[%zd] is out of range or decreasing", k);
            return -1;
        }
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

static int put_key(Buf *b, int first, unsigned id) {
    if (!first && PUT_LIT(b, ",") < 0) return -1;
    if (PUT_LIT(b, "\"") < 0 || put_u64(b, id) < 0) return -1;
    return PUT_LIT(b, "\":");
}

/* record r's IO object; *rep (cursor into rep_pos) and *xr (into extra_rows) advance */
static int put_io(Buf *b, Io *io, Py_ssize_t r, Py_ssize_t *rep, Py_ssize_t *xr, uint32_t gen) {
    const int64_t *bd = io->bounds.view.buf, *el = io->el.view.buf, *rp = io->rep_pos.view.buf;
    const uint16_t *ids = io->id.view.buf;
    int64_t j0 = bd[r], j1 = bd[r + 1];
    Py_ssize_t k0 = *rep;
    while (*rep < io->rep_pos.n && rp[*rep] < j0) (*rep)++;  /* positions of skipped rows */
    k0 = *rep;
    while (*rep < io->rep_pos.n && rp[*rep] < j1) (*rep)++;
    Py_ssize_t k1 = *rep;
    /* duplicate ids in this record? (rare: then first place, last value) */
    int dup = 0;
    for (int64_t j = j0; j < j1; j++) {
        unsigned id = ids[el[j]];
        if (io->stamp[id] == gen) dup = 1;
        io->stamp[id] = gen;
        io->last[id] = (int32_t)(j - j0);
    }
    if (PUT_LIT(b, "{") < 0) return -1;
    int first = 1;
    Py_ssize_t k = k0;
    for (int64_t j = j0; j < j1; j++) {
        unsigned id = ids[el[j]];
        int64_t src = j;
        if (dup) {
            if (io->stamp[id] != gen) continue;          /* already rendered */
            io->stamp[id] = gen - 1;                     /* mark rendered (gen >= 2) */
            src = j0 + io->last[id];
        }
        if (put_key(b, first, id) < 0) return -1;
        first = 0;
        /* the replacement at position src, if any */
        PyObject *repl = NULL;
        if (!dup) {
            while (k < k1 && rp[k] < src) k++;
            if (k < k1 && rp[k] == src) repl = PyList_GET_ITEM(io->rep_val, k);
        } else {
            for (Py_ssize_t q = k0; q < k1; q++)
                if (rp[q] == src) { repl = PyList_GET_ITEM(io->rep_val, q); break; }
        }
        if (repl ? put_obj(b, repl, "an IO replacement") : put_element_value(b, io, el[src])) return -1;
    }
    const int64_t *er = io->extra_rows.view.buf;
    while (*xr < io->extra_rows.n && er[*xr] == r) {
        PyObject *item = PyList_GET_ITEM(io->extra_items, *xr);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))) {
            PyErr_SetString(PyExc_TypeError, "_render: io extra_items are (key: str, value) tuples");
            return -1;
        }
        Py_ssize_t n;
        const char *key = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 0), &n);
        if (!key) return -1;
        if ((!first && PUT_LIT(b, ",") < 0) || put_str_utf8(b, key, n) < 0 || PUT_LIT(b, ":") < 0 ||
            put_obj(b, PyTuple_GET_ITEM(item, 1), "an IO extra") < 0)
            return -1;
        first = 0;
        (*xr)++;
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
        return 0;
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

/* Coarsened positions repeat (a parked vehicle, a grid cell, a fleet's records
 * interleaved in a batch) and repr's slow path costs ~1 us per value: a direct-mapped
 * cache of the texts already written for a column, keyed by the value's bits. */
#define F64_TEXTS 512
struct F64Text {
    uint64_t bits;
    uint8_t len;            /* 0: empty */
    char txt[31];
};

static int put_f64_cached(Buf *b, Field *f, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    if (!f->texts) {
        f->texts = PyMem_Calloc(F64_TEXTS, sizeof(struct F64Text));
        if (!f->texts) { PyErr_NoMemory(); return -1; }
    }
    struct F64Text *t = &f->texts[(bits * 0x9E3779B97F4A7C15ull) >> 55];  /* 9 bits */
    if (t->len && t->bits == bits) return put(b, t->txt, t->len);
    Py_ssize_t start = b->len;
    if (put_f64(b, v) < 0) return -1;
    Py_ssize_t n = b->len - start;
    if (n <= (Py_ssize_t)sizeof t->txt) {
        memcpy(t->txt, b->p + start, (size_t)n);
        t->len = (uint8_t)n;
        t->bits = bits;
    }
    return 0;
}

static int put_field(Buf *b, Field *f, Py_ssize_t i) {
    if (put(b, f->prefix, f->prefix_len) < 0) return -1;
    switch (f->kind) {
    case K_OBJ: return put_obj(b, PyList_GET_ITEM(f->obj, i), f->name);
    case K_CONST: return put_obj(b, f->obj, f->name);
    case K_I64: return put_i64(b, ((const int64_t *)f->arr.view.buf)[i]);
    case K_F64: return put_f64_cached(b, f, ((const double *)f->arr.view.buf)[i]);
    case K_F64INT: {
        double v = ((const double *)f->arr.view.buf)[i];
        if (isnan(v)) return PUT_LIT(b, "null");
        if (!(fabs(v) < 9.2e18)) {
            PyErr_Format(PyExc_ValueError, "_render: field %s: %g is not a 64-bit integer", f->name, v);
            return -1;
        }
        return put_i64(b, (int64_t)v);
    }
    case K_BOOL:
        return ((const uint8_t *)f->arr.view.buf)[i] ? PUT_LIT(b, "true") : PUT_LIT(b, "false");
    }
    return -1;
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
    for (Py_ssize_t k = 0; k < nf; k++)
        if (fields[k].len < need) {
            PyErr_Format(PyExc_ValueError, "_render: field %s has %zd rows, %zd needed", fields[k].name,
                         fields[k].len, need);
            goto done;
        }
    if (io_obj != Py_None && (io_parse(&io, io_obj) < 0 || io_check_rows(&io, n) < 0)) goto done;
    out = PyList_New(n);
    if (!out) goto done;
    Py_ssize_t rep = 0, xr = 0;
    uint32_t gen = 1;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t i = row ? (Py_ssize_t)row[r] : r;
        b.len = 0;
        if (nf == 0 && PUT_LIT(&b, "{") < 0) goto fail;
        for (Py_ssize_t k = 0; k < nf; k++)
            if (put_field(&b, &fields[k], i) < 0) goto fail;
        if (io.on) {
            gen += 2;  /* two stamps per record (seen, rendered); wraps after 2^31 records */
            if (gen < 3) { memset(io.stamp, 0, 65536 * sizeof(uint32_t)); gen = 3; }
            if ((nf ? PUT_LIT(&b, ",\"io\":") : PUT_LIT(&b, "\"io\":")) < 0) goto fail;
            if (put_io(&b, &io, r, &rep, &xr, gen) < 0) goto fail;
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
        PyMem_Free(fields[k].texts);
    }
    PyMem_Free(fields);
    io_release(&io);
    arr_release(&rows);
    PyMem_Free(b.p);
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"records", render_records, METH_VARARGS,
     "records(n, fields, rows, io) -> list[bytes]: one JSON object per record (see _render.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_render", "Output records as JSON bytes.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__render(void) {
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
