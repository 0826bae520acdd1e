/*
 * schemas._avrocodec: a schema-driven Avro binary encoder/decoder for the batch schemas.
 *
 * schemas/native.py compiles an Avro record schema into a flat tuple of nodes (a "program"); this module runs it.
 * It covers what schemas/compiled.py covers: records, arrays, ["null", X] unions, string, bytes, int, long,
 * boolean, float, double and null, field defaults on encode, plus "sparse" records (every field ["null", X]):
 * on encode an absent or None key writes the null branch, on decode a null field is left out of the dict; and
 * "tuple" records, decoded as the tuple of their field values in schema order instead of a dict.
 *
 * Safety: every read is bounds-checked against the buffer; lengths and counts are validated against the bytes
 * left before anything is allocated, so corrupt input raises ValueError and allocations stay proportional to
 * the input size. No Python code runs while borrowed references are held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum Kind { K_NULL, K_BOOLEAN, K_INT, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES, K_RECORD, K_ARRAY, K_COUNT };
enum Flag { F_NULLABLE = 1, F_DEFAULT = 2, F_SPARSE = 4, F_COLUMN = 8, F_TUPLE = 16 };

typedef struct {
    int kind;
    int flags;
    PyObject *key;      /* field name (a record's field), or NULL */
    PyObject *dflt;     /* field default used on encode when the key is absent (F_DEFAULT) */
    PyObject *label;    /* what error messages call this value, e.g. "events[].event_id" */
    Py_ssize_t first;   /* record: index of its first field node; array: index of the item node */
    Py_ssize_t count;   /* record: number of fields */
    PyObject *index;    /* sparse record: dict field name -> position */
    PyObject *names;    /* record: tuple of its field names, in order */
    PyObject *model;    /* record: {name: None, ...} in field order, cloned per decoded record (see new_record) */
    struct Shape *shapes; /* sparse record: models of the sets of fields rows had (see dec_sparse) */
    char *json_key;     /* a sparse record's field: `,"name":` as JSON (decode_json writes from byte 1 first) */
    Py_ssize_t json_key_len;
    struct KeySlot *by_key; /* sparse record: its fields' interned names -> position, by address (see key_position) */
    size_t by_key_mask;
} Node;

typedef struct KeySlot {
    PyObject *key; /* a field's interned name (owned by the field node), or NULL */
    Py_ssize_t at;
} KeySlot;

/* Decoded short ASCII strings are looked up in a small direct-mapped cache first: field names, channels, hosts,
 * SIDs, "%%1833"-style codes repeat across events, and sharing one immutable str saves its allocation and its
 * deallocation. Bounded: STR_CACHE_SIZE entries of at most STR_CACHE_MAX_LEN bytes. */
#define STR_CACHE_SIZE 2048
#define STR_CACHE_MAX_LEN 48

typedef struct {
    PyObject *str; /* an ASCII str, or NULL */
    uint32_t hash, len;
} StrSlot;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    Py_ssize_t nnodes;
    Py_ssize_t size_hint; /* size of recent outputs: the first allocation of the next encode */
    StrSlot str_cache[STR_CACHE_SIZE];
} Program;

#define MAX_HINT ((Py_ssize_t)1 << 24)

/* ------------------------------------------------------------------------------------------------------------ */
/* encoding                                                                                                     */

typedef struct {
    PyObject *bytes; /* the result, grown in place */
    char *p;
    Py_ssize_t len, cap;
} Out;

static int out_grow(Out *o, Py_ssize_t need)
{
    Py_ssize_t cap = o->cap;
    while (cap - o->len < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    if (_PyBytes_Resize(&o->bytes, cap) < 0)
        return -1;
    o->p = PyBytes_AS_STRING(o->bytes);
    o->cap = cap;
    return 0;
}

static inline int out_reserve(Out *o, Py_ssize_t n)
{
    return (o->cap - o->len >= n) ? 0 : out_grow(o, n);
}

static inline void put_varint(Out *o, int64_t value) /* caller reserved 10 bytes */
{
    uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    char *p = o->p + o->len;
    while (n > 0x7F) {
        *p++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (char)n;
    o->len = p - o->p;
}

static inline int out_long(Out *o, int64_t value)
{
    if (out_reserve(o, 10) < 0)
        return -1;
    put_varint(o, value);
    return 0;
}

static int out_blob(Out *o, const char *data, Py_ssize_t size)
{
    if (out_reserve(o, size + 10) < 0)
        return -1;
    put_varint(o, size);
    memcpy(o->p + o->len, data, size);
    o->len += size;
    return 0;
}

static int type_error(Node *node, const char *expected, PyObject *value)
{
    PyErr_Format(PyExc_TypeError, "%U: expected %s, got %s", node->label, expected, Py_TYPE(value)->tp_name);
    return -1;
}

static int enc_string(Node *node, PyObject *value, Out *o)
{
    if (!PyUnicode_Check(value))
        return type_error(node, "str", value);
    if (PyUnicode_IS_ASCII(value))
        return out_blob(o, (const char *)PyUnicode_1BYTE_DATA(value), PyUnicode_GET_LENGTH(value));
    /* A temporary copy: PyUnicode_AsUTF8AndSize would cache UTF-8 in the caller's object for its lifetime. */
    PyObject *utf8 = PyUnicode_AsUTF8String(value);
    if (utf8 == NULL) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        PyErr_Format(PyExc_ValueError, "%U: %S", node->label, exc);
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return -1;
    }
    int r = out_blob(o, PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8));
    Py_DECREF(utf8);
    return r;
}

static int enc_int(Node *node, PyObject *value, Out *o)
{
    int overflow = 0;
    long long n = 0;
    if (PyLong_Check(value) && !PyBool_Check(value)) {
        n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (n == -1 && PyErr_Occurred())
            return -1;
        if (!overflow && (node->kind == K_LONG || (n >= INT32_MIN && n <= INT32_MAX)))
            return out_long(o, n);
    }
    const char *kind = node->kind == K_INT ? "int" : "long";
    const char *range = node->kind == K_INT ? "[-2147483648, 2147483647]"
                                            : "[-9223372036854775808, 9223372036854775807]";
    if (node->flags & F_COLUMN)
        PyErr_Format(PyExc_ValueError, "%U: expected an %s in %s, got %R", node->label, kind, range, value);
    else
        PyErr_Format(PyExc_ValueError, "%U: expected an Avro %s (a Python int in %s), got %R", node->label, kind,
                     range, value);
    return -1;
}

static int enc_real(Node *node, PyObject *value, Out *o)
{
    double d;
    if (PyFloat_Check(value))
        d = PyFloat_AS_DOUBLE(value);
    else if (PyLong_Check(value) && !PyBool_Check(value)) {
        d = PyLong_AsDouble(value);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
    }
    else
        return type_error(node, "a number", value);
    if (out_reserve(o, 8) < 0)
        return -1;
    if (node->kind == K_DOUBLE) {
        if (PyFloat_Pack8(d, o->p + o->len, 1) < 0)
            return -1;
        o->len += 8;
    }
    else {
        if (PyFloat_Pack4(d, o->p + o->len, 1) < 0)
            return -1;
        o->len += 4;
    }
    return 0;
}

