/*
 * streams._normalize: the per-event part of streams.normalize (RawEvent dict -> SecurityEvent row) in C.
 *
 * streams/normalize.py stays the reference. It works out, once per EventID, a plan (Activity text, which
 * EventData policy, which Account rule) and, once per list of EventData field names, a layout (which field fills
 * which column and how, the <Data> lines of the EventData XML, which derived columns can apply), and hands both
 * to this module as plain tuples. rows() then builds each row the way normalize._row does, key for key and in the
 * same insertion order: the EventOriginId (UUIDv5: SHA-1 here), TimeGenerated / TimeCollected, the System and AMA
 * columns, the EventData fields copied by position, the derived columns and the EventData XML.
 *
 * Anything outside the common shape gives None for that event and the caller runs the Python normaliser on it:
 * a value of an unexpected type, a missing key, UserData without EventData (parsed with lxml), a layout with a
 * column named twice, times outside 1970..9999, an event without a record id (content fingerprint). So the rows
 * are the Python rows by construction, and every error message comes from the Python code.
 *
 * No Python code runs while a borrowed reference is held, except the cache callbacks of normalize.py
 * (plans, layouts, GUIDs, keywords), which do not touch the event.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ configuration */

enum { ACCOUNT_AUTO = 0, ACCOUNT_TARGET = 1, ACCOUNT_NONE = 2 };
enum { KIND_INT = 1, KIND_GUID = 2 };

static PyObject *cfg_fingerprint;     /* identity.content_fingerprint: the record id of events without one */
static PyObject *cfg_plan_factory;    /* (flavour_is_ama, event_id) -> plan tuple, caches it in `plans` */
static PyObject *cfg_layouts;         /* dict: names tuple -> layout tuple */
static PyObject *cfg_layout_factory;  /* names tuple -> layout tuple, caches it in `layouts` */
static PyObject *cfg_guid_cache;      /* dict: text -> GUID column value or None */
static PyObject *cfg_guid_func;       /* text -> GUID column value or None (fills the cache) */
static PyObject *cfg_keywords_cache;  /* dict: Keywords text -> int */
static PyObject *cfg_keywords_func;   /* Keywords text -> int (fills the cache) */
static PyObject *cfg_level_text;      /* tuple of "0".."255" */
static PyObject *cfg_level_names;     /* tuple of the EventLevelName of levels 0..5 */
static PyObject *cfg_logon_type_names; /* dict: LogonType int -> "2 - Interactive" */
static PyObject *cfg_machine_sids;    /* frozenset */
static PyObject *cfg_machine_names;   /* frozenset */
static PyObject *cfg_mma_levels;      /* tuple: MMA Level text of levels 0..5, then audit success, failure, other */
static PyObject *cfg_source_system;   /* "OpsManager" */
static PyObject *cfg_na;              /* "N/A" */
static PyObject *cfg_machine, *cfg_user;  /* "Machine", "User" */
static PyObject *cfg_xml_open, *cfg_xml_close, *cfg_data_close; /* the EventData element's fixed parts */
static unsigned char namespace_bytes[16];
static int configured;

/* Interned keys: RawEvent fields, provenance fields, item fields, row columns. */
#define KEYS(X) \
    X(k_event_id, "event_id") X(k_time_created, "time_created") X(k_event_record_id, "event_record_id") \
    X(k_computer, "computer") X(k_channel, "channel") X(k_provider_name, "provider_name") X(k_task, "task") \
    X(k_level, "level") X(k_keywords, "keywords") X(k_event_data, "event_data") \
    X(k_user_data_xml, "user_data_xml") X(k_activity_id, "activity_id") X(k_version, "version") \
    X(k_process_id, "process_id") X(k_thread_id, "thread_id") X(k_opcode, "opcode") X(k_user_id, "user_id") \
    X(k_provenance, "provenance") X(k_read_time_us, "read_time_us") X(k_agent_id, "agent_id") \
    X(k_name, "name") X(k_value, "value") \
    X(c_TimeGenerated, "TimeGenerated") X(c_SourceSystem, "SourceSystem") X(c_EventID, "EventID") \
    X(c_Activity, "Activity") X(c_EventOriginId, "EventOriginId") X(c_Computer, "Computer") \
    X(c_EventSourceName, "EventSourceName") X(c_Channel, "Channel") X(c_Task, "Task") X(c_Level, "Level") \
    X(c_EventData, "EventData") X(c_Keywords, "Keywords") X(c_Correlation, "Correlation") \
    X(c_Version, "Version") X(c_SystemProcessId, "SystemProcessId") X(c_SystemThreadId, "SystemThreadId") \
    X(c_EventLevelName, "EventLevelName") X(c_Opcode, "Opcode") X(c_EventRecordId, "EventRecordId") \
    X(c_SystemUserId, "SystemUserId") X(c_MG, "MG") X(c_ManagementGroupName, "ManagementGroupName") \
    X(c_TimeCollected, "TimeCollected") X(c_SourceComputerId, "SourceComputerId") \
    X(c_SubjectUserName, "SubjectUserName") X(c_SubjectDomainName, "SubjectDomainName") \
    X(c_TargetUserName, "TargetUserName") X(c_TargetDomainName, "TargetDomainName") \
    X(c_SubjectAccount, "SubjectAccount") X(c_TargetAccount, "TargetAccount") X(c_Account, "Account") \
    X(c_AccountType, "AccountType") X(c_SubjectUserSid, "SubjectUserSid") X(c_TargetUserSid, "TargetUserSid") \
    X(c_TargetSid, "TargetSid") X(c_NewProcessName, "NewProcessName") X(c_ProcessName, "ProcessName") \
    X(c_FilePath, "FilePath") X(c_Process, "Process") X(c_LogonType, "LogonType") \
    X(c_LogonTypeName, "LogonTypeName")

#define DECLARE(var, text) static PyObject *var;
KEYS(DECLARE)
#undef DECLARE

static int intern_keys(void)
{
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return -1;
    KEYS(INTERN)
#undef INTERN
    return 0;
}

/* ------------------------------------------------------------------------------------------------ SHA-1 */

typedef struct {
    uint32_t h[5];
} Sha1;

static inline uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* One 64-byte block, rounds unrolled with a 16-word rolling schedule (FIPS 180-4, 6.1.2). */
#define SHA1_W(i) (w[(i) & 15] = rol32(w[((i) + 13) & 15] ^ w[((i) + 8) & 15] ^ w[((i) + 2) & 15] ^ w[(i) & 15], 1))
#define SHA1_ROUND(a, b, c, d, e, f, k, x) \
    do { e += rol32(a, 5) + (f) + (k) + (x); b = rol32(b, 30); } while (0)
