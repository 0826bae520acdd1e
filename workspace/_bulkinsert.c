/* Many-row INSERTs into the workspace store without copying each value (workspace/bulkinsert.py).
 *
 * Python's sqlite3 binds every text value with SQLITE_TRANSIENT: SQLite mallocs and copies it (and frees it at
 * the next bind), ~800 instructions per value. Here text and blob values are bound with SQLITE_STATIC, pointing
 * at the Python objects' own UTF-8 buffers, which the caller's list keeps alive until the statement is reset and
 * its bindings cleared. Everything else (transactions, savepoints, other SQL) stays on the Python connection.
 *
 * The connection handle is read from the sqlite3.Connection object (CPython 3.11-3.13 keep ``sqlite3 *db`` as
 * the first field), and the SQLite functions are looked up through the _sqlite3 module's own handle, so this
 * code always calls the library instance that owns that connection. The Python side checks the handle (the
 * database file it names) before use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <limits.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
#error "the sqlite3.Connection layout is only known for CPython 3.11-3.13"
#endif

typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef long long sqlite3_int64;
#define SQLITE_OK 0
#define SQLITE_ROW 100
#define SQLITE_DONE 101
#define SQLITE_NOMEM 7
#define SQLITE_CORRUPT 11
#define SQLITE_TOOBIG 18
#define SQLITE_CONSTRAINT 19
#define SQLITE_MISMATCH 20
#define SQLITE_NOTADB 26
#define SQLITE_STATIC ((void (*)(void *))0)
#define MAX_STATEMENTS 256 /* prepared statements kept: column sets are few, but a client could send many */

static struct {
    int (*prepare_v2)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);
    int (*step)(sqlite3_stmt *);
    int (*reset)(sqlite3_stmt *);
    int (*clear_bindings)(sqlite3_stmt *);
    int (*finalize)(sqlite3_stmt *);
    int (*bind_text)(sqlite3_stmt *, int, const char *, int, void (*)(void *));
    int (*bind_blob)(sqlite3_stmt *, int, const void *, int, void (*)(void *));
    int (*bind_int64)(sqlite3_stmt *, int, sqlite3_int64);
    int (*bind_double)(sqlite3_stmt *, int, double);
    int (*bind_null)(sqlite3_stmt *, int);
    int (*bind_parameter_count)(sqlite3_stmt *);
    const char *(*errmsg)(sqlite3 *);
    const char *(*db_filename)(sqlite3 *, const char *);
} api;
static int api_loaded = 0;

/* The sqlite3.Connection object's start, as CPython 3.11-3.13 declare it (Modules/_sqlite/connection.h). */
typedef struct {
    PyObject_HEAD
    sqlite3 *db;
} ConnectionHead;

typedef struct {
    PyObject_HEAD
    PyObject *connection; /* keeps the Python connection (and so the handle) alive */
    sqlite3 *db;
    PyObject *statements; /* dict: SQL text -> capsule of a prepared statement */
    PyObject *errors;     /* dict: "OperationalError", ... -> sqlite3's exception classes */
} Inserter;

static int load_api(const char *library) {
    if (api_loaded) return 0;
    void *handle = dlopen(library, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) {
        PyErr_Format(PyExc_ImportError, "the _sqlite3 module is not loaded: %s", dlerror());
        return -1;
    }
#define LOAD(field, name)                                                                           \
    *(void **)(&api.field) = dlsym(handle, name);                                                   \
    if (api.field == NULL) {                                                                        \
        PyErr_Format(PyExc_ImportError, "%s is not reachable through the _sqlite3 module", name);    \
        return -1;                                                                                  \
    }
    LOAD(prepare_v2, "sqlite3_prepare_v2")
    LOAD(step, "sqlite3_step")
    LOAD(reset, "sqlite3_reset")
    LOAD(clear_bindings, "sqlite3_clear_bindings")
    LOAD(finalize, "sqlite3_finalize")
    LOAD(bind_text, "sqlite3_bind_text")
    LOAD(bind_blob, "sqlite3_bind_blob")
    LOAD(bind_int64, "sqlite3_bind_int64")
    LOAD(bind_double, "sqlite3_bind_double")
    LOAD(bind_null, "sqlite3_bind_null")
    LOAD(bind_parameter_count, "sqlite3_bind_parameter_count")
    LOAD(errmsg, "sqlite3_errmsg")
    LOAD(db_filename, "sqlite3_db_filename")
#undef LOAD
    api_loaded = 1; /* the handle stays open: _sqlite3 is never unloaded */
    return 0;
}

static void raise_sqlite(Inserter *self, int rc) {
    const char *kind;
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH: kind = "IntegrityError"; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: kind = "DatabaseError"; break;
    case SQLITE_TOOBIG: kind = "DataError"; break;
    case SQLITE_NOMEM: PyErr_NoMemory(); return;
    default: kind = "OperationalError";
    }
    PyObject *cls = PyDict_GetItemString(self->errors, kind);
    PyErr_SetString(cls != NULL ? cls : PyExc_RuntimeError, api.errmsg(self->db));
}