static int enc_bytes(Node *node, PyObject *value, Out *o)
{
    Py_buffer view;
    if (PyBytes_CheckExact(value))
        return out_blob(o, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (PyUnicode_Check(value) || PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return type_error(node, "bytes", value);
    }
    int r = out_blob(o, view.buf, view.len);
    PyBuffer_Release(&view);
    return r;
}

static int enc_value(Program *pg, Node *node, PyObject *value, Out *o);

/* The value of `field` in `record` (a new reference), its default when absent, or NULL with an error set. */
static PyObject *field_value(Node *field, PyObject *record)
{
    PyObject *value;
    if (PyDict_Check(record)) {
        value = PyDict_GetItemWithError(record, field->key);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
        if (PyErr_Occurred())
            return NULL;
    }
    else {
        value = PyObject_GetItem(record, field->key);
        if (value != NULL)
            return value;
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    if (field->flags & F_DEFAULT)
        value = field->dflt;
    else if (field->flags & F_NULLABLE)
        value = Py_None;
    else {
        PyErr_SetObject(PyExc_KeyError, field->key);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

static int enc_record(Program *pg, Node *node, PyObject *record, Out *o)
{
    if (!PyDict_Check(record) && !PyMapping_Check(record))
        return type_error(node, "a dict", record);
    Node *field = pg->nodes + node->first;
    Py_ssize_t pos = 0; /* dict order usually is field order, with the same (interned) key objects: the next
                           entry is then the field's, found without a hash lookup */
    int is_dict = PyDict_Check(record);
    for (Py_ssize_t i = 0; i < node->count; i++, field++) {
        PyObject *value = NULL, *key, *next;
        Py_ssize_t at = pos;
        if (is_dict && PyDict_Next(record, &at, &key, &next) && key == field->key) {
            value = next;
            Py_INCREF(value); /* before anything can run Python code that changes the dict */
            pos = at;
        }
        else
            value = field_value(field, record);
        if (value == NULL)
            return -1;
        int r = enc_value(pg, field, value, o);
        Py_DECREF(value);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* The position of the field whose name is the very object `key`, or -1. Rows are built with the interned column
 * names as keys, so this finds nearly every column of a row without hashing its name; an equal name that is another
 * object is left to the `index` dict. */
static inline size_t key_slot(Node *node, PyObject *key) /* where the probe for `key` starts */
{
    return (size_t)(((uint64_t)(uintptr_t)key * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & node->by_key_mask;
}

static inline Py_ssize_t key_position(Node *node, PyObject *key)
{
    size_t mask = node->by_key_mask, i = key_slot(node, key);
    for (KeySlot *slots = node->by_key; slots[i].key != NULL; i = (i + 1) & mask)
        if (slots[i].key == key)
            return slots[i].at;
    return -1;
}

/* A sparse record: only the row's own keys are looked up, then every field is written in schema order. */
static int enc_sparse(Program *pg, Node *node, PyObject *row, Out *o)
{
    PyObject *stack[256];
    PyObject **slots = stack;
    Py_ssize_t n = node->count, pos = 0;
    PyObject *key, *value;
    int r = -1;

    if (!PyDict_Check(row))
        return type_error(node, "a dict", row);
    if (n > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0]))) {
        slots = PyMem_New(PyObject *, n);
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    memset(slots, 0, n * sizeof(PyObject *));
    /* Values stay borrowed from `row`: nothing below runs Python code until they have been written. */
    Node *fields = pg->nodes + node->first;
    Py_ssize_t next = 0; /* rows often list their columns in schema order, with the interned names as keys */
    while (PyDict_Next(row, &pos, &key, &value)) {
        if (value == Py_None)
            continue;
        Py_ssize_t at = -1;
        for (Py_ssize_t j = next; j < n && j < next + 8; j++)
            if (fields[j].key == key) {
                at = j;
                break;
            }
        if (at < 0)
            at = key_position(node, key);
        if (at < 0) {
            PyObject *found = NULL;
            if (PyUnicode_CheckExact(key)) /* a column name is a str; a subclass could hash its own way */
                found = PyDict_GetItemWithError(node->index, key);
            if (found == NULL) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "unknown column %R", key);
                goto done;
            }
            at = PyLong_AsSsize_t(found);
        }
        slots[at] = value;
        next = at + 1;
    }
    if (out_reserve(o, n) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < n;) {
        if (slots[i] == NULL) { /* a run of null markers; `n - i` bytes are reserved */
            Py_ssize_t end = i + 1;
            while (end < n && slots[end] == NULL)
                end++;
            memset(o->p + o->len, 0, end - i);
            o->len += end - i;
            i = end;
            continue;
        }
        if (enc_value(pg, fields + i, slots[i], o) < 0)
            goto done;
        i++;
        if (out_reserve(o, n - i) < 0)
            goto done;
    }
    r = 0;
done:
    if (slots != stack)
        PyMem_Free(slots);
    return r;
}

static int enc_array(Program *pg, Node *node, PyObject *items, Out *o)
{
    if (!PyList_Check(items) && !PyTuple_Check(items))
        return type_error(node, "a list", items);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    if (n > 0) {
        if (out_long(o, n) < 0)
            return -1;
        Node *item_node = pg->nodes + node->first;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i >= PySequence_Fast_GET_SIZE(items)) { /* shrunk by code run from a mapping's __getitem__ */
                PyErr_Format(PyExc_RuntimeError, "%U: list changed size during encoding", node->label);
                return -1;
            }
            PyObject *item = PySequence_Fast_GET_ITEM(items, i);
            Py_INCREF(item);
            int r = enc_value(pg, item_node, item, o);
            Py_DECREF(item);
            if (r < 0)
                return -1;
        }
    }
    if (out_reserve(o, 1) < 0)
        return -1;
    o->p[o->len++] = 0;
    return 0;
}

static int enc_value(Program *pg, Node *node, PyObject *value, Out *o)
{
    if (node->flags & F_NULLABLE) {
        if (out_reserve(o, 1) < 0)
            return -1;
        if (value == Py_None) {
            o->p[o->len++] = 0;
            return 0;
        }
        o->p[o->len++] = 2;
    }
    else if (value == Py_None && node->kind != K_NULL) {
        if (node->kind == K_RECORD)
            return type_error(node, "a dict", value);
        if (node->kind == K_ARRAY)
            return type_error(node, "a list", value);
        PyErr_Format(PyExc_TypeError, "%U: null in a non-null field", node->label);
        return -1;
    }
    switch (node->kind) {
    case K_STRING:
        return enc_string(node, value, o);
    case K_INT:
    case K_LONG:
        return enc_int(node, value, o);
    case K_BOOLEAN:
        if (!PyBool_Check(value))
            return type_error(node, "bool", value);
        if (out_reserve(o, 1) < 0)
            return -1;
        o->p[o->len++] = value == Py_True ? 1 : 0;
        return 0;
    case K_DOUBLE:
    case K_FLOAT:
        return enc_real(node, value, o);
    case K_BYTES:
        return enc_bytes(node, value, o);
    case K_RECORD:
        return (node->flags & F_SPARSE) ? enc_sparse(pg, node, value, o) : enc_record(pg, node, value, o);
    case K_ARRAY:
        return enc_array(pg, node, value, o);
    default: /* K_NULL writes nothing */
        return 0;
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* building record dicts                                                                                        */

/* PyDict_SetItem costs ~120 instructions of bookkeeping per key, more than everything else a decoded value
 * needs. On CPython 3.11 and 3.12 a record's dict is instead a PyDict_Copy of a model dict that holds the
 * record's keys (in order) with None values, a memcpy of its table, whose value slots are then filled in place.
 * That relies on the layout of dict key tables (Include/internal/pycore_dict.h), which CPython does not
 * promise: model_usable() checks it on the running interpreter for every model, and any mismatch (or another
 * CPython version) takes the public path (_PyStack_AsDict / PyDict_SetItem). */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#define FAST_DICT 1
static int dict_layout_ok; /* set at import by probing a dict of known keys */
typedef struct {
    Py_ssize_t dk_refcnt;
    uint8_t dk_log2_size;
    uint8_t dk_log2_index_bytes;
    uint8_t dk_kind;
    uint32_t dk_version;
    Py_ssize_t dk_usable;
    Py_ssize_t dk_nentries;
    char dk_indices[];
} KeysLayout;

typedef struct {
    PyObject *me_key;
    PyObject *me_value;
} UnicodeEntry;

static UnicodeEntry *unicode_entries(PyObject *dict)
{
    KeysLayout *keys = (KeysLayout *)((PyDictObject *)dict)->ma_keys;
    return (UnicodeEntry *)(keys->dk_indices + ((size_t)1 << keys->dk_log2_index_bytes));
}

/* A dict (the model or its copy) whose n entries sit in order in a combined table of str keys. */
static int laid_out(PyObject *dict, Py_ssize_t n)
{
    PyDictObject *d = (PyDictObject *)dict;
    KeysLayout *keys = (KeysLayout *)d->ma_keys;
    return d->ma_values == NULL && keys->dk_refcnt == 1 && keys->dk_kind == 1 /* DICT_KEYS_UNICODE */ &&
           keys->dk_nentries == n && d->ma_used == n;
}

/* True when a copy of `model` is laid out as expected: a combined table of str keys in field order. */
static int model_usable(PyObject *model, PyObject *names)
{
    PyObject *copy = PyDict_Copy(model);
    if (copy == NULL) {
        PyErr_Clear();
        return 0;
    }
    KeysLayout *keys = (KeysLayout *)((PyDictObject *)copy)->ma_keys;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    int ok = laid_out(copy, n) && keys->dk_log2_size >= 3 &&
             keys->dk_log2_size < 8 * sizeof(Py_ssize_t) &&
             keys->dk_log2_index_bytes >= keys->dk_log2_size && keys->dk_log2_index_bytes <= keys->dk_log2_size + 3;
    if (ok) {
        UnicodeEntry *entries = unicode_entries(copy);
        for (Py_ssize_t i = 0; ok && i < n; i++)
            ok = entries[i].me_key == PyTuple_GET_ITEM(names, i) && entries[i].me_value == Py_None;
        /* And the in-place write is seen by the public API. */
        if (ok && n > 0) {
            Py_INCREF(Py_True);
            entries[0].me_value = Py_True;
            Py_DECREF(Py_None);
            ok = PyDict_GetItemWithError(copy, PyTuple_GET_ITEM(names, 0)) == Py_True;
        }
    }
    Py_DECREF(copy);
    PyErr_Clear();
    return ok;
}

/* A copy of `model` (n keys, None values) holding `values` (references stolen on success). NULL with an error
 * set, or NULL without one when the copy is not laid out as expected: `values` are then untouched. */
static PyObject *fill_model(PyObject *model, Py_ssize_t n, PyObject **values)
{
    PyObject *dict = PyDict_Copy(model);
    if (dict == NULL)
        return NULL;
    if (!laid_out(dict, n)) {
        Py_DECREF(dict);
        return NULL;
    }
    UnicodeEntry *entries = unicode_entries(dict);
    int containers = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *none = entries[i].me_value;
        entries[i].me_value = values[i];
        Py_DECREF(none);
        containers |= PyObject_IS_GC(values[i]);
    }
    /* The model holds only None, so the copy is untracked; the GC must see a dict holding containers. */
    if (containers && !PyObject_GC_IsTracked(dict))
        PyObject_GC_Track(dict);
    return dict;
}

/* A model dict of `n` keys with None values, or NULL without an error when it is not laid out as expected. */
static PyObject *new_model(PyObject *const *keys, Py_ssize_t n)
{
    PyObject *model = PyDict_New();
    if (model == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyDict_SetItem(model, keys[i], Py_None) < 0) {
            Py_DECREF(model);
            return NULL;
        }
    if (!laid_out(model, n)) {
        Py_DECREF(model);
        return NULL;
    }
    return model;
}
#endif

/* The dict of a record from its decoded field values (references stolen; all non-NULL). */
static PyObject *new_record(Node *node, PyObject **values)
{
    Py_ssize_t n = node->count;
    PyObject *dict;
#ifdef FAST_DICT
    if (node->model != NULL) {
        dict = fill_model(node->model, n, values);
        if (dict != NULL)
            return dict;
        if (PyErr_Occurred())
            goto fail;
    }
#endif
#if PY_VERSION_HEX < 0x030D0000
    /* One presized dict with str-only keys, filled in order (CPython's own path for keyword arguments). */
    dict = _PyStack_AsDict(values, node->names);
#else
    dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i < n; i++)
        if (PyDict_SetItem(dict, PyTuple_GET_ITEM(node->names, i), values[i]) < 0)
            Py_CLEAR(dict);
#endif
#ifdef FAST_DICT
fail:
#endif
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(values[i]);
    return dict;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* decoding                                                                                                     */

struct Json;

typedef struct {
    const unsigned char *buf;
    Py_ssize_t pos, end;
    struct Json *json; /* decode_json: sparse records become JSON bytes (see dec_sparse_json); NULL: dicts */
} In;

static inline uint64_t load_le(const unsigned char *p, Py_ssize_t n) /* n <= 8 */
{
    uint64_t v = 0;
    memcpy(&v, p, (size_t)n);
    return v;
}

static int is_ascii(const unsigned char *p, Py_ssize_t n)
{
    uint64_t acc = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc |= load_le(p + i, 8);
    if (i < n)
        acc |= load_le(p + i, n - i);
    return (acc & UINT64_C(0x8080808080808080)) == 0;
}

static PyObject *dec_str(Program *pg, const unsigned char *p, Py_ssize_t n)
{
    if (n == 0 || n > STR_CACHE_MAX_LEN)
        return PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    /* Hash the length and the first and last 8 bytes: cheap, and values that repeat (names, SIDs, GUIDs, codes)
     * differ there. The slot keeps its string's length and hash, so a miss does not touch the string. */
    uint64_t head = load_le(p, n < 8 ? n : 8), tail = n > 8 ? load_le(p + n - 8, 8) : 0;
    uint64_t h = ((head * UINT64_C(0x9E3779B97F4A7C15)) ^ tail ^ (uint64_t)n) * UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 32;
    StrSlot *slot = pg->str_cache + (h & (STR_CACHE_SIZE - 1));
    if (slot->str != NULL && slot->hash == (uint32_t)h && slot->len == (uint32_t)n &&
        memcmp(PyUnicode_1BYTE_DATA(slot->str), p, n) == 0) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    if (!is_ascii(p, n))
        return PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    PyObject *str = PyUnicode_New(n, 127);
    if (str == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(str), p, n);
    Py_INCREF(str);
    Py_XSETREF(slot->str, str);
    slot->hash = (uint32_t)h;
    slot->len = (uint32_t)n;
    return str;
}

static int truncated(In *in, Node *node)
{
    PyErr_Format(PyExc_ValueError, "%U: data ends at offset %zd", node->label, in->end);
    return -1;
}

static int read_long(In *in, Node *node, int64_t *out)
{
    uint64_t n = 0;
    unsigned int shift = 0;
    for (;;) {
        if (in->pos >= in->end)
            return truncated(in, node);
        unsigned int byte = in->buf[in->pos++];
        if (shift == 63 && byte > 1) {
            PyErr_Format(PyExc_ValueError, "%U: varint at offset %zd overflows 64 bits", node->label, in->pos - 10);
            return -1;
        }
        n |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80)
            break;
        shift += 7;
    }
    *out = (int64_t)((n >> 1) ^ (~(n & 1) + 1));
    return 0;
}

static inline int read_long_fast(In *in, Node *node, int64_t *out)
{
    if (in->pos < in->end && in->buf[in->pos] < 0x80) {
        unsigned int byte = in->buf[in->pos++];
        *out = (int64_t)(byte >> 1) ^ -(int64_t)(byte & 1);
        return 0;
    }
    return read_long(in, node, out);
}

/* The length of a string/bytes value, checked against the bytes left. */
static int read_size(In *in, Node *node, Py_ssize_t *out)
{
    int64_t size;
    Py_ssize_t at = in->pos;
    if (read_long_fast(in, node, &size) < 0)
        return -1;
    if (size < 0 || size > in->end - in->pos) {
        PyErr_Format(PyExc_ValueError, "%U: length %lld at offset %zd runs past the end of %zd bytes", node->label,
                     (long long)size, at, in->end);
        return -1;
    }
    *out = (Py_ssize_t)size;
    return 0;
}

/* How many of the next `left` fields of a sparse record are null, as far as 8-byte loads can tell at once (most
 * columns are null): the caller skips that many markers, then looks at the next field itself. */
static inline Py_ssize_t null_markers(In *in, Py_ssize_t left)
{
    Py_ssize_t nulls = 0;
    while (left - nulls >= 8 && in->end - in->pos - nulls >= 8) {
        uint64_t word = load_le(in->buf + in->pos + nulls, 8);
        if (word != 0) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            nulls += __builtin_ctzll(word) >> 3; /* the first non-zero byte is the first non-null marker */
#endif
            break;
        }
        nulls += 8;
    }
    return nulls;
}

/* Moves from field *i of a sparse record past null markers: 1 at the union byte of a non-null field (*i is its
 * index), 0 at the record's end, -1 (error set) when the data ends first. */
static int next_present(Program *pg, Node *record, In *in, Py_ssize_t *i)
{
    for (;;) {
        Py_ssize_t nulls = null_markers(in, record->count - *i);
        *i += nulls;
        in->pos += nulls;
        if (*i == record->count)
            return 0;
        if (in->pos >= in->end)
            return truncated(in, pg->nodes + record->first + *i);
        if (in->buf[in->pos] != 0)
            return 1;
        in->pos++;
        (*i)++;
    }
}

/* A new dict of the n pairs keys[k]: values[k] (the values stay the caller's), or NULL with an error set. */
static PyObject *dict_of(PyObject **keys, PyObject **values, Py_ssize_t n)
{
    PyObject *dict = _PyDict_NewPresized(n);
    for (Py_ssize_t k = 0; dict != NULL && k < n; k++)
        if (PyDict_SetItem(dict, keys[k], values[k]) < 0)
            Py_CLEAR(dict);
    return dict;
}

static PyObject *dec_value(Program *pg, Node *node, In *in);
static PyObject *dec_sparse_json(Program *pg, Node *node, In *in);

/* An F_TUPLE record: the tuple of its field values, in schema order. A small record made in bulk (an EventData item)
 * costs a fraction of a dict this way, to make, to read and to free. */
static PyObject *dec_tuple(Program *pg, Node *node, In *in)
{
    PyObject *tuple = PyTuple_New(node->count);
    if (tuple == NULL)
        return NULL;
    Node *field = pg->nodes + node->first;
    for (Py_ssize_t i = 0; i < node->count; i++, field++) {
        PyObject *value = dec_value(pg, field, in);
        if (value == NULL) {
            Py_DECREF(tuple); /* the unfilled slots are NULL, which tuple dealloc skips */
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, value);
    }
    return tuple;
}

static PyObject *dec_record(Program *pg, Node *node, In *in)
{
    PyObject *stack[64];
    PyObject **values = stack;
    PyObject *dict = NULL;
    Py_ssize_t n = node->count, done = 0;
    if (n > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0]))) {
        values = PyMem_New(PyObject *, n);
        if (values == NULL)
            return PyErr_NoMemory();
    }
    Node *field = pg->nodes + node->first;
    for (; done < n; done++, field++) {
        values[done] = dec_value(pg, field, in);
        if (values[done] == NULL) {
            for (Py_ssize_t i = 0; i < done; i++)
                Py_DECREF(values[i]);
            goto end;
        }
    }
    dict = new_record(node, values);