#define F1(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define F2(b, c, d) ((b) ^ (c) ^ (d))
#define F3(b, c, d) (((b) & (c)) | ((d) & ((b) | (c))))
#define R0(a, b, c, d, e, i) SHA1_ROUND(a, b, c, d, e, F1(b, c, d), 0x5A827999u, w[i])
#define R1(a, b, c, d, e, i) SHA1_ROUND(a, b, c, d, e, F1(b, c, d), 0x5A827999u, SHA1_W(i))
#define R2(a, b, c, d, e, i) SHA1_ROUND(a, b, c, d, e, F2(b, c, d), 0x6ED9EBA1u, SHA1_W(i))
#define R3(a, b, c, d, e, i) SHA1_ROUND(a, b, c, d, e, F3(b, c, d), 0x8F1BBCDCu, SHA1_W(i))
#define R4(a, b, c, d, e, i) SHA1_ROUND(a, b, c, d, e, F2(b, c, d), 0xCA62C1D6u, SHA1_W(i))
#define FIVE(R, i) R(a, b, c, d, e, i); R(e, a, b, c, d, i + 1); R(d, e, a, b, c, i + 2); \
    R(c, d, e, a, b, i + 3); R(b, c, d, e, a, i + 4)

static void sha1_block(Sha1 *s, const unsigned char *p)
{
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) | ((uint32_t)p[4 * i + 2] << 8) |
               (uint32_t)p[4 * i + 3];
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    FIVE(R0, 0); FIVE(R0, 5); FIVE(R0, 10);
    R0(a, b, c, d, e, 15); R1(e, a, b, c, d, 16); R1(d, e, a, b, c, 17); R1(c, d, e, a, b, 18);
    R1(b, c, d, e, a, 19);
    FIVE(R2, 20); FIVE(R2, 25); FIVE(R2, 30); FIVE(R2, 35);
    FIVE(R3, 40); FIVE(R3, 45); FIVE(R3, 50); FIVE(R3, 55);
    FIVE(R4, 60); FIVE(R4, 65); FIVE(R4, 70); FIVE(R4, 75);
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