static void finalize_all(Inserter *self) {
    if (self->statements == NULL) return;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(self->statements, &pos, &key, &value)) {
        sqlite3_stmt *stmt = PyCapsule_GetPointer(value, NULL);
        if (stmt != NULL) api.finalize(stmt);
    }
    PyErr_Clear();
    PyDict_Clear(self->statements);
}

static PyObject *Inserter_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *connection, *connection_type, *errors;
    const char *library;
    static char *kwlist[] = {"connection", "connection_type", "library", "errors", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!sO!", kwlist, &connection, &PyType_Type, &connection_type,
                                     &library, &PyDict_Type, &errors))
        return NULL;
    if (Py_TYPE(connection) != (PyTypeObject *)connection_type) {
        PyErr_SetString(PyExc_TypeError, "connection must be exactly a sqlite3.Connection");
        return NULL;
    }
    if (load_api(library) < 0) return NULL;
    sqlite3 *db = ((ConnectionHead *)connection)->db;
    if (db == NULL) {
        PyErr_SetString(PyExc_ValueError, "the connection is closed");
        return NULL;
    }
    Inserter *self = (Inserter *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->statements = PyDict_New();
    if (self->statements == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(connection);
    self->connection = connection;
    Py_INCREF(errors);
    self->errors = errors;
    self->db = db;
    return (PyObject *)self;
}

static void Inserter_dealloc(Inserter *self) {
    if (self->db != NULL) finalize_all(self);
    Py_CLEAR(self->statements);
    Py_CLEAR(self->errors);
    Py_CLEAR(self->connection);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Inserter_filename(Inserter *self, PyObject *Py_UNUSED(ignored)) {
    if (self->db == NULL) Py_RETURN_NONE;
    const char *name = api.db_filename(self->db, "main");
    if (name == NULL) Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(name);
}

static PyObject *Inserter_close(Inserter *self, PyObject *Py_UNUSED(ignored)) {
    if (self->db != NULL) finalize_all(self);
    self->db = NULL;
    Py_RETURN_NONE;
}

static sqlite3_stmt *statement(Inserter *self, PyObject *sql) {
    PyObject *cached = PyDict_GetItemWithError(self->statements, sql);
    if (cached != NULL) return PyCapsule_GetPointer(cached, NULL);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(sql, &size);
    if (text == NULL) return NULL;
    if (size >= INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "SQL text too long");
        return NULL;
    }
    if (PyDict_GET_SIZE(self->statements) >= MAX_STATEMENTS) finalize_all(self); /* as sqlite3's LRU bound */
    sqlite3_stmt *stmt = NULL;
    int rc = api.prepare_v2(self->db, text, (int)size + 1, &stmt, NULL);
    if (rc != SQLITE_OK || stmt == NULL) {
        if (stmt != NULL) api.finalize(stmt);
        if (rc == SQLITE_OK)
            PyErr_SetString(PyExc_ValueError, "empty SQL statement");
        else
            raise_sqlite(self, rc);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(stmt, NULL, NULL);
    if (capsule == NULL || PyDict_SetItem(self->statements, sql, capsule) < 0) {
        Py_XDECREF(capsule);
        api.finalize(stmt);
        return NULL;
    }
    Py_DECREF(capsule);
    return stmt;
}

/* Bind one value as Python's sqlite3 would store it (str -> TEXT, int -> INTEGER, float -> REAL, None -> NULL,
 * bytes -> BLOB), without copying text or blobs. */
static int bind(Inserter *self, sqlite3_stmt *stmt, int index, PyObject *value) {
    int rc;
    if (PyUnicode_Check(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL) return -1;
        if (size > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "string longer than INT_MAX bytes");
            return -1;
        }
        rc = api.bind_text(stmt, index, text, (int)size, SQLITE_STATIC);
    } else if (value == Py_None) {
        rc = api.bind_null(stmt, index);
    } else if (PyLong_Check(value)) {
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) {
            PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to SQLite INTEGER");
            return -1;
        }
        if (number == -1 && PyErr_Occurred()) return -1;
        rc = api.bind_int64(stmt, index, number);
    } else if (PyFloat_Check(value)) {
        rc = api.bind_double(stmt, index, PyFloat_AS_DOUBLE(value));
    } else if (PyBytes_Check(value)) {
        if (PyBytes_GET_SIZE(value) > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "BLOB longer than INT_MAX bytes");
            return -1;
        }
        rc = api.bind_blob(stmt, index, PyBytes_AS_STRING(value), (int)PyBytes_GET_SIZE(value), SQLITE_STATIC);
    } else {
        PyObject *cls = PyDict_GetItemString(self->errors, "ProgrammingError");
        PyErr_Format(cls != NULL ? cls : PyExc_TypeError, "Error binding parameter %d: type '%s' is not supported",
                     index, Py_TYPE(value)->tp_name);
        return -1;
    }
    if (rc != SQLITE_OK) {
        raise_sqlite(self, rc);
        return -1;
    }
    return 0;
}