end:
    if (values != stack)
        PyMem_Free(values);
    return dict;
}

/* Sparse rows of one kind of event fill the same columns: the dict of a row is a copy of a model with those
 * keys, kept in a small table indexed by a hash of the filled field positions (SHAPES entries per record). */
#define SHAPES 64
typedef struct Shape {
    uint64_t hash;
    Py_ssize_t n;
    PyObject *model;
} Shape;

static PyObject *dec_sparse(Program *pg, Node *node, In *in)
{
    PyObject *vstack[64], *kstack[64];
    PyObject **values = vstack, **keys = kstack;
    PyObject *dict = NULL;
    Py_ssize_t filled = 0;
    uint64_t hash = UINT64_C(1469598103934665603);
    if (node->count > 64) {
        values = PyMem_New(PyObject *, node->count);
        keys = PyMem_New(PyObject *, node->count);
        if (values == NULL || keys == NULL) {
            PyErr_NoMemory();
            goto end;
        }
    }
    int present;
    for (Py_ssize_t i = 0; (present = next_present(pg, node, in, &i)) > 0; i++) {
        Node *field = pg->nodes + node->first + i;
        PyObject *value = dec_value(pg, field, in); /* checks the branch byte */
        if (value == NULL)
            goto end;
        values[filled] = value;
        keys[filled++] = field->key;
        hash = (hash ^ (uint64_t)i) * UINT64_C(1099511628211);
    }
    if (present < 0)
        goto end;
#ifdef FAST_DICT
    if (node->shapes != NULL && filled > 0) {
        Shape *shape = node->shapes + ((hash ^ (hash >> 32)) & (SHAPES - 1));
        int hit = shape->model != NULL && shape->hash == hash && shape->n == filled;
        if (hit) {
            UnicodeEntry *entries = unicode_entries(shape->model);
            for (Py_ssize_t j = 0; hit && j < filled; j++)
                hit = entries[j].me_key == keys[j];
        }
        if (!hit) {
            PyObject *model = new_model(keys, filled);
            if (model == NULL && PyErr_Occurred())
                goto end;
            if (model != NULL) {
                Py_XSETREF(shape->model, model);
                shape->hash = hash;
                shape->n = filled;
                hit = 1;
            }
        }
        if (hit) {
            dict = fill_model(shape->model, filled, values);
            if (dict != NULL) {
                filled = 0; /* the values now belong to the dict */
                goto end;
            }
            if (PyErr_Occurred())
                goto end;
        }
    }
#endif
    dict = dict_of(keys, values, filled);
end:
    for (Py_ssize_t j = 0; j < filled; j++)
        Py_DECREF(values[j]);
    if (values != vstack)
        PyMem_Free(values);
    if (keys != kstack)
        PyMem_Free(keys);
    return dict;
}