/* SHA-1 of namespace_bytes + msg[0:len] -> digest[20]. */
static void sha1_namespaced(const char *msg, Py_ssize_t len, unsigned char digest[20])
{
    Sha1 s = {{0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u}};
    unsigned char block[64];
    uint64_t total = 16 + (uint64_t)len;
    memcpy(block, namespace_bytes, 16);
    Py_ssize_t fill = 16, at = 0;
    while (at < len) {
        Py_ssize_t take = 64 - fill < len - at ? 64 - fill : len - at;
        memcpy(block + fill, msg + at, (size_t)take);
        fill += take;
        at += take;
        if (fill == 64) {
            sha1_block(&s, block);
            fill = 0;
        }
    }
    block[fill++] = 0x80;
    if (fill > 56) {
        memset(block + fill, 0, (size_t)(64 - fill));
        sha1_block(&s, block);
        fill = 0;
    }
    memset(block + fill, 0, (size_t)(56 - fill));
    uint64_t bits = total * 8;
    for (int i = 0; i < 8; i++)
        block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha1_block(&s, block);
    for (int i = 0; i < 5; i++) {
        digest[4 * i] = (unsigned char)(s.h[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(s.h[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(s.h[i] >> 8);
        digest[4 * i + 3] = (unsigned char)s.h[i];
    }
}

static const char HEX[] = "0123456789abcdef";

/* Decimal text of v (as Python's str(int)) at out; returns its length (at most 20). */
static Py_ssize_t format_ll(char *out, long long v)
{
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    Py_ssize_t len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n)
        out[len++] = digits[--n];
    return len;
}

/* identity.uuid5_string of (computer, channel, record id, ticks): NULL with no error set when the values are
 * not of the usual types (the Python code then decides). The record id is an int, or the str that stands in
 * for it (a content fingerprint). */
static PyObject *origin_id(PyObject *computer, PyObject *channel, PyObject *record_id, long long ticks)
{
    if (!PyUnicode_CheckExact(computer) || !PyUnicode_CheckExact(channel))
        return NULL;
    char number[32];
    const char *record_text = number;
    Py_ssize_t record_len;
    if (PyLong_CheckExact(record_id)) {
        int overflow = 0;
        long long record = PyLong_AsLongLongAndOverflow(record_id, &overflow);
        if (overflow || (record == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return NULL;
        }
        record_len = format_ll(number, record);
    }
    else if (PyUnicode_CheckExact(record_id)) {
        record_text = PyUnicode_AsUTF8AndSize(record_id, &record_len);
        if (!record_text) {
            PyErr_Clear();
            return NULL;
        }
    }
    else
        return NULL;
    Py_ssize_t computer_len, channel_len;
    const char *computer_utf8 = PyUnicode_AsUTF8AndSize(computer, &computer_len);
    if (!computer_utf8) {
        PyErr_Clear();
        return NULL;
    }
    const char *channel_utf8 = PyUnicode_AsUTF8AndSize(channel, &channel_len);
    if (!channel_utf8) {
        PyErr_Clear();
        return NULL;
    }
    char small[512];
    size_t need = (size_t)computer_len + (size_t)channel_len + (size_t)record_len + 64;
    char *buf = need <= sizeof small ? small : PyMem_Malloc(need);
    if (!buf)
        return NULL;
    char *p = buf;
    memcpy(p, computer_utf8, (size_t)computer_len);
    p += computer_len;
    *p++ = '\n';
    memcpy(p, channel_utf8, (size_t)channel_len);
    p += channel_len;
    *p++ = '\n';
    memcpy(p, record_text, (size_t)record_len);
    p += record_len;
    *p++ = '\n';
    p += format_ll(p, ticks);
    unsigned char digest[20];
    sha1_namespaced(buf, p - buf, digest);
    if (buf != small)
        PyMem_Free(buf);
    char hex[40];
    for (int i = 0; i < 20; i++) {
        hex[2 * i] = HEX[digest[i] >> 4];
        hex[2 * i + 1] = HEX[digest[i] & 15];
    }
    PyObject *out = PyUnicode_New(36, 127);
    if (!out)
        return NULL;
    char *o = (char *)PyUnicode_DATA(out);
    memcpy(o, hex, 8);
    o[8] = '-';
    memcpy(o + 9, hex + 8, 4);
    o[13] = '-';
    o[14] = '5';
    memcpy(o + 15, hex + 13, 3);
    o[18] = '-';
    int nibble = digest[8] >> 4; /* hex digit 16 */
    o[19] = "89ab"[nibble & 3];
    memcpy(o + 20, hex + 17, 3);
    o[23] = '-';
    memcpy(o + 24, hex + 20, 12);
    return out;
}

/* ------------------------------------------------------------------------------------------------ times */

/* 100 ns ticks since the Unix epoch -> "YYYY-MM-DDTHH:MM:SS.fffffffZ"; NULL (no error) outside 1970..9999. */
static PyObject *iso_ticks(long long ticks)
{
    if (ticks < 0)
        return NULL;
    long long seconds = ticks / 10000000, fraction = ticks % 10000000;
    long long days = seconds / 86400, second_of_day = seconds % 86400;
    /* civil_from_days (H. Hinnant), days since 1970-01-01 */
    long long z = days + 719468;
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long y = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1;
    long long m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y += 1;
    if (y > 9999)
        return NULL;
    PyObject *out = PyUnicode_New(28, 127);
    if (!out)
        return NULL;
    char *o = (char *)PyUnicode_DATA(out);
    int hh = (int)(second_of_day / 3600), mm = (int)(second_of_day / 60 % 60), ss = (int)(second_of_day % 60);
    o[0] = (char)('0' + y / 1000); o[1] = (char)('0' + y / 100 % 10); o[2] = (char)('0' + y / 10 % 10);
    o[3] = (char)('0' + y % 10); o[4] = '-';
    o[5] = (char)('0' + m / 10); o[6] = (char)('0' + m % 10); o[7] = '-';
    o[8] = (char)('0' + d / 10); o[9] = (char)('0' + d % 10); o[10] = 'T';
    o[11] = (char)('0' + hh / 10); o[12] = (char)('0' + hh % 10); o[13] = ':';
    o[14] = (char)('0' + mm / 10); o[15] = (char)('0' + mm % 10); o[16] = ':';
    o[17] = (char)('0' + ss / 10); o[18] = (char)('0' + ss % 10); o[19] = '.';
    for (int i = 26; i >= 20; i--) {
        o[i] = (char)('0' + fraction % 10);
        fraction /= 10;
    }
    o[27] = 'Z';
    return out;
}

/* ------------------------------------------------------------------------------------------------ helpers */

/* row[key] = value (a new reference, stolen). -1 on error. */
static inline int set_new(PyObject *row, PyObject *key, PyObject *value)
{
    if (!value)
        return -1;
    int rc = PyDict_SetItem(row, key, value);
    Py_DECREF(value);
    return rc;
}

/* The text of an int 0..255 from the cached tuple, else str(value). New reference. */
static PyObject *small_int_text(PyObject *value)
{
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(value, &overflow);
    if (!overflow && v >= 0 && v < PyTuple_GET_SIZE(cfg_level_text)) {
        PyObject *text = PyTuple_GET_ITEM(cfg_level_text, v);
        Py_INCREF(text);
        return text;
    }
    PyErr_Clear();
    return PyObject_Str(value);
}

/* cache[key] when present, else factory(key), which fills the cache itself: a new reference; NULL on error. */
static PyObject *cached_call(PyObject *cache, PyObject *factory, PyObject *key)
{
    PyObject *hit = PyDict_GetItemWithError(cache, key);
    if (hit) {
        Py_INCREF(hit);
        return hit;
    }
    if (PyErr_Occurred())
        return NULL;
    return PyObject_CallOneArg(factory, key);
}

/* normalize._cached_guid(value): new reference (a str or None); NULL on error. */
static inline PyObject *cached_guid(PyObject *value) { return cached_call(cfg_guid_cache, cfg_guid_func, value); }

/* normalize.parse_int(value): new reference (an int or None); NULL on an error other than ValueError. */
static PyObject *parse_int(PyObject *value)
{
    int base = 10;
    if (PyUnicode_GET_LENGTH(value) >= 2 && PyUnicode_READ_CHAR(value, 0) == '0') {
        Py_UCS4 x = PyUnicode_READ_CHAR(value, 1);
        if (x == 'x' || x == 'X')
            base = 16;
    }
    PyObject *number = PyLong_FromUnicodeObject(value, base);
    if (number)
        return number;
    if (PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

/* A borrowed value of the row, or NULL when absent. */
static inline PyObject *row_get(PyObject *row, PyObject *key) { return PyDict_GetItemWithError(row, key); }

static inline int truthy_str(PyObject *v) { return v && PyUnicode_GET_LENGTH(v) > 0; }

/* normalize._join_account for row values (str or absent). New reference, or NULL with no error for None. */
static PyObject *join_account(PyObject *domain, PyObject *user, int *error)
{
    if (truthy_str(user) && truthy_str(domain)) {
        Py_ssize_t n_domain = PyUnicode_GET_LENGTH(domain), n_user = PyUnicode_GET_LENGTH(user);
        Py_UCS4 maxchar = PyUnicode_MAX_CHAR_VALUE(domain);
        if (PyUnicode_MAX_CHAR_VALUE(user) > maxchar)
            maxchar = PyUnicode_MAX_CHAR_VALUE(user);
        PyObject *joined = PyUnicode_New(n_domain + 1 + n_user, maxchar);
        if (!joined) {
            *error = 1;
            return NULL;
        }
        if (PyUnicode_CopyCharacters(joined, 0, domain, 0, n_domain) < 0 ||
            PyUnicode_WriteChar(joined, n_domain, '\\') < 0 ||
            PyUnicode_CopyCharacters(joined, n_domain + 1, user, 0, n_user) < 0) {
            Py_DECREF(joined);
            *error = 1;
            return NULL;
        }
        return joined;
    }
    PyObject *out = truthy_str(user) ? user : truthy_str(domain) ? domain : NULL;
    Py_XINCREF(out);
    return out;
}

/* normalize._account_type. -1 on error. */
static int set_account_type(PyObject *row, PyObject *user, PyObject *sid)
{
    int machine = 0;
    if (truthy_str(user) && PyUnicode_READ_CHAR(user, PyUnicode_GET_LENGTH(user) - 1) == '$')
        machine = 1;
    if (!machine) {
        int r = PySet_Contains(cfg_machine_sids, sid ? sid : Py_None);
        if (r < 0)
            return -1;
        machine = r;
    }
    if (!machine) {
        int r = PySet_Contains(cfg_machine_names, user ? user : Py_None);
        if (r < 0)
            return -1;
        machine = r;
    }
    return PyDict_SetItem(row, c_AccountType, machine ? cfg_machine : cfg_user);
}

/* normalize._derive. Row values read here are str (copied EventData text) or int (LogonType). -1 on error. */
static int derive(PyObject *row, int account_mode, int account_type, int has_subject, int has_target,
                  int has_process, int has_logon_type)
{
    PyObject *subject = NULL, *target = NULL, *subject_user = NULL, *target_user = NULL;
    int error = 0, rc = -1;
    if (has_subject) {
        subject_user = row_get(row, c_SubjectUserName);
        PyObject *domain = row_get(row, c_SubjectDomainName);
        subject = join_account(domain, subject_user, &error);
        if (error)
            goto done;
        if (subject && PyUnicode_GET_LENGTH(subject) && PyDict_SetItem(row, c_SubjectAccount, subject) < 0)
            goto done;
    }
    if (has_target) {
        target_user = row_get(row, c_TargetUserName);
        PyObject *domain = row_get(row, c_TargetDomainName);
        target = join_account(domain, target_user, &error);
        if (error)
            goto done;
        if (target && PyUnicode_GET_LENGTH(target) && PyDict_SetItem(row, c_TargetAccount, target) < 0)
            goto done;
    }
    if (account_mode == ACCOUNT_TARGET) {
        if (truthy_str(target)) {
            if (PyDict_SetItem(row, c_Account, target) < 0)
                goto done;
            if (account_type && set_account_type(row, target_user, row_get(row, c_TargetUserSid)) < 0)
                goto done;
        }
    }
    else if (account_mode == ACCOUNT_AUTO) {
        if (truthy_str(subject_user)) {
            if (PyDict_SetItem(row, c_Account, subject ? subject : Py_None) < 0)
                goto done;
            if (account_type && set_account_type(row, subject_user, row_get(row, c_SubjectUserSid)) < 0)
                goto done;
        }
        else if (truthy_str(target_user)) {
            if (PyDict_SetItem(row, c_Account, target ? target : Py_None) < 0)
                goto done;
            PyObject *sid = row_get(row, c_TargetUserSid);
            if (!truthy_str(sid))
                sid = row_get(row, c_TargetSid);
            if (account_type && set_account_type(row, target_user, sid) < 0)
                goto done;
        }
    }
    if (has_process) {
        PyObject *path = row_get(row, c_NewProcessName);
        if (!truthy_str(path))
            path = row_get(row, c_ProcessName);
        if (!truthy_str(path))
            path = row_get(row, c_FilePath);
        if (truthy_str(path)) {
            Py_ssize_t n = PyUnicode_GET_LENGTH(path);
            Py_ssize_t slash = PyUnicode_FindChar(path, '\\', 0, n, -1);
            if (slash == -2)
                goto done;
            PyObject *name = slash < 0 ? (Py_INCREF(path), path) : PyUnicode_Substring(path, slash + 1, n);
            if (set_new(row, c_Process, name) < 0)
                goto done;
        }
    }
    if (has_logon_type) {
        PyObject *logon_type = row_get(row, c_LogonType);
        PyObject *name = PyDict_GetItemWithError(cfg_logon_type_names, logon_type ? logon_type : Py_None);
        if (!name && PyErr_Occurred())
            goto done;
        if (name && PyObject_IsTrue(name) == 1 && PyDict_SetItem(row, c_LogonTypeName, name) < 0)
            goto done;
    }
    rc = PyErr_Occurred() ? -1 : 0;
done:
    Py_XDECREF(subject);
    Py_XDECREF(target);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ EventData XML */

static inline int needs_escape(PyObject *s)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (kind == PyUnicode_1BYTE_KIND) {
        const unsigned char *p = data;
        for (Py_ssize_t i = 0; i < n; i++)
            if (p[i] == '&' || p[i] == '<' || p[i] == '>')
                return 1;
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '&' || c == '<' || c == '>')
            return 1;
    }
    return 0;
}

/* Length of s once &, <, > are escaped. */
static Py_ssize_t escaped_length(PyObject *s)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), out = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '&')
            out += 4;
        else if (c == '<' || c == '>')
            out += 3;
    }
    return out;
}

typedef struct {
    PyObject *out;
    int kind;
    void *data;
    Py_ssize_t at;
} Writer;

static inline void write_str(Writer *w, PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (w->kind == PyUnicode_KIND(s))
        memcpy((char *)w->data + w->at * w->kind, PyUnicode_DATA(s), (size_t)(n * w->kind));
    else
        for (Py_ssize_t i = 0; i < n; i++)
            PyUnicode_WRITE(w->kind, w->data, w->at + i, PyUnicode_READ_CHAR(s, i));
    w->at += n;
}

static void write_escaped(Writer *w, PyObject *s)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        const char *entity = c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : NULL;
        if (entity)
            for (; *entity; entity++)
                PyUnicode_WRITE(w->kind, w->data, w->at++, (Py_UCS4)*entity);
        else
            PyUnicode_WRITE(w->kind, w->data, w->at++, c);
    }
}