/* insert(sql, fixed, values, start, stop, step): for each slice values[i:i + step] (i = start, start + step, ...
 * < stop), one execution of ``sql`` with the ``fixed`` values as parameters 1..len(fixed), then the slice. */
static PyObject *Inserter_insert(Inserter *self, PyObject *args) {
    PyObject *sql, *fixed, *values;
    Py_ssize_t start, stop, step;
    if (!PyArg_ParseTuple(args, "UO!O!nnn", &sql, &PyList_Type, &fixed, &PyList_Type, &values, &start, &stop,
                          &step))
        return NULL;
    if (self->db == NULL || ((ConnectionHead *)self->connection)->db != self->db) {
        PyErr_SetString(PyExc_ValueError, "the inserter or its connection is closed");
        return NULL;
    }
    if (step <= 0 || start < 0 || stop < start || (stop - start) % step != 0 || stop > PyList_GET_SIZE(values)) {
        PyErr_SetString(PyExc_ValueError, "start, stop and step must cut whole slices of values");
        return NULL;
    }
    sqlite3_stmt *stmt = statement(self, sql);
    if (stmt == NULL) return NULL;
    Py_ssize_t nfixed = PyList_GET_SIZE(fixed);
    if (api.bind_parameter_count(stmt) != nfixed + step) {
        PyObject *cls = PyDict_GetItemString(self->errors, "ProgrammingError");
        PyErr_Format(cls != NULL ? cls : PyExc_ValueError,
                     "Incorrect number of bindings supplied. The current statement uses %d, and there are %zd "
                     "supplied.", api.bind_parameter_count(stmt), nfixed + step);
        return NULL;
    }
    /* Every bound object is held until its execution is over: the GIL is released while SQLite reads them. */
    PyObject **held = PyMem_New(PyObject *, (size_t)step);
    if (held == NULL) return PyErr_NoMemory();
    Py_ssize_t nheld = 0;
    PyObject *result = NULL;
    PyObject *constants = PyList_AsTuple(fixed); /* a snapshot: bound once, read by every execution */
    if (constants == NULL) goto done;
    for (Py_ssize_t i = 0; i < nfixed; i++)
        if (bind(self, stmt, (int)(i + 1), PyTuple_GET_ITEM(constants, i)) < 0) goto done;
    for (Py_ssize_t pos = start; pos < stop; pos += step) {
        if (pos + step > PyList_GET_SIZE(values)) {
            PyErr_SetString(PyExc_RuntimeError, "values changed size during insert");
            goto done;
        }
        for (Py_ssize_t j = 0; j < step; j++) {
            held[j] = Py_NewRef(PyList_GET_ITEM(values, pos + j));
            nheld = j + 1;
            if (bind(self, stmt, (int)(nfixed + j + 1), held[j]) < 0) goto done;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = api.step(stmt);
        Py_END_ALLOW_THREADS
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
            raise_sqlite(self, api.reset(stmt));
            goto done;
        }
        rc = api.reset(stmt);
        if (rc != SQLITE_OK) {
            raise_sqlite(self, rc);
            goto done;
        }
        while (nheld > 0) Py_DECREF(held[--nheld]);
    }
    result = Py_NewRef(Py_None);
done:
    api.reset(stmt);
    api.clear_bindings(stmt); /* no pointer into Python objects outlives this call */
    while (nheld > 0) Py_DECREF(held[--nheld]);
    PyMem_Free(held);
    Py_XDECREF(constants);
    return result;
}

static PyMethodDef Inserter_methods[] = {
    {"insert", (PyCFunction)Inserter_insert, METH_VARARGS,
     "insert(sql, fixed, values, start, stop, step): run sql once per slice of step values."},
    {"filename", (PyCFunction)Inserter_filename, METH_NOARGS, "The database file the handle names."},
    {"close", (PyCFunction)Inserter_close, METH_NOARGS, "Finalize every prepared statement."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject InserterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "workspace._bulkinsert.Inserter",
    .tp_basicsize = sizeof(Inserter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Inserter_new,
    .tp_dealloc = (destructor)Inserter_dealloc,
    .tp_methods = Inserter_methods,
    .tp_doc = "Inserter(connection, connection_type, library, errors): many-row INSERTs on a sqlite3 connection.",
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_bulkinsert", .m_size = -1};

PyMODINIT_FUNC PyInit__bulkinsert(void) {
    if (PyType_Ready(&InserterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Inserter", (PyObject *)&InserterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