static PyObject *dec_array(Program *pg, Node *node, In *in)
{
    Node *item_node = pg->nodes + node->first;
    PyObject *list = NULL;
    for (;;) {
        int64_t count, block_size;
        Py_ssize_t at = in->pos;
        if (read_long_fast(in, node, &count) < 0)
            goto fail;
        if (count == 0)
            break;
        if (count < 0) { /* a block that also gives its size in bytes (Java writers); the size is not needed */
            if (count == INT64_MIN || read_long(in, node, &block_size) < 0) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "%U: bad array block count at offset %zd", node->label, at);
                goto fail;
            }
            count = -count;
        }
        /* Every item takes at least one byte (native.py refuses item types that can take none). */
        if (count > in->end - in->pos) {
            PyErr_Format(PyExc_ValueError, "%U: array block of %lld items at offset %zd cannot fit in the %zd bytes "
                         "left", node->label, (long long)count, at, in->end - in->pos);
            goto fail;
        }
        if (list == NULL) {
            list = PyList_New((Py_ssize_t)count);
            if (list == NULL)
                return NULL;
            for (Py_ssize_t i = 0; i < count; i++) {
                PyObject *item = dec_value(pg, item_node, in);
                if (item == NULL)
                    goto fail; /* the unfilled slots are NULL, which list_dealloc skips */
                PyList_SET_ITEM(list, i, item);
            }
        }
        else {
            for (Py_ssize_t i = 0; i < count; i++) {
                PyObject *item = dec_value(pg, item_node, in);
                if (item == NULL)
                    goto fail;
                int r = PyList_Append(list, item);
                Py_DECREF(item);
                if (r < 0)
                    goto fail;
            }
        }
    }
    return list != NULL ? list : PyList_New(0);