/* normalize.event_data_xml for values (str or None) and the layout's per-field (open tag, empty form) heads. */
static PyObject *event_data_xml(PyObject **values, Py_ssize_t n, PyObject *heads)
{
    Py_ssize_t total = PyUnicode_GET_LENGTH(cfg_xml_open) + PyUnicode_GET_LENGTH(cfg_xml_close);
    Py_UCS4 maxchar = 127;
    char escape_stack[64];
    char *escape = n <= 64 ? escape_stack : PyMem_Malloc((size_t)n);
    if (!escape)
        return PyErr_NoMemory();
    Py_ssize_t close_len = PyUnicode_GET_LENGTH(cfg_data_close);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *head = PyTuple_GET_ITEM(heads, i);
        PyObject *value = values[i];
        PyObject *piece;
        escape[i] = 0;
        if (value == Py_None || PyUnicode_GET_LENGTH(value) == 0) {
            piece = PyTuple_GET_ITEM(head, 1);
        }
        else {
            piece = PyTuple_GET_ITEM(head, 0);
            escape[i] = (char)needs_escape(value);
            total += (escape[i] ? escaped_length(value) : PyUnicode_GET_LENGTH(value)) + close_len;
            Py_UCS4 mc = PyUnicode_MAX_CHAR_VALUE(value);
            if (mc > maxchar)
                maxchar = mc;
        }
        total += PyUnicode_GET_LENGTH(piece);
        Py_UCS4 mc = PyUnicode_MAX_CHAR_VALUE(piece);
        if (mc > maxchar)
            maxchar = mc;
    }
    Writer w = {PyUnicode_New(total, maxchar), 0, NULL, 0};
    if (!w.out) {
        if (escape != escape_stack)
            PyMem_Free(escape);
        return NULL;
    }
    w.kind = PyUnicode_KIND(w.out);
    w.data = PyUnicode_DATA(w.out);
    write_str(&w, cfg_xml_open);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *head = PyTuple_GET_ITEM(heads, i);
        PyObject *value = values[i];
        if (value == Py_None || PyUnicode_GET_LENGTH(value) == 0) {
            write_str(&w, PyTuple_GET_ITEM(head, 1));
            continue;
        }
        write_str(&w, PyTuple_GET_ITEM(head, 0));
        if (escape[i])
            write_escaped(&w, value);
        else
            write_str(&w, value);
        write_str(&w, cfg_data_close);
    }
    write_str(&w, cfg_xml_close);
    if (escape != escape_stack)
        PyMem_Free(escape);
    return w.out;
}

