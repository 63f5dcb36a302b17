/* The worker's duplicate window in C: record ids forwarded recently, so a device's
 * retransmission is forwarded once (streams/pipeline.py, DuplicateWindow).
 *
 *   Window(capacity) -> a window remembering at least capacity/2 and at most `capacity`
 *                       of the most recent ids
 *   Window.fresh(ids: list[str]) -> bytearray   1 for an id not seen before (nor earlier
 *                       in this call), 0 for a repeat; every id is remembered
 *   len(Window), Window.clear()
 *
 * A record id is lowercase base32 of a keyed hash (26 characters a-z, 2-7: 130 bits).
 * The window keeps the bits of an id's first 26 characters, not the str objects: equal
 * keys are equal ids (exact, no hash collision can drop a record), three words a slot.
 * The ids are uniform random bits, so a key's first word is its own hash. Two
 * generations of open-addressing tables (linear probing, load <= 1/2): new ids go into
 * the young one; when it holds capacity/2 ids it becomes the old one and the previous
 * old one is forgotten. An id found only in the old generation is put into the young
 * one again (an id seen again counts as recent).
 *
 * Why: the Python sets it replaces cost ~380-410 ns an id (medians, batches of 47,000
 * new ids on a filled window; hashing every new str with SipHash, four whole-set passes,
 * rehashes as the young set grew), ~6 % of the pipeline; this ~190-200 ns, most of it
 * cache misses in the tables (keys are computed a chunk at a time with their slots
 * prefetched, so the misses overlap).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t a, b, c;   /* chars 0-11, 12-23, 24-25 (5 bits each); c's bit 63 marks the slot used */
} Slot;

#define USED (1ULL << 63)

typedef struct {
    Slot *slots;
    size_t mask;        /* slots - 1 */
    Py_ssize_t count;
} Table;

typedef struct {
    PyObject_HEAD
    Table young, old;
    Py_ssize_t half;    /* ids per generation */
} Window;

static int8_t B32[256];

static void b32_init(void) {
    memset(B32, -1, sizeof B32);
    for (int i = 0; i < 26; i++) B32['a' + i] = (int8_t)i;
    for (int i = 0; i < 6; i++) B32['2' + i] = (int8_t)(26 + i);
}

/* The key of `s`, or -1 if it is not a record id. */
static int key_of(PyObject *s, Slot *k) {
    if (!PyUnicode_Check(s) || PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND || PyUnicode_GET_LENGTH(s) < 26) return -1;
    const uint8_t *p = PyUnicode_1BYTE_DATA(s);
    uint64_t w[3] = {0, 0, 0};
    for (int i = 0; i < 26; i++) {
        int v = B32[p[i]];
        if (v < 0) return -1;
        w[i / 12] = (w[i / 12] << 5) | (uint64_t)v;
    }
    k->a = w[0];
    k->b = w[1];
    k->c = w[2] | USED;
    return 0;
}

static inline size_t slot_index(const Table *t, const Slot *k) {
    /* bits 0-59 of a are 12 random characters; mix in b for tables above 2^60 (never) */
    return (size_t)(k->a ^ (k->b << 7)) & t->mask;
}

/* Finds `k` in t: 1 if there; 0 if not, with *at the free slot where it would go. */
static inline int find(const Table *t, const Slot *k, size_t *at) {
    size_t i = slot_index(t, k);
    for (;;) {
        const Slot *s = &t->slots[i];
        if (!(s->c & USED)) { *at = i; return 0; }
        if (s->a == k->a && s->b == k->b && s->c == k->c) { *at = i; return 1; }
        i = (i + 1) & t->mask;
    }
}

static int table_init(Table *t, Py_ssize_t half) {
    size_t n = 16;
    while (n < (size_t)half * 2) n <<= 1;   /* load <= 1/2 */
    /* Zeroed here, not by calloc: every page is faulted in now, when the window is made
     * (PipelineBuilder: by its first build, in the process that uses it), not a few at
     * a time under the first ~500,000 ids (~6,000 page faults of ~3.7 us each in the
     * bench's stream, on its VM). */
    t->slots = PyMem_Malloc(n * sizeof(Slot));
    if (!t->slots) { PyErr_NoMemory(); return -1; }
    memset(t->slots, 0, n * sizeof(Slot));
    t->mask = n - 1;
    t->count = 0;
    return 0;
}

static void table_clear(Table *t) {
    memset(t->slots, 0, (t->mask + 1) * sizeof(Slot));
    t->count = 0;
}