fail:
    Py_XDECREF(list);
    return NULL;
}

static PyObject *dec_value(Program *pg, Node *node, In *in)
{
    if (node->flags & F_NULLABLE) {
        if (in->pos >= in->end) {
            truncated(in, node);
            return NULL;
        }
        unsigned int branch = in->buf[in->pos++];
        if (branch == 0)
            Py_RETURN_NONE;
        if (branch != 2) {
            PyErr_Format(PyExc_ValueError, "%U: union branch %u at offset %zd (expected 0 or 1)", node->label,
                         branch, in->pos - 1);
            return NULL;
        }
    }
    switch (node->kind) {
    case K_STRING: {
        Py_ssize_t size;
        if (read_size(in, node, &size) < 0)
            return NULL;
        const unsigned char *start = in->buf + in->pos;
        in->pos += size;
        return dec_str(pg, start, size);
    }
    case K_BYTES: {
        Py_ssize_t size;
        if (read_size(in, node, &size) < 0)
            return NULL;
        const char *start = (const char *)in->buf + in->pos;
        in->pos += size;
        return PyBytes_FromStringAndSize(start, size);
    }
    case K_INT:
    case K_LONG: {
        int64_t value;
        Py_ssize_t at = in->pos;
        if (read_long_fast(in, node, &value) < 0)
            return NULL;
        if (node->kind == K_INT && (value < INT32_MIN || value > INT32_MAX)) {
            PyErr_Format(PyExc_ValueError, "%U: int at offset %zd is out of the 32-bit range", node->label, at);
            return NULL;
        }
        return PyLong_FromLongLong(value);
    }
    case K_BOOLEAN: {
        if (in->pos >= in->end) {
            truncated(in, node);
            return NULL;
        }
        unsigned int byte = in->buf[in->pos++];
        if (byte > 1) {
            PyErr_Format(PyExc_ValueError, "%U: boolean byte %u at offset %zd", node->label, byte, in->pos - 1);
            return NULL;
        }
        return PyBool_FromLong(byte);
    }
    case K_DOUBLE:
    case K_FLOAT: {
        Py_ssize_t size = node->kind == K_DOUBLE ? 8 : 4;
        if (in->end - in->pos < size) {
            truncated(in, node);
            return NULL;
        }
        const char *p = (const char *)in->buf + in->pos;
        in->pos += size;
        double d = size == 8 ? PyFloat_Unpack8(p, 1) : PyFloat_Unpack4(p, 1);
        if (d == -1.0 && PyErr_Occurred())
            return NULL;
        return PyFloat_FromDouble(d);
    }
    case K_RECORD:
        if (node->flags & F_SPARSE)
            return in->json != NULL ? dec_sparse_json(pg, node, in) : dec_sparse(pg, node, in);
        if (node->flags & F_TUPLE)
            return dec_tuple(pg, node, in);
        return dec_record(pg, node, in);
    case K_ARRAY:
        return dec_array(pg, node, in);
    default:
        Py_RETURN_NONE;
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* decoding sparse records straight to JSON                                                                     */

/* decode_json writes each sparse record as the JSON that orjson.dumps writes for the dict `decode` returns with
 * its empty values left out: fields in schema order, null and "" fields absent, strings escaped as orjson escapes
 * them (", \ and the control characters, nothing else), ints in decimal, booleans as true/false, and floats as
 * the caller's float_json (orjson.dumps itself) writes them. Strings are checked to be UTF-8 by the same decoder
 * that `decode` uses, so both accept and refuse the same input. No Python object is made per record except the
 * JSON bytes and, for the fields the caller asks for, a dict of their values (`projections`). */

#define MAX_PROJECT 8

typedef struct Json {
    char *buf; /* one record's JSON, reused from record to record */
    Py_ssize_t len, cap;
    PyObject *projections; /* list: per sparse record, a dict of its projected non-null fields */
    PyObject *project[MAX_PROJECT]; /* interned field names */
    Py_ssize_t nproject;
    PyObject *float_json;
} Json;

/* the character after the backslash when a byte must be escaped ('u': \u00XX), 0 when it is copied as is */
static unsigned char json_escape[256];
static const char hex_digits[] = "0123456789abcdef";

static void json_escape_init(void)
{
    for (int c = 0; c < 0x20; c++)
        json_escape[c] = 'u';
    json_escape['\b'] = 'b';
    json_escape['\t'] = 't';
    json_escape['\n'] = 'n';
    json_escape['\f'] = 'f';
    json_escape['\r'] = 'r';
    json_escape['"'] = '"';
    json_escape['\\'] = '\\';
}

static int json_grow(Json *j, Py_ssize_t need)
{
    Py_ssize_t cap = j->cap;
    if (need > PY_SSIZE_T_MAX / 2 - j->len) {
        PyErr_NoMemory();
        return -1;
    }
    while (cap - j->len < need)
        cap *= 2;
    char *buf = PyMem_Realloc(j->buf, cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    j->buf = buf;
    j->cap = cap;
    return 0;
}

static inline int json_reserve(Json *j, Py_ssize_t n)
{
    return (j->cap - j->len >= n) ? 0 : json_grow(j, n);
}

static inline char *put_escape(char *o, unsigned char c)
{
    unsigned char e = json_escape[c];
    *o++ = '\\';
    *o++ = (char)e;
    if (e == 'u') {
        *o++ = '0';
        *o++ = '0';
        *o++ = hex_digits[c >> 4];
        *o++ = hex_digits[c & 15];
    }
    return o;
}

/* `"` + the escaped bytes + `"`; the caller reserved JSON_STRING_ROOM(n) bytes. `readable` bytes from p on may
 * be read (at least n; more lets the last bytes go 16 at a time too). */
#define JSON_STRING_ROOM(n) (6 * (n) + 2 + 16)
static void json_put_string(Json *j, const unsigned char *p, Py_ssize_t n, Py_ssize_t readable)
{
    char *o = j->buf + j->len;
    Py_ssize_t i = 0;
    *o++ = '"';
#if defined(__SSE2__) && defined(__GNUC__)
    /* 16 bytes at a time: copy the block, then keep the part before its first byte to escape (or the string's
     * end). The 16 bytes written fit: at most 6 * i + 1 bytes were written so far of the 6 * n + 18 reserved. */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), last_control = _mm_set1_epi8(0x1F);
    while (i < n && i + 16 <= readable) {
        __m128i block = _mm_loadu_si128((const __m128i *)(p + i));
        _mm_storeu_si128((__m128i *)o, block);
        __m128i control = _mm_cmpeq_epi8(_mm_max_epu8(block, last_control), last_control); /* bytes <= 0x1F */
        __m128i hits = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(block, quote), _mm_cmpeq_epi8(block, backslash)),
                                    control);
        unsigned int mask = (unsigned int)_mm_movemask_epi8(hits);
        if (n - i < 16)
            mask &= (1u << (n - i)) - 1; /* the bytes after the string's end are not ours */
        if (mask == 0) {
            Py_ssize_t step = n - i < 16 ? n - i : 16;
            i += step;
            o += step;
            continue;
        }
        unsigned int k = (unsigned int)__builtin_ctz(mask);
        o += k;
        i += k;
        o = put_escape(o, p[i++]);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = p[i];
        if (json_escape[c] == 0)
            *o++ = (char)c;
        else
            o = put_escape(o, c);
    }
    *o++ = '"';
    j->len = o - j->buf;
}