/* ------------------------------------------------------------------------------------------------ plans, layouts */

/* Borrowed item of a dict, NULL when missing (no error left set). */
static inline PyObject *item(PyObject *dict, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (!v)
        PyErr_Clear();
    return v;
}

/* The RawEvent fields a row reads, fetched in one pass over the event dict: the decoder's dicts have the interned
 * field names as keys, in schema order, so each entry is matched by identity, mostly at the position where the
 * same field was last time. A field not matched that way (a key that is equal but not the same object, or one
 * that is missing) is then looked up; NULL means missing. */
#define EVENT_FIELDS(X) X(F_EVENT_ID, k_event_id) X(F_TIME_CREATED, k_time_created) \
    X(F_EVENT_RECORD_ID, k_event_record_id) X(F_COMPUTER, k_computer) X(F_CHANNEL, k_channel) \
    X(F_PROVIDER_NAME, k_provider_name) X(F_TASK, k_task) X(F_LEVEL, k_level) X(F_KEYWORDS, k_keywords) \
    X(F_EVENT_DATA, k_event_data) X(F_USER_DATA_XML, k_user_data_xml) X(F_ACTIVITY_ID, k_activity_id) \
    X(F_VERSION, k_version) X(F_PROCESS_ID, k_process_id) X(F_THREAD_ID, k_thread_id) X(F_OPCODE, k_opcode) \
    X(F_USER_ID, k_user_id) X(F_PROVENANCE, k_provenance)
#define FIELD_ENUM(id, key) id,
enum { EVENT_FIELDS(FIELD_ENUM) N_FIELDS };
#undef FIELD_ENUM
#define HINTS 64
static signed char field_hint[HINTS]; /* dict position -> field index matched there last time (+1; 0 = none) */

static void read_fields(PyObject *event, PyObject **out)
{
#define FIELD_KEY(id, key) key,
    PyObject *keys[N_FIELDS] = {EVENT_FIELDS(FIELD_KEY)};
#undef FIELD_KEY
    int found = 0;
    memset(out, 0, sizeof(PyObject *) * N_FIELDS);
    Py_ssize_t pos = 0, at = 0;
    PyObject *key, *value;
    while (PyDict_Next(event, &pos, &key, &value)) {
        int hint = at < HINTS ? field_hint[at] - 1 : -1;
        if (hint >= 0 && keys[hint] == key && !out[hint]) {
            out[hint] = value;
            found++;
        }
        else {
            for (int f = 0; f < N_FIELDS; f++)
                if (keys[f] == key && !out[f]) {
                    out[f] = value;
                    found++;
                    if (at < HINTS)
                        field_hint[at] = (signed char)(f + 1);
                    break;
                }
        }
        at++;
    }
    if (found < N_FIELDS)
        for (int f = 0; f < N_FIELDS; f++)
            if (!out[f])
                out[f] = item(event, keys[f]);
}

/* A <Data> item's name and value: one pass over a two-key dict whose keys are the interned "name" and "value",
 * else look-ups. Either is NULL when missing. */
static inline void read_item(PyObject *field, PyObject **name, PyObject **value)
{
    *name = *value = NULL;
    if (PyDict_GET_SIZE(field) == 2) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(field, &pos, &k, &v)) {
            if (k == k_name)
                *name = v;
            else if (k == k_value)
                *value = v;
        }
    }
    if (!*name)
        *name = item(field, k_name);
    if (!*value)
        *value = item(field, k_value);
}

static int valid_plan(PyObject *plan)
{
    return PyTuple_CheckExact(plan) && PyTuple_GET_SIZE(plan) == 5 && PyUnicode_CheckExact(PyTuple_GET_ITEM(plan, 0))
           && PyLong_CheckExact(PyTuple_GET_ITEM(plan, 3));
}

/* layout = (plain ((pos, column), ...), typed ((pos, column, kind), ...), heads ((open, empty), ...),
 *           by_position bool, derive (subject, target, process, logon_type)) */