static int Window_init(Window *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"capacity", NULL};
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n:Window", kwlist, &capacity)) return -1;
    if (capacity < 1 || capacity > ((Py_ssize_t)1 << 40)) {
        PyErr_Format(PyExc_ValueError, "capacity must be from 1 to 2**40, not %zd", capacity);
        return -1;
    }
    PyMem_Free(self->young.slots);
    PyMem_Free(self->old.slots);
    self->young.slots = self->old.slots = NULL;
    self->half = capacity / 2 > 0 ? capacity / 2 : 1;
    if (table_init(&self->young, self->half) < 0 || table_init(&self->old, self->half) < 0) return -1;
    return 0;
}

static void Window_dealloc(Window *self) {
    PyMem_Free(self->young.slots);
    PyMem_Free(self->old.slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Puts k at slot `at` of the young table; swaps the generations when it is full. */
static inline void remember(Window *w, const Slot *k, size_t at) {
    w->young.slots[at] = *k;
    if (++w->young.count >= w->half) {
        Table t = w->old;
        w->old = w->young;
        table_clear(&t);
        w->young = t;
    }
}

static PyObject *Window_fresh(Window *self, PyObject *ids) {
    if (!self->young.slots || !self->old.slots) {
        PyErr_SetString(PyExc_RuntimeError, "Window was not initialised");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(ids, "fresh() takes a sequence of record ids");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n);
    if (!out) { Py_DECREF(seq); return NULL; }
    uint8_t *o = (uint8_t *)PyByteArray_AS_STRING(out);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* In chunks: every key of the chunk first, with the slots it will probe prefetched,
     * so the tables' cache misses overlap instead of queueing (the tables are megabytes;
     * a prefetch is only a hint: a generation swap inside the chunk leaves it stale). */
    enum { CHUNK = 32 };
    Slot keys[CHUNK];
    for (Py_ssize_t base = 0; base < n; base += CHUNK) {
        const Py_ssize_t m = n - base < CHUNK ? n - base : CHUNK;
        for (Py_ssize_t j = base + CHUNK; j < base + 2 * CHUNK && j < n; j++)
            __builtin_prefetch(items[j], 0);   /* the next chunk's str objects */
        for (Py_ssize_t j = 0; j < m; j++) {
            if (key_of(items[base + j], &keys[j]) < 0) {
                PyErr_Format(PyExc_ValueError, "ids[%zd] is not a record id (26 or more characters a-z, 2-7)",
                             base + j);
                Py_DECREF(out);
                Py_DECREF(seq);
                return NULL;
            }
            __builtin_prefetch(&self->young.slots[slot_index(&self->young, &keys[j])], 1);
            __builtin_prefetch(&self->old.slots[slot_index(&self->old, &keys[j])], 0);
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            const Slot *k = &keys[j];
            size_t at, old_at;
            if (find(&self->young, k, &at)) {
                o[base + j] = 0;
            } else if (find(&self->old, k, &old_at)) {
                o[base + j] = 0;
                remember(self, k, at);     /* seen again: recent */
            } else {
                o[base + j] = 1;
                remember(self, k, at);
            }
        }
    }
    Py_DECREF(seq);
    return out;
}

static PyObject *Window_clear(Window *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->young.slots || !self->old.slots) Py_RETURN_NONE;
    table_clear(&self->young);
    table_clear(&self->old);
    Py_RETURN_NONE;
}

static Py_ssize_t Window_len(Window *self) { return self->young.count + self->old.count; }

static PyMethodDef Window_methods[] = {
    {"fresh", (PyCFunction)Window_fresh, METH_O,
     "fresh(ids) -> bytearray: 1 for an id not seen before (nor earlier in this call); remembers them all."},
    {"clear", (PyCFunction)Window_clear, METH_NOARGS, "Forget every id."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Window_as_sequence = {.sq_length = (lenfunc)Window_len};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fleetcloak.streams._idwindow.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Window(capacity): record ids forwarded recently (at least capacity/2, at most capacity).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Window_init,
    .tp_dealloc = (destructor)Window_dealloc,
    .tp_methods = Window_methods,
    .tp_as_sequence = &Window_as_sequence,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_idwindow",
                                    "The duplicate window of record ids, in C.", -1, NULL};

PyMODINIT_FUNC PyInit__idwindow(void) {
    b32_init();
    if (PyType_Ready(&WindowType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "Window", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