static void json_put_long(Json *j, int64_t v) /* the caller reserved 20 bytes */
{
    char digits[20];
    int k = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[k++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    char *o = j->buf + j->len;
    if (v < 0)
        *o++ = '-';
    while (k > 0)
        *o++ = digits[--k];
    j->len = o - j->buf;
}

#define KEY_ROOM 32

static inline void put_key(Json *j, const char *key, Py_ssize_t key_len) /* the caller reserved KEY_ROOM more */
{
#if defined(__SSE2__)
    if (key_len <= KEY_ROOM) {
        _mm_storeu_si128((__m128i *)(j->buf + j->len), _mm_loadu_si128((const __m128i *)key));
        _mm_storeu_si128((__m128i *)(j->buf + j->len + 16), _mm_loadu_si128((const __m128i *)(key + 16)));
        j->len += key_len;
        return;
    }
#endif
    memcpy(j->buf + j->len, key, key_len);
    j->len += key_len;
}

/* `,"name":` for a field of a sparse record (PyMem), escaped like a value. */
static int json_key_for(Node *field)
{
    Py_ssize_t size;
    const char *name = PyUnicode_AsUTF8AndSize(field->key, &size);
    if (name == NULL)
        return -1;
    /* KEY_ROOM + 1 bytes at least: keys that short are copied (from byte 0 or 1) in two 16-byte moves */
    Py_ssize_t room = JSON_STRING_ROOM(size) + 2 < KEY_ROOM + 1 ? KEY_ROOM + 1 : JSON_STRING_ROOM(size) + 2;
    Json j = {PyMem_Calloc(1, room), 0, room, NULL, {NULL}, 0, NULL};
    if (j.buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    j.buf[j.len++] = ',';
    json_put_string(&j, (const unsigned char *)name, size, size);
    j.buf[j.len++] = ':';
    field->json_key = j.buf;
    field->json_key_len = j.len;
    return 0;
}

static int int_range_error(In *in, Node *node, Py_ssize_t at)
{
    PyErr_Format(PyExc_ValueError, "%U: int at offset %zd is out of the 32-bit range", node->label, at);
    (void)in;
    return -1;
}

/* One present (non-null) field's value, after its branch byte, as JSON (nothing for ""). */
static int json_field(Json *j, Node *field, In *in, int first)
{
    const char *key = field->json_key + first;
    Py_ssize_t key_len = field->json_key_len - first;
    switch (field->kind) {
    case K_STRING: {
        Py_ssize_t size;
        if (read_size(in, field, &size) < 0)
            return -1;
        const unsigned char *p = in->buf + in->pos;
        in->pos += size;
        if (size == 0)
            return 0; /* an empty value: left out */
        if (!is_ascii(p, size)) { /* the check `decode` makes, with its error */
            PyObject *text = PyUnicode_DecodeUTF8((const char *)p, size, NULL);
            if (text == NULL)
                return -1;
            Py_DECREF(text);
        }
        if (size > (PY_SSIZE_T_MAX / 8) - key_len) {
            PyErr_NoMemory();
            return -1;
        }
        if (json_reserve(j, KEY_ROOM + key_len + JSON_STRING_ROOM(size)) < 0)
            return -1;
        put_key(j, key, key_len);
        json_put_string(j, p, size, in->end - (p - in->buf));
        return 1;
    }
    case K_INT:
    case K_LONG: {
        int64_t value;
        Py_ssize_t at = in->pos;
        if (read_long_fast(in, field, &value) < 0)
            return -1;
        if (field->kind == K_INT && (value < INT32_MIN || value > INT32_MAX))
            return int_range_error(in, field, at);
        if (json_reserve(j, KEY_ROOM + key_len + 20) < 0)
            return -1;
        put_key(j, key, key_len);
        json_put_long(j, value);
        return 1;
    }
    case K_BOOLEAN: {
        if (in->pos >= in->end)
            return truncated(in, field);
        unsigned int byte = in->buf[in->pos++];
        if (byte > 1) {
            PyErr_Format(PyExc_ValueError, "%U: boolean byte %u at offset %zd", field->label, byte, in->pos - 1);
            return -1;
        }
        if (json_reserve(j, KEY_ROOM + key_len + 5) < 0)
            return -1;
        put_key(j, key, key_len);
        memcpy(j->buf + j->len, byte ? "true" : "false", byte ? 4 : 5);
        j->len += byte ? 4 : 5;
        return 1;
    }
    case K_FLOAT:
    case K_DOUBLE: {
        Py_ssize_t size = field->kind == K_DOUBLE ? 8 : 4;
        if (in->end - in->pos < size)
            return truncated(in, field);
        const char *p = (const char *)in->buf + in->pos;
        in->pos += size;
        double d = size == 8 ? PyFloat_Unpack8(p, 1) : PyFloat_Unpack4(p, 1);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
        PyObject *number = PyFloat_FromDouble(d);
        if (number == NULL)
            return -1;
        PyObject *text = PyObject_CallOneArg(j->float_json, number);
        Py_DECREF(number);
        if (text == NULL)
            return -1;
        if (!PyBytes_Check(text)) {
            Py_DECREF(text);
            PyErr_Format(PyExc_TypeError, "%U: float_json must return bytes", field->label);
            return -1;
        }
        int r = json_reserve(j, KEY_ROOM + key_len + PyBytes_GET_SIZE(text));
        if (r == 0) {
            put_key(j, key, key_len);
            memcpy(j->buf + j->len, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
            j->len += PyBytes_GET_SIZE(text);
        }
        Py_DECREF(text);
        return r < 0 ? -1 : 1;
    }
    default:
        PyErr_Format(PyExc_ValueError, "%U: bytes have no JSON form", field->label);
        return -1;
    }
}

static PyObject *dec_sparse_json(Program *pg, Node *node, In *in)
{
    Json *j = in->json;
    PyObject *keys[MAX_PROJECT], *values[MAX_PROJECT];
    Py_ssize_t projected = 0;
    PyObject *result = NULL, *dict = NULL;
    int first = 1;
    j->len = 0;
    if (json_reserve(j, 2) < 0)
        return NULL;
    j->buf[j->len++] = '{';
    int present;
    for (Py_ssize_t i = 0; (present = next_present(pg, node, in, &i)) > 0; i++) {
        Node *field = pg->nodes + node->first + i;
        unsigned int branch = in->buf[in->pos];
        for (Py_ssize_t k = 0; k < j->nproject; k++)
            if (field->key == j->project[k]) {
                In peek = *in;
                peek.json = NULL;
                PyObject *value = dec_value(pg, field, &peek); /* checks the branch byte */
                if (value == NULL)
                    goto fail;
                keys[projected] = field->key;
                values[projected++] = value;
                break;
            }
        if (branch != 2) {
            PyErr_Format(PyExc_ValueError, "%U: union branch %u at offset %zd (expected 0 or 1)", field->label,
                         branch, in->pos);
            goto fail;
        }
        in->pos++;
        int written = json_field(j, field, in, first);
        if (written < 0)
            goto fail;
        if (written)
            first = 0;
    }
    if (present < 0 || json_reserve(j, 1) < 0)
        goto fail;
    j->buf[j->len++] = '}';
    result = PyBytes_FromStringAndSize(j->buf, j->len);
    if (result == NULL)
        goto fail;
    dict = dict_of(keys, values, projected);
    if (dict == NULL || PyList_Append(j->projections, dict) < 0)
        goto fail;
    Py_DECREF(dict);
    for (Py_ssize_t k = 0; k < projected; k++)
        Py_DECREF(values[k]);
    return result;
fail:
    for (Py_ssize_t k = 0; k < projected; k++)
        Py_DECREF(values[k]);
    Py_XDECREF(dict);
    Py_XDECREF(result);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the Program type                                                                                             */

static void program_clear_nodes(Program *self)
{
    if (self->nodes == NULL)
        return;
    for (Py_ssize_t i = 0; i < self->nnodes; i++) {
        Py_XDECREF(self->nodes[i].key);
        Py_XDECREF(self->nodes[i].dflt);
        Py_XDECREF(self->nodes[i].label);
        Py_XDECREF(self->nodes[i].index);
        Py_XDECREF(self->nodes[i].names);
        Py_XDECREF(self->nodes[i].model);
        PyMem_Free(self->nodes[i].json_key);
        PyMem_Free(self->nodes[i].by_key);
        if (self->nodes[i].shapes != NULL) {
            for (Py_ssize_t j = 0; j < SHAPES; j++)
                Py_XDECREF(self->nodes[i].shapes[j].model);
            PyMem_Free(self->nodes[i].shapes);
        }
    }
    PyMem_Free(self->nodes);
    self->nodes = NULL;
    self->nnodes = 0;
}

static void program_dealloc(Program *self)
{
    program_clear_nodes(self);
    for (Py_ssize_t i = 0; i < STR_CACHE_SIZE; i++)
        Py_CLEAR(self->str_cache[i].str);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int bad_program(Py_ssize_t i, const char *why)
{
    PyErr_Format(PyExc_ValueError, "program node %zd: %s", i, why);
    return -1;
}

/* The fewest bytes each node's value can take. An array block's item count is checked against the bytes left,
 * which bounds allocations only if every item takes at least one byte: refuse arrays of items that can take none.
 * A sparse record's fields must be nullable primitives (no Python code can run while their values are borrowed). */
static int program_check_sizes(Program *self)
{
    Py_ssize_t *min_size = PyMem_New(Py_ssize_t, self->nnodes);
    if (min_size == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int r = 0;
    for (Py_ssize_t i = self->nnodes - 1; i >= 0 && r == 0; i--) { /* children come after their parent */
        Node *node = self->nodes + i;
        Py_ssize_t size = 0;
        switch (node->kind) {
        case K_NULL: size = 0; break;
        case K_FLOAT: size = 4; break;
        case K_DOUBLE: size = 8; break;
        case K_ARRAY:
            size = 1;
            if (min_size[node->first] < 1)
                r = bad_program(i, "array items that can take zero bytes");
            break;
        case K_RECORD:
            for (Py_ssize_t f = node->first; f < node->first + node->count; f++) {
                Node *field = self->nodes + f;
                if ((node->flags & F_SPARSE) && (!(field->flags & F_NULLABLE) || field->kind == K_RECORD ||
                                                 field->kind == K_ARRAY))
                    r = bad_program(f, "a sparse record's fields must be nullable primitives");
                size += min_size[f];
            }
            break;
        default: size = 1;
        }
        min_size[i] = (node->flags & F_NULLABLE) ? 1 : size;
    }
    PyMem_Free(min_size);
    return r;
}

/* Checks the program's structure (kinds, indices, a record's fields after it, no cycles) so that running it
 * can trust it: a node's children always have higher indices, so recursion depth is bounded by the node count. */
static int program_load(Program *self, PyObject *nodes)
{
    if (!PyTuple_Check(nodes) || PyTuple_GET_SIZE(nodes) == 0) {
        PyErr_SetString(PyExc_TypeError, "Program(nodes): a non-empty tuple of node tuples");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(nodes);
    self->nodes = PyMem_New(Node, n);
    if (self->nodes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(self->nodes, 0, n * sizeof(Node));
    self->nnodes = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Node *node = self->nodes + i;
        PyObject *key, *dflt, *label;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(nodes, i), "iiOOUnn;a node is (kind, flags, key, default, label, "
                              "first, count)", &node->kind, &node->flags, &key, &dflt, &label, &node->first,
                              &node->count))
            return -1;
        if (node->kind < 0 || node->kind >= K_COUNT)
            return bad_program(i, "unknown kind");
        if ((node->flags & F_TUPLE) && (node->kind != K_RECORD || (node->flags & F_SPARSE)))
            return bad_program(i, "only a non-sparse record can be decoded as a tuple");
        if (key != Py_None) {
            if (!PyUnicode_CheckExact(key))
                return bad_program(i, "key must be a str");
            Py_INCREF(key);
            PyUnicode_InternInPlace(&key);
            node->key = key;
        }
        if (node->flags & F_DEFAULT) {
            Py_INCREF(dflt);
            node->dflt = dflt;
        }
        Py_INCREF(label);
        node->label = label;
        if (node->kind == K_RECORD) {
            if (node->first <= i || node->count < 0 || node->first > n - node->count)
                return bad_program(i, "record fields out of range");
            node->names = PyTuple_New(node->count);
            if (node->names == NULL)
                return -1;
            for (Py_ssize_t f = node->first; f < node->first + node->count; f++) {
                PyObject *name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(nodes, f), 2);
                if (!PyUnicode_CheckExact(name))
                    return bad_program(f, "a record field needs a key");
                Py_INCREF(name);
                PyUnicode_InternInPlace(&name);
                PyTuple_SET_ITEM(node->names, f - node->first, name);
            }
#ifdef FAST_DICT
            if (!(node->flags & F_SPARSE) && node->count > 0) {
                PyObject *model = new_model(&PyTuple_GET_ITEM(node->names, 0), node->count);
                if (model == NULL && PyErr_Occurred())
                    return -1;
                if (model != NULL && dict_layout_ok && model_usable(model, node->names))
                    node->model = model;
                else
                    Py_XDECREF(model); /* duplicate names or another layout: the public path */
            }
#endif
            if (node->flags & F_SPARSE) {
                /* Our own index, keyed by the interned names: a row built from literals finds them by identity. */
                node->index = PyDict_New();
                if (node->index == NULL)
                    return -1;
                for (Py_ssize_t f = 0; f < node->count; f++) {
                    PyObject *position = PyLong_FromSsize_t(f);
                    int r = position == NULL ? -1 : PyDict_SetItem(node->index, PyTuple_GET_ITEM(node->names, f),
                                                                   position);
                    Py_XDECREF(position);
                    if (r < 0)
                        return -1;
                }
                if (PyDict_GET_SIZE(node->index) != node->count)
                    return bad_program(i, "duplicate field names");
                size_t size = 16;
                while (size < 2 * (size_t)node->count)
                    size *= 2;
                node->by_key = PyMem_Calloc(size, sizeof(KeySlot));
                if (node->by_key == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                node->by_key_mask = size - 1;
                for (Py_ssize_t f = 0; f < node->count; f++) {
                    PyObject *name = PyTuple_GET_ITEM(node->names, f);
                    size_t at = key_slot(node, name);
                    while (node->by_key[at].key != NULL)
                        at = (at + 1) & node->by_key_mask;
                    node->by_key[at].key = name;
                    node->by_key[at].at = f;
                }
#ifdef FAST_DICT
                node->shapes = dict_layout_ok ? PyMem_Calloc(SHAPES, sizeof(Shape)) : NULL;
                if (dict_layout_ok && node->shapes == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
#endif
            }
        }
        else if (node->kind == K_ARRAY) {
            if (node->first <= i || node->first >= n)
                return bad_program(i, "array item out of range");
        }
        else if (node->flags & F_SPARSE)
            return bad_program(i, "only records can be sparse");
    }
    if (self->nodes[0].kind != K_RECORD)
        return bad_program(0, "the root must be a record");
    /* Fields come after their record, so their keys are loaded only now. */
    for (Py_ssize_t i = 0; i < n; i++)
        if (self->nodes[i].flags & F_SPARSE)
            for (Py_ssize_t f = self->nodes[i].first; f < self->nodes[i].first + self->nodes[i].count; f++)
                if (self->nodes[f].key == NULL || json_key_for(self->nodes + f) < 0)
                    return self->nodes[f].key == NULL ? bad_program(f, "a record field needs a key") : -1;
    return program_check_sizes(self);
}

static PyObject *program_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *nodes;
    static char *kwlist[] = {"nodes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Program", kwlist, &nodes))
        return NULL;
    Program *self = (Program *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->size_hint = 256;
    if (program_load(self, nodes) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

PyDoc_STRVAR(encode_doc, "encode(record, prefix=b'') -> bytes\n\n"
             "prefix followed by the record as schemaless Avro. TypeError/ValueError/KeyError if it does not fit.");

static PyObject *program_encode(Program *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer prefix = {0};
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        PyErr_SetString(PyExc_TypeError, "encode() takes positional arguments only");
        return NULL;
    }
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "encode(record, prefix=b'')");
        return NULL;
    }
    if (nargs == 2 && PyObject_GetBuffer(args[1], &prefix, PyBUF_SIMPLE) < 0)
        return NULL;
    Out o;
    o.cap = self->size_hint + prefix.len;
    o.len = 0;
    o.bytes = PyBytes_FromStringAndSize(NULL, o.cap);
    if (o.bytes == NULL)
        goto fail;
    o.p = PyBytes_AS_STRING(o.bytes);
    if (prefix.len > 0) {
        memcpy(o.p, prefix.buf, prefix.len);
        o.len = prefix.len;
    }
    if (enc_record(self, self->nodes, args[0], &o) < 0)
        goto fail;
    if (nargs == 2)
        PyBuffer_Release(&prefix);
    Py_ssize_t hint = o.len + o.len / 8;
    self->size_hint = hint < 256 ? 256 : (hint > MAX_HINT ? MAX_HINT : hint);
    if (_PyBytes_Resize(&o.bytes, o.len) < 0)
        return NULL;
    return o.bytes;
fail:
    if (nargs == 2)
        PyBuffer_Release(&prefix);
    Py_XDECREF(o.bytes);
    return NULL;
}

PyDoc_STRVAR(decode_doc, "decode(buf, pos=0) -> (record, end)\n\n"
             "The record that starts at pos, and the offset after it. ValueError (or UnicodeDecodeError, a "
             "ValueError) on corrupt input.");

static PyObject *program_decode(Program *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer view;
    Py_ssize_t pos = 0;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "decode(buf, pos=0)");
        return NULL;
    }
    if (nargs == 2) {
        pos = PyLong_AsSsize_t(args[1]);
        if (pos == -1 && PyErr_Occurred())
            return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "offset %zd is outside the %zd bytes", pos, view.len);
        return NULL;
    }
    In in = {(const unsigned char *)view.buf, pos, view.len};
    /* The result is a tree (no cycles) and no Python code runs meanwhile: pausing the cyclic GC saves the
     * collections that the thousands of new dicts and lists would trigger, each traversing them in vain. */
    int gc_was_enabled = PyGC_Disable();
    PyObject *record = dec_record(self, self->nodes, &in);
    if (gc_was_enabled)
        PyGC_Enable();
    PyBuffer_Release(&view);
    if (record == NULL)
        return NULL;
    PyObject *result = Py_BuildValue("(Nn)", record, in.pos);
    return result;
}

PyDoc_STRVAR(decode_json_doc, "decode_json(buf, pos, project, float_json) -> (record, end, projections)\n\n"
             "As decode, but every sparse record is its JSON (bytes): the orjson.dumps of the dict decode returns, "
             "without its empty (\"\") values. projections: per sparse record, a dict of those of its non-null "
             "fields named in project (a tuple of at most 8 names). float_json(float) -> bytes writes float and "
             "double values (orjson.dumps). ValueError on corrupt input, as decode.");

static PyObject *program_decode_json(Program *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer view;
    Py_ssize_t pos;
    if ((kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) || nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_json(buf, pos, project, float_json)");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    PyObject *project = args[2];
    if (!PyTuple_Check(project) || PyTuple_GET_SIZE(project) > MAX_PROJECT) {
        PyErr_Format(PyExc_TypeError, "decode_json: project must be a tuple of at most %d names", MAX_PROJECT);
        return NULL;
    }
    if (!PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "decode_json: float_json must be callable");
        return NULL;
    }
    Json json = {NULL, 0, 4096, NULL, {NULL}, 0, args[3]};
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(project); k++) {
        PyObject *name = PyTuple_GET_ITEM(project, k);
        if (!PyUnicode_CheckExact(name)) {
            PyErr_SetString(PyExc_TypeError, "decode_json: project must be a tuple of str");
            goto fail;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name); /* field keys are interned: compared by identity */
        json.project[json.nproject++] = name;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        goto fail;
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "offset %zd is outside the %zd bytes", pos, view.len);
        goto fail;
    }
    json.buf = PyMem_Malloc(json.cap);
    json.projections = PyList_New(0);
    if (json.buf == NULL || json.projections == NULL) {
        PyBuffer_Release(&view);
        if (json.buf == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    In in = {(const unsigned char *)view.buf, pos, view.len, &json};
    int gc_was_enabled = PyGC_Disable(); /* as in decode */
    PyObject *record = dec_record(self, self->nodes, &in);
    if (gc_was_enabled)
        PyGC_Enable();
    PyBuffer_Release(&view);
    if (record == NULL)
        goto fail;
    PyObject *result = Py_BuildValue("(NnO)", record, in.pos, json.projections);
    Py_XDECREF(json.projections);
    PyMem_Free(json.buf);
    for (Py_ssize_t k = 0; k < json.nproject; k++)
        Py_DECREF(json.project[k]);
    return result;
fail:
    Py_XDECREF(json.projections);
    PyMem_Free(json.buf);
    for (Py_ssize_t k = 0; k < json.nproject; k++)
        Py_DECREF(json.project[k]);
    return NULL;
}

static PyMethodDef program_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))program_encode, METH_FASTCALL | METH_KEYWORDS, encode_doc},
    {"decode", (PyCFunction)(void (*)(void))program_decode, METH_FASTCALL | METH_KEYWORDS, decode_doc},
    {"decode_json", (PyCFunction)(void (*)(void))program_decode_json, METH_FASTCALL | METH_KEYWORDS,
     decode_json_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._avrocodec.Program",
    .tp_basicsize = sizeof(Program),
    .tp_dealloc = (destructor)program_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Program(nodes): an Avro record schema compiled by schemas.native, with encode and decode.",
    .tp_methods = program_methods,
    .tp_new = program_new,
};