static int valid_layout(PyObject *layout, Py_ssize_t n)
{
    if (!PyTuple_CheckExact(layout) || PyTuple_GET_SIZE(layout) != 5)
        return 0;
    PyObject *plain = PyTuple_GET_ITEM(layout, 0), *typed = PyTuple_GET_ITEM(layout, 1);
    PyObject *heads = PyTuple_GET_ITEM(layout, 2), *derive_inputs = PyTuple_GET_ITEM(layout, 4);
    if (!PyTuple_CheckExact(plain) || !PyTuple_CheckExact(typed) || !PyTuple_CheckExact(heads) ||
        PyTuple_GET_SIZE(heads) != n || !PyTuple_CheckExact(derive_inputs) || PyTuple_GET_SIZE(derive_inputs) != 4)
        return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------------------ one row */

#define FALLBACK_ROW ((PyObject *)1) /* not an error: let the Python normaliser handle this event */

typedef struct {
    int ama;
    PyObject *plans;
    PyObject *mg;
    PyObject *management_group_name;
} Call;

/* row[column] = v when the test passes: truthy (text) or not None (ints). v NULL (missing): *missing. */
static inline int copy_truthy(PyObject *row, PyObject *v, PyObject *column, int *missing)
{
    if (!v) {
        *missing = 1;
        return 0;
    }
    int t = PyObject_IsTrue(v);
    if (t < 0)
        return -1;
    return t ? PyDict_SetItem(row, column, v) : 0;
}

static inline int copy_not_none(PyObject *row, PyObject *v, PyObject *column, int *missing)
{
    if (!v) {
        *missing = 1;
        return 0;
    }
    return v != Py_None ? PyDict_SetItem(row, column, v) : 0;
}

#define MAX_FIELDS 4096 /* more EventData fields than this: the Python path */

static PyObject *build_row(PyObject *event, PyObject *given_origin_id, const Call *call)
{
    if (!PyDict_CheckExact(event))
        return FALLBACK_ROW;
    PyObject *f[N_FIELDS];
    read_fields(event, f);
    PyObject *event_id = f[F_EVENT_ID], *ticks_obj = f[F_TIME_CREATED];
    if (!event_id || !ticks_obj || !PyLong_CheckExact(event_id) || !PyLong_CheckExact(ticks_obj))
        return FALLBACK_ROW;
    int overflow = 0;
    long long ticks = PyLong_AsLongLongAndOverflow(ticks_obj, &overflow);
    if (overflow || ticks < 0)
        return FALLBACK_ROW;

    PyObject *plan = PyDict_GetItemWithError(call->plans, event_id);
    if (plan)
        Py_INCREF(plan);
    else if (PyErr_Occurred() || !(plan = PyObject_CallFunctionObjArgs(cfg_plan_factory,
                                                                        call->ama ? Py_True : Py_False,
                                                                        event_id, NULL))) {
        PyErr_Clear();
        return FALLBACK_ROW;
    }
    PyObject *row = NULL, *layout = NULL, *names = NULL, *result = FALLBACK_ROW;
    PyObject *values_stack[64];
    PyObject **values = values_stack;
    Py_ssize_t n_items = 0;
    int missing = 0;
    if (!valid_plan(plan))
        goto fallback;
    PyObject *activity = PyTuple_GET_ITEM(plan, 0);
    int parse = PyObject_IsTrue(PyTuple_GET_ITEM(plan, 1)) == 1;
    int keep = PyObject_IsTrue(PyTuple_GET_ITEM(plan, 2)) == 1;
    int account_mode = (int)PyLong_AsLong(PyTuple_GET_ITEM(plan, 3));
    int account_type = PyObject_IsTrue(PyTuple_GET_ITEM(plan, 4)) == 1;

    PyObject *computer = f[F_COMPUTER], *channel = f[F_CHANNEL];
    PyObject *record_id = f[F_EVENT_RECORD_ID];
    if (!computer || !channel || !record_id)
        goto fallback;
    PyObject *origin;
    if (given_origin_id && PyObject_IsTrue(given_origin_id) == 1) {
        Py_INCREF(given_origin_id);
        origin = given_origin_id;
    }
    else {
        PyObject *stand_in = record_id;
        if (record_id == Py_None && !(stand_in = PyObject_CallOneArg(cfg_fingerprint, event)))
            goto fallback;
        if (record_id == Py_None && !PyUnicode_CheckExact(stand_in)) {
            Py_DECREF(stand_in);
            goto fallback;
        }
        origin = origin_id(computer, channel, stand_in, ticks);
        if (stand_in != record_id)
            Py_DECREF(stand_in);
        if (!origin)
            goto fallback;
    }
    row = _PyDict_NewPresized(40);
    if (!row) {
        Py_DECREF(origin);
        goto fallback;
    }
    PyObject *generated = iso_ticks(ticks);
    if (!generated) {
        Py_DECREF(origin);
        goto fallback;
    }
    if (set_new(row, c_TimeGenerated, generated) < 0 || PyDict_SetItem(row, c_SourceSystem, cfg_source_system) < 0 ||
        PyDict_SetItem(row, c_EventID, event_id) < 0 || PyDict_SetItem(row, c_Activity, activity) < 0 ||
        set_new(row, c_EventOriginId, origin) < 0)
        goto fallback;

    if (copy_truthy(row, f[F_COMPUTER], c_Computer, &missing) < 0 ||
        copy_truthy(row, f[F_PROVIDER_NAME], c_EventSourceName, &missing) < 0 ||
        copy_truthy(row, f[F_CHANNEL], c_Channel, &missing) < 0 ||
        copy_not_none(row, f[F_TASK], c_Task, &missing) < 0 || missing)
        goto fallback;
    PyObject *level = f[F_LEVEL];
    if (!level || (level != Py_None && !PyLong_CheckExact(level)))
        goto fallback;
    if (!call->ama) {
        PyObject *keywords = f[F_KEYWORDS];
        if (!keywords)
            goto fallback;
        unsigned long long bits = 0;
        if (keywords != Py_None) {
            int t = PyObject_IsTrue(keywords);
            if (t < 0)
                goto fallback;
            if (t) {
                if (!PyUnicode_CheckExact(keywords))
                    goto fallback;
                PyObject *parsed = cached_call(cfg_keywords_cache, cfg_keywords_func, keywords);
                if (!parsed)
                    goto fallback;
                if (!PyLong_Check(parsed)) {
                    Py_DECREF(parsed);
                    goto fallback;
                }
                bits = PyLong_AsUnsignedLongLongMask(parsed);
                Py_DECREF(parsed);
                if (bits == (unsigned long long)-1 && PyErr_Occurred())
                    goto fallback;
            }
        }
        Py_ssize_t which;
        if (bits & 0x0020000000000000ULL)
            which = 6;
        else if (bits & 0x0010000000000000ULL)
            which = 7;
        else {
            long lv = 0;
            if (level != Py_None) {
                lv = PyLong_AsLongAndOverflow(level, &overflow);
                if (overflow)
                    lv = -1;
                if (lv == -1 && PyErr_Occurred())
                    goto fallback;
            }
            which = lv >= 0 && lv <= 5 ? lv : 8;
        }
        if (PyDict_SetItem(row, c_Level, PyTuple_GET_ITEM(cfg_mma_levels, which)) < 0)
            goto fallback;
    }
    else if (level != Py_None && set_new(row, c_Level, small_int_text(level)) < 0)
        goto fallback;

    PyObject *items = f[F_EVENT_DATA], *user_data = f[F_USER_DATA_XML];
    if (!items || !user_data)
        goto fallback;
    if (items != Py_None && !PyList_CheckExact(items))
        goto fallback;
    n_items = items == Py_None ? 0 : PyList_GET_SIZE(items);
    if (!n_items && user_data != Py_None) {
        int t = PyObject_IsTrue(user_data);
        if (t != 0)
            goto fallback; /* UserData: parsed by the Python code (lxml) */
    }
    if (n_items > MAX_FIELDS)
        goto fallback;
    if (n_items > 64 && !(values = PyMem_Malloc(sizeof(PyObject *) * (size_t)n_items))) {
        values = values_stack;
        goto fallback;
    }
    if (n_items) {
        names = PyTuple_New(n_items);
        if (!names)
            goto fallback;
        for (Py_ssize_t i = 0; i < n_items; i++) {
            PyObject *field = PyList_GET_ITEM(items, i);
            PyObject *name, *value;
            if (PyTuple_CheckExact(field) && PyTuple_GET_SIZE(field) == 2) { /* (name, value) */
                name = PyTuple_GET_ITEM(field, 0);
                value = PyTuple_GET_ITEM(field, 1);
            }
            else if (PyDict_CheckExact(field))
                read_item(field, &name, &value);
            else
                goto fallback;
            if (!name || !value || (value != Py_None && !PyUnicode_CheckExact(value)) ||
                (name != Py_None && !PyUnicode_CheckExact(name)))
                goto fallback;
            Py_INCREF(name);
            PyTuple_SET_ITEM(names, i, name);
            values[i] = value; /* borrowed from the item dict, which the event keeps alive */
        }
        layout = cached_call(cfg_layouts, cfg_layout_factory, names);
        if (!layout || !valid_layout(layout, n_items) || PyObject_IsTrue(PyTuple_GET_ITEM(layout, 3)) != 1)
            goto fallback; /* a column named twice: the generic copy of the Python code */
    }
    if (parse) {
        int typed_ok = 1;
        int has_subject = 1, has_target = 1, has_process = 1, has_logon_type = 1;
        if (layout) {
            PyObject *plain = PyTuple_GET_ITEM(layout, 0), *typed = PyTuple_GET_ITEM(layout, 1);
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(plain); i++) {
                PyObject *entry = PyTuple_GET_ITEM(plain, i);
                Py_ssize_t pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 0));
                if (pos < 0 || pos >= n_items)
                    goto fallback;
                PyObject *value = values[pos];
                if (value != Py_None && PyUnicode_GET_LENGTH(value) &&
                    PyDict_SetItem(row, PyTuple_GET_ITEM(entry, 1), value) < 0)
                    goto fallback;
            }
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(typed); i++) {
                PyObject *entry = PyTuple_GET_ITEM(typed, i);
                Py_ssize_t pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 0));
                long kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 2));
                if (pos < 0 || pos >= n_items)
                    goto fallback;
                PyObject *value = values[pos];
                if (value == Py_None || !PyUnicode_GET_LENGTH(value))
                    continue;
                PyObject *converted = kind == KIND_INT ? parse_int(value) : cached_guid(value);
                if (!converted)
                    goto fallback;
                if (converted == Py_None)
                    typed_ok = 0;
                else if (PyDict_SetItem(row, PyTuple_GET_ITEM(entry, 1), converted) < 0) {
                    Py_DECREF(converted);
                    goto fallback;
                }
                Py_DECREF(converted);
            }
            PyObject *inputs = PyTuple_GET_ITEM(layout, 4);
            has_subject = PyObject_IsTrue(PyTuple_GET_ITEM(inputs, 0)) == 1;
            has_target = PyObject_IsTrue(PyTuple_GET_ITEM(inputs, 1)) == 1;
            has_process = PyObject_IsTrue(PyTuple_GET_ITEM(inputs, 2)) == 1;
            has_logon_type = PyObject_IsTrue(PyTuple_GET_ITEM(inputs, 3)) == 1;
        }
        if (derive(row, account_mode, account_type, has_subject, has_target, has_process, has_logon_type) < 0)
            goto fallback;
        keep = keep || !typed_ok;
    }
    if (keep && layout &&
        set_new(row, c_EventData, event_data_xml(values, n_items, PyTuple_GET_ITEM(layout, 2))) < 0)
        goto fallback;

    if (call->ama) {
        if (copy_truthy(row, f[F_KEYWORDS], c_Keywords, &missing) < 0 ||
            copy_truthy(row, f[F_ACTIVITY_ID], c_Correlation, &missing) < 0 ||
            copy_not_none(row, f[F_VERSION], c_Version, &missing) < 0 ||
            copy_not_none(row, f[F_PROCESS_ID], c_SystemProcessId, &missing) < 0 ||
            copy_not_none(row, f[F_THREAD_ID], c_SystemThreadId, &missing) < 0 || missing)
            goto fallback;
        if (level != Py_None) {
            long lv = PyLong_AsLongAndOverflow(level, &overflow);
            if (lv == -1 && PyErr_Occurred())
                goto fallback;
            if (!overflow && lv >= 0 && lv < PyTuple_GET_SIZE(cfg_level_names) &&
                PyDict_SetItem(row, c_EventLevelName, PyTuple_GET_ITEM(cfg_level_names, lv)) < 0)
                goto fallback;
        }
        PyObject *opcode = f[F_OPCODE];
        if (!opcode || (opcode != Py_None && !PyLong_CheckExact(opcode)))
            goto fallback;
        if (opcode != Py_None && set_new(row, c_Opcode, small_int_text(opcode)) < 0)
            goto fallback;
        if (record_id != Py_None && set_new(row, c_EventRecordId, PyObject_Str(record_id)) < 0)
            goto fallback;
        PyObject *user_id = f[F_USER_ID];
        if (!user_id)
            goto fallback;
        int t = PyObject_IsTrue(user_id);
        if (t < 0 || PyDict_SetItem(row, c_SystemUserId, t ? user_id : cfg_na) < 0)
            goto fallback;
    }
    if (PyUnicode_GET_LENGTH(call->mg) && PyDict_SetItem(row, c_MG, call->mg) < 0)
        goto fallback;
    if (PyUnicode_GET_LENGTH(call->management_group_name) &&
        PyDict_SetItem(row, c_ManagementGroupName, call->management_group_name) < 0)
        goto fallback;
    PyObject *provenance = f[F_PROVENANCE];
    if (!provenance)
        goto fallback;
    if (provenance != Py_None) {
        if (!PyDict_CheckExact(provenance))
            goto fallback;
        if (PyDict_GET_SIZE(provenance)) {
            PyObject *read_time = item(provenance, k_read_time_us);
            if (read_time && read_time != Py_None) {
                if (!PyLong_CheckExact(read_time))
                    goto fallback;
                long long us = PyLong_AsLongLongAndOverflow(read_time, &overflow);
                if (overflow || us < 0 || us > LLONG_MAX / 10)
                    goto fallback;
                if (us && set_new(row, c_TimeCollected, iso_ticks(us * 10)) < 0)
                    goto fallback;
            }
            PyObject *agent_id = item(provenance, k_agent_id);
            if (agent_id && agent_id != Py_None) {
                if (!PyUnicode_CheckExact(agent_id))
                    goto fallback;
                if (PyUnicode_GET_LENGTH(agent_id)) {
                    PyObject *guid = cached_guid(agent_id);
                    if (!guid)
                        goto fallback;
                    int t = PyObject_IsTrue(guid);
                    if (t < 0 || (t && PyDict_SetItem(row, c_SourceComputerId, guid) < 0)) {
                        Py_DECREF(guid);
                        goto fallback;
                    }
                    Py_DECREF(guid);
                }
            }
        }
    }
    if (PyErr_Occurred()) /* a truth test that failed along the way */
        goto fallback;
    result = row;
    row = NULL;
fallback:
    if (result == FALLBACK_ROW)
        PyErr_Clear();
    Py_XDECREF(row);
    Py_XDECREF(names);
    Py_XDECREF(layout);
    Py_DECREF(plan);
    if (values != values_stack)
        PyMem_Free(values);
    return result;
}

/* ------------------------------------------------------------------------------------------------ module API */

PyDoc_STRVAR(rows_doc,
"rows(events, ama, plans, mg, management_group_name, origin_ids=None) -> (rows, fallbacks)\n\n"
"One row per event (a dict), or None where the Python normaliser must handle the event; fallbacks counts the\n"
"Nones. plans: the flavour's dict EventID -> plan tuple (filled through the configured factory).");

static PyObject *rows(PyObject *self, PyObject *args)
{
    PyObject *events, *plans, *mg, *mgn, *origin_ids = Py_None;
    int ama;
    if (!PyArg_ParseTuple(args, "O!pO!UU|O", &PyList_Type, &events, &ama, &PyDict_Type, &plans, &mg, &mgn,
                          &origin_ids))
        return NULL;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "streams._normalize is not configured");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(events);
    if (origin_ids != Py_None && (!PyList_CheckExact(origin_ids) || PyList_GET_SIZE(origin_ids) != n)) {
        PyErr_SetString(PyExc_ValueError, "origin_ids must be a list with one id per event");
        return NULL;
    }
    Call call = {ama, plans, mg, mgn};
    int given_ids = origin_ids != Py_None;
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    Py_ssize_t fallbacks = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PyList_GET_SIZE(events) || (given_ids && i >= PyList_GET_SIZE(origin_ids))) {
            /* the callbacks run Python code: the lists may have shrunk meanwhile */
            fallbacks++;
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        PyObject *event = PyList_GET_ITEM(events, i);
        Py_INCREF(event); /* a callback must not be able to free it under us */
        PyObject *given = origin_ids == Py_None ? NULL : PyList_GET_ITEM(origin_ids, i);
        Py_XINCREF(given);
        PyObject *row = build_row(event, given, &call);
        Py_XDECREF(given);
        Py_DECREF(event);
        if (row == FALLBACK_ROW) {
            fallbacks++;
            Py_INCREF(Py_None);
            row = Py_None;
        }
        PyList_SET_ITEM(out, i, row);
    }
    return Py_BuildValue("(Nn)", out, fallbacks);
}