static struct PyModuleDef avrocodec_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schemas._avrocodec",
    .m_doc = "Schema-driven Avro binary encoder/decoder (see schemas/native.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__avrocodec(void)
{
    if (PyType_Ready(&ProgramType) < 0)
        return NULL;
    json_escape_init();
#ifdef FAST_DICT
    PyObject *probe_names = Py_BuildValue("(sss)", "probe_a", "probe_b", "probe_c");
    if (probe_names == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < 3; i++)
        PyUnicode_InternInPlace(&PyTuple_GET_ITEM(probe_names, i));
    PyObject *probe = new_model(&PyTuple_GET_ITEM(probe_names, 0), 3);
    if (probe == NULL && PyErr_Occurred()) {
        Py_DECREF(probe_names);
        return NULL;
    }
    dict_layout_ok = probe != NULL && model_usable(probe, probe_names);
    Py_XDECREF(probe);
    Py_DECREF(probe_names);
#endif
    PyObject *module = PyModule_Create(&avrocodec_module);
    if (module == NULL)
        return NULL;
#ifdef FAST_DICT
    if (PyModule_AddIntConstant(module, "FAST_DICTS", dict_layout_ok) < 0) {
#else
    if (PyModule_AddIntConstant(module, "FAST_DICTS", 0) < 0) {
#endif
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&ProgramType);
    if (PyModule_AddObject(module, "Program", (PyObject *)&ProgramType) < 0) {
        Py_DECREF(&ProgramType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