PyDoc_STRVAR(origin_id_doc, "origin_id(computer, channel, record_id, ticks) -> str or None (identity.uuid5_string)");

static PyObject *py_origin_id(PyObject *self, PyObject *args)
{
    PyObject *computer, *channel, *record_id;
    long long ticks;
    if (!PyArg_ParseTuple(args, "OOOL", &computer, &channel, &record_id, &ticks))
        return NULL;
    PyObject *out = origin_id(computer, channel, record_id, ticks);
    if (!out && !PyErr_Occurred())
        Py_RETURN_NONE;
    return out;
}

PyDoc_STRVAR(configure_doc, "configure(**constants): set the tables and callbacks of streams.normalize.");

static int take(PyObject *kwargs, const char *name, PyObject **slot)
{
    PyObject *v = PyDict_GetItemString(kwargs, name);
    if (!v) {
        PyErr_Format(PyExc_TypeError, "configure() needs %s", name);
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || !kwargs) {
        PyErr_SetString(PyExc_TypeError, "configure() takes keyword arguments only");
        return NULL;
    }
    PyObject *ns = NULL;
    if (take(kwargs, "fingerprint", &cfg_fingerprint) || take(kwargs, "plan_factory", &cfg_plan_factory) || take(kwargs, "layouts", &cfg_layouts) ||
        take(kwargs, "layout_factory", &cfg_layout_factory) || take(kwargs, "guid_cache", &cfg_guid_cache) ||
        take(kwargs, "guid_func", &cfg_guid_func) || take(kwargs, "keywords_cache", &cfg_keywords_cache) ||
        take(kwargs, "keywords_func", &cfg_keywords_func) || take(kwargs, "level_text", &cfg_level_text) ||
        take(kwargs, "level_names", &cfg_level_names) || take(kwargs, "logon_type_names", &cfg_logon_type_names) ||
        take(kwargs, "machine_sids", &cfg_machine_sids) || take(kwargs, "machine_names", &cfg_machine_names) ||
        take(kwargs, "mma_levels", &cfg_mma_levels) || take(kwargs, "source_system", &cfg_source_system) ||
        take(kwargs, "not_available", &cfg_na) || take(kwargs, "machine", &cfg_machine) ||
        take(kwargs, "user", &cfg_user) || take(kwargs, "xml_open", &cfg_xml_open) ||
        take(kwargs, "xml_close", &cfg_xml_close) || take(kwargs, "data_close", &cfg_data_close) ||
        take(kwargs, "namespace", &ns))
        goto error;
    if (!PyDict_CheckExact(cfg_layouts) || !PyDict_CheckExact(cfg_guid_cache) ||
        !PyDict_CheckExact(cfg_keywords_cache) || !PyDict_CheckExact(cfg_logon_type_names) ||
        !PyTuple_CheckExact(cfg_level_text) || !PyTuple_CheckExact(cfg_level_names) ||
        !PyTuple_CheckExact(cfg_mma_levels) || PyTuple_GET_SIZE(cfg_mma_levels) != 9 ||
        !PyAnySet_Check(cfg_machine_sids) || !PyAnySet_Check(cfg_machine_names) ||
        !PyUnicode_CheckExact(cfg_xml_open) || !PyUnicode_CheckExact(cfg_xml_close) ||
        !PyUnicode_CheckExact(cfg_data_close) || !PyBytes_CheckExact(ns) || PyBytes_GET_SIZE(ns) != 16) {
        PyErr_SetString(PyExc_TypeError, "configure(): a table has the wrong type or size");
        goto error;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(cfg_level_text); i++)
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(cfg_level_text, i))) {
            PyErr_SetString(PyExc_TypeError, "configure(): level_text must hold str");
            goto error;
        }
    memcpy(namespace_bytes, PyBytes_AS_STRING(ns), 16);
    Py_DECREF(ns);
    configured = 1;
    Py_RETURN_NONE;
error:
    Py_XDECREF(ns);
    configured = 0;
    return NULL;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, rows_doc},
    {"origin_id", py_origin_id, METH_VARARGS, origin_id_doc},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "streams._normalize",
    "RawEvent -> SecurityEvent rows in C, driven by the plans and layouts of streams.normalize.", -1, methods,
};

PyMODINIT_FUNC PyInit__normalize(void)
{
    if (intern_keys() < 0)
        return NULL;
    return PyModule_Create(&module_def);
}
