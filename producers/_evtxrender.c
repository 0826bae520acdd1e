/* The `evtx` parser's XML rendering of one record -> RawEvent dict, in C.

   Covers exactly the shape producers/adapters/event_xml.py calls "the evtx parser's own rendering": the prologue,
   the System block with the renderer's whitespace, then flat <Data> elements (+ <Binary>), a plain UserData
   element, or nothing, and no entity or character reference anywhere. For anything else it returns None and the
   caller takes the Python paths, which handle every shape; so this code may refuse more than it must, but what it
   returns equals what those paths return (tests/producers compare them on every EVTX record of the corpus and on
   variants built to probe each rule).

   parse(xml: str, provenance: dict, record_time: int | None) -> dict | None
   from_record(record: dict, provenance: dict) -> dict | None  (one PyEvtxParser record)
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TICKS_PER_SECOND 10000000LL

static PyObject *k_provider_name, *k_provider_guid, *k_event_source_name, *k_event_id, *k_qualifiers, *k_version,
    *k_level, *k_task, *k_opcode, *k_keywords, *k_time_created, *k_event_record_id, *k_activity_id,
    *k_related_activity_id, *k_process_id, *k_thread_id, *k_channel, *k_computer, *k_user_id, *k_event_data,
    *k_user_data_xml, *k_rendered_message, *k_provenance, *k_name, *k_value, *empty_str, *k_data, *k_timestamp,
    *k_record_id, *event_template, *item_template;

typedef struct {
    const char *p;
    const char *end;
} Cursor;

typedef struct {
    const char *s;
    Py_ssize_t n;
    int present;
} Span;

static const char PROLOGUE[] =
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
    "<Event xmlns=\"http://schemas.microsoft.com/win/2004/08/events/event\">\n"
    "  <System>";
static const char DATA_OPEN[] = "  <EventData>";
static const char DATA_CLOSE[] = "</EventData>\n</Event>\n";
static const char EVENT_CLOSE[] = "</Event>\n";

#define LEN(lit) ((Py_ssize_t)(sizeof(lit) - 1))

static int literal(Cursor *c, const char *text, Py_ssize_t n)
{
    if (c->end - c->p >= n && memcmp(c->p, text, (size_t)n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}
#define LIT(c, text) literal((c), (text), LEN(text))

/* [^<]* (or [^"<\t\r\n]* in an attribute value: XML normalises tab, CR and LF there to spaces, so a value
   holding one stops short of its quote and the record is left to the Python paths) */
static Span until_markup(Cursor *c, int stop_at_quote)
{
    Span span = {c->p, 0, 1};
    while (c->p < c->end && *c->p != '<' &&
           !(stop_at_quote && (*c->p == '"' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n')))
        c->p++;
    span.n = c->p - span.s;
    return span;
}

static Span digits(Cursor *c)
{
    Span span = {c->p, 0, 1};
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    span.n = c->p - span.s;
    return span;
}

/* An optional attribute ` Name="value"`: 1 when present and well formed, 0 when absent, -1 when malformed. */
static int attribute(Cursor *c, const char *prefix, Py_ssize_t n, int numeric, Span *out)
{
    if (!literal(c, prefix, n))
        return 0;
    *out = numeric ? digits(c) : until_markup(c, 1);
    return LIT(c, "\"") ? 1 : -1;
}
#define ATTR(c, prefix, numeric, out) attribute((c), (prefix), LEN(prefix), (numeric), (out))

/* `<Tag>digits</Tag>` after its opening literal was matched. */
static int digits_element(Cursor *c, const char *close, Py_ssize_t n, Span *out)
{
    *out = digits(c);
    return literal(c, close, n);
}

/* Short ASCII strings repeat from event to event (field names, "-", SIDs, the computer, the channel): a small
   direct-mapped cache hands out the same str object instead of decoding a new one each time. */
#define CACHE_SLOTS 4096
#define CACHE_MAX_LEN 64
static PyObject *string_cache[CACHE_SLOTS];

static PyObject *text(Span span)
{
    if (span.n > CACHE_MAX_LEN)
        return PyUnicode_DecodeUTF8(span.s, span.n, "strict");
    uint32_t hash = 2166136261u;
    for (Py_ssize_t i = 0; i < span.n; i++) {
        unsigned char ch = (unsigned char)span.s[i];
        if (ch >= 0x80)
            return PyUnicode_DecodeUTF8(span.s, span.n, "strict");
        hash = (hash ^ ch) * 16777619u;
    }
    PyObject **slot = &string_cache[hash & (CACHE_SLOTS - 1)];
    PyObject *cached = *slot;
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == span.n &&
        memcmp(PyUnicode_DATA(cached), span.s, (size_t)span.n) == 0) {
        Py_INCREF(cached);
        return cached;
    }
    PyObject *fresh = PyUnicode_FromStringAndSize(span.s, span.n);  /* ASCII: a compact ASCII str */
    if (fresh == NULL)
        return NULL;
    Py_XSETREF(*slot, fresh);
    Py_INCREF(fresh);
    return fresh;
}

/* int(text) if text else None; None also when absent. */
static PyObject *int_or_none(Span span)
{
    if (!span.present || span.n == 0)
        Py_RETURN_NONE;
    if (span.n <= 18) {
        long long value = 0;
        for (Py_ssize_t i = 0; i < span.n; i++)
            value = value * 10 + (span.s[i] - '0');
        return PyLong_FromLongLong(value);
    }
    PyObject *digits_text = text(span);
    if (digits_text == NULL)
        return NULL;
    PyObject *value = PyLong_FromUnicodeObject(digits_text, 10);
    Py_DECREF(digits_text);
    return value;
}

static PyObject *text_or_none(Span span)
{
    if (!span.present)
        Py_RETURN_NONE;
    return text(span);
}

static int is_space(PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n == 0)
        return 0;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            return 0;
    return 1;
}

static int two_digits(const char *s, int *out)
{
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
        return 0;
    *out = (s[0] - '0') * 10 + (s[1] - '0');
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* `YYYY-MM-DDTHH:MM:SS[.fffffff…]Z` -> ticks; 0 when the text is anything else (the caller falls back). */
static int iso_ticks(Span span, long long *out)
{
    const char *s = span.s;
    Py_ssize_t n = span.n;
    int year_hi, year_lo, month, day, hour, minute, second;
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (n < 20 || s[n - 1] != 'Z' || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return 0;
    if (!two_digits(s, &year_hi) || !two_digits(s + 2, &year_lo) || !two_digits(s + 5, &month) ||
        !two_digits(s + 8, &day) || !two_digits(s + 11, &hour) || !two_digits(s + 14, &minute) ||
        !two_digits(s + 17, &second))
        return 0;
    int year = year_hi * 100 + year_lo;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59 ||
        day > month_days[month - 1] + (month == 2 && leap))
        return 0;
    long long fraction = 0;
    if (n > 20) {
        if (s[19] != '.' || n == 21)
            return 0;
        for (Py_ssize_t i = 20, used = 0; i < n - 1; i++) {
            if (s[i] < '0' || s[i] > '9')
                return 0;
            if (used < 7) {
                fraction = fraction * 10 + (s[i] - '0');
                used++;
            }
        }
        for (Py_ssize_t used = n - 21; used < 7; used++)
            fraction *= 10;
    }
    long long seconds = days_from_civil(year, month, day) * 86400LL + hour * 3600LL + minute * 60LL + second;
    *out = seconds * TICKS_PER_SECOND + fraction;
    return 1;
}

typedef struct {
    Span provider_name, provider_guid, event_source_name, qualifiers, event_id, version, level, task, opcode,
        keywords, system_time, record_id, activity_id, related_activity_id, process_id, thread_id, channel,
        computer, user_id;
} System;

/* The System block from just after `<System>` through `\n  </System>\n`; 0 when it has another shape. */
static int read_system(Cursor *c, System *s)
{
    memset(s, 0, sizeof(*s));
    if (!LIT(c, "\n    <Provider"))
        return 0;
    if (ATTR(c, " Name=\"", 0, &s->provider_name) < 0 || ATTR(c, " Guid=\"", 0, &s->provider_guid) < 0 ||
        ATTR(c, " EventSourceName=\"", 0, &s->event_source_name) < 0 || !LIT(c, ">\n    </Provider>"))
        return 0;
    if (!LIT(c, "\n    <EventID") || ATTR(c, " Qualifiers=\"", 1, &s->qualifiers) < 0 || !LIT(c, ">"))
        return 0;
    s->event_id = digits(c);
    if (s->event_id.n == 0 || !LIT(c, "</EventID>"))
        return 0;
    if (LIT(c, "\n    <Version>") && !digits_element(c, "</Version>", LEN("</Version>"), &s->version))
        return 0;
    if (LIT(c, "\n    <Level>") && !digits_element(c, "</Level>", LEN("</Level>"), &s->level))
        return 0;
    if (LIT(c, "\n    <Task>") && !digits_element(c, "</Task>", LEN("</Task>"), &s->task))
        return 0;
    if (LIT(c, "\n    <Opcode>") && !digits_element(c, "</Opcode>", LEN("</Opcode>"), &s->opcode))
        return 0;
    if (LIT(c, "\n    <Keywords>")) {
        s->keywords = until_markup(c, 0);
        if (!LIT(c, "</Keywords>"))
            return 0;
    }
    if (!LIT(c, "\n    <TimeCreated") || ATTR(c, " SystemTime=\"", 0, &s->system_time) < 0 ||
        !LIT(c, ">\n    </TimeCreated>"))
        return 0;
    if (LIT(c, "\n    <EventRecordID>") &&
        !digits_element(c, "</EventRecordID>", LEN("</EventRecordID>"), &s->record_id))
        return 0;
    if (LIT(c, "\n    <Correlation") &&
        (ATTR(c, " ActivityID=\"", 0, &s->activity_id) < 0 ||
         ATTR(c, " RelatedActivityID=\"", 0, &s->related_activity_id) < 0 || !LIT(c, ">\n    </Correlation>")))
        return 0;
    if (LIT(c, "\n    <Execution") &&
        (ATTR(c, " ProcessID=\"", 1, &s->process_id) < 0 || ATTR(c, " ThreadID=\"", 1, &s->thread_id) < 0 ||
         !LIT(c, ">\n    </Execution>")))
        return 0;
    if (!LIT(c, "\n    <Channel>"))
        return 0;
    s->channel = until_markup(c, 0);
    if (!LIT(c, "</Channel>") || !LIT(c, "\n    <Computer>"))
        return 0;
    s->computer = until_markup(c, 0);
    if (!LIT(c, "</Computer>"))
        return 0;
    if (LIT(c, "\n    <Security") &&
        (ATTR(c, " UserID=\"", 0, &s->user_id) < 0 || !LIT(c, ">\n    </Security>")))
        return 0;
    return LIT(c, "\n  </System>\n");
}

/* Python's a // 10 (floor division, also for times before 1970). */
static long long floor_div10(long long a)
{
    return a >= 0 ? a / 10 : -((-a + 9) / 10);
}

static int set_item(PyObject *dict, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(value);
    return rc;
}

static int ascii_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* The body of <EventData>: flat `<Data>text</Data>` / `<Data Name="n">text</Data>` elements (text between them is
   layout), optionally a last <Binary> (not carried). Py_None (new reference) when the body has another shape. */
static PyObject *data_items(const char *p, const char *end)
{
    const char *q = end;
    while (q > p && ascii_space(q[-1]))
        q--;
    if (q - p >= LEN("<Binary/>") && memcmp(q - LEN("<Binary/>"), "<Binary/>", LEN("<Binary/>")) == 0) {
        end = q - LEN("<Binary/>");
    } else if (q - p >= LEN("</Binary>") && memcmp(q - LEN("</Binary>"), "</Binary>", LEN("</Binary>")) == 0) {
        const char *open = q - LEN("</Binary>");
        while (open > p && open[-1] != '<')
            open--;
        if (open == p)
            goto other_shape;
        open--;
        if (q - LEN("</Binary>") - open < LEN("<Binary>") || memcmp(open, "<Binary>", LEN("<Binary>")))
            goto other_shape;
        end = open;
    }
    PyObject *items = PyList_New(0);
    if (items == NULL)
        return NULL;
    Cursor c = {p, end};
    while (1) {
        const char *lt = memchr(c.p, '<', (size_t)(c.end - c.p));
        if (lt == NULL)
            return items;
        c.p = lt;
        Span name = {NULL, 0, 0};
        if (!LIT(&c, "<Data>")) {
            if (!LIT(&c, "<Data Name=\""))
                goto other_shape_items;
            name = until_markup(&c, 1);
            if (!LIT(&c, "\">"))
                goto other_shape_items;
        }
        Span value = until_markup(&c, 0);
        if (!LIT(&c, "</Data>"))
            goto other_shape_items;
        PyObject *item = PyDict_Copy(item_template);
        if (item == NULL || set_item(item, k_name, text_or_none(name)) < 0 ||
            set_item(item, k_value, text(value)) < 0 || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(items);
            return NULL;
        }
        Py_DECREF(item);
        continue;
    other_shape_items:
        Py_DECREF(items);
        goto other_shape;
    }
other_shape:
    Py_INCREF(Py_None);
    return Py_None;
}

static const char USER_DATA_OPEN[] = "  <UserData>";
static const char USER_DATA_CLOSE[] = "</UserData>\n</Event>\n";
static const char USER_DATA_WITH_NS[] = "<UserData xmlns=\"http://schemas.microsoft.com/win/2004/08/events/event\">";

static int find(const char *p, const char *end, const char *needle, Py_ssize_t n)
{
    for (; end - p >= n; p++)
        if (*p == needle[0] && memcmp(p, needle, (size_t)n) == 0)
            return 1;
    return 0;
}

static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
           ch == '.' || ch == ':' || ch == '-';
}

/* An absolute http(s) namespace URI of plain characters, which libxml2 takes without a namespace warning. */
static int plain_namespace(const char *p, const char *end)
{
    Py_ssize_t n = end - p;
    if (!((n > 7 && memcmp(p, "http://", 7) == 0) || (n > 8 && memcmp(p, "https://", 8) == 0)))
        return 0;
    for (; p < end; p++)
        if (!(name_char(*p) || *p == '/'))
            return 0;
    return 1;
}

/* True when lxml would write the UserData element back exactly as it is (event_xml._user_data_as_lxml_writes_it):
   only plain tags (ASCII names, double-quoted attributes without <>&, tab, CR or LF, no space before > or />),
   balanced, no empty <a></a> (lxml writes <a/>), no '>' or CR in text. */
static int user_data_is_plain(const char *p, const char *end)
{
    const char *open_names[64];
    Py_ssize_t open_lengths[64];
    int depth = 0;
    while (p < end) {
        char ch = *p;
        if (ch == '>' || ch == '\r')
            return 0;
        if (ch != '<') {
            p++;
            continue;
        }
        int closing = p + 1 < end && p[1] == '/';
        p += closing ? 2 : 1;
        const char *name = p;
        while (p < end && name_char(*p))
            p++;
        Py_ssize_t name_length = p - name;
        if (name_length == 0 || memchr(name, ':', (size_t)name_length) != NULL)
            return 0;
        if (closing) {
            if (p >= end || *p != '>' || depth == 0 || open_lengths[depth - 1] != name_length ||
                memcmp(open_names[depth - 1], name, (size_t)name_length) != 0)
                return 0;
            depth--;
            p++;
            continue;
        }
        while (p < end && *p == ' ') {
            p++;
            const char *attribute = p;
            while (p < end && name_char(*p))
                p++;
            if (p == attribute || end - p < 2 || p[0] != '=' || p[1] != '"')
                return 0;
            if (memchr(attribute, ':', (size_t)(p - attribute)) != NULL)
                return 0;  /* prefixed attributes and namespace prefixes: lxml's namespace rules apply */
            int is_namespace = p - attribute == 5 && memcmp(attribute, "xmlns", 5) == 0;
            p += 2;
            const char *value = p;
            while (p < end && *p != '"' && *p != '<' && *p != '>' && *p != '\t' && *p != '\n' && *p != '\r')
                p++;
            if (p >= end || *p != '"')
                return 0;
            if (is_namespace && !plain_namespace(value, p))
                return 0;
            p++;
        }
        if (p < end && *p == '/') {
            if (end - p < 2 || p[1] != '>')
                return 0;
            p += 2;
            continue;
        }
        if (p >= end || *p != '>' || depth == 64)
            return 0;
        p++;
        if (end - p >= 2 && p[0] == '<' && p[1] == '/')
            return 0;  /* an empty element: lxml would write it as <a/> */
        open_names[depth] = name;
        open_lengths[depth] = name_length;
        depth++;
    }
    return depth == 0;
}

/* "<UserData>…" -> "<UserData xmlns=\"…/event\">…": the namespace it inherits from <Event>, as lxml writes it. */
static PyObject *user_data_as_lxml_writes_it(const char *element, const char *end)
{
    Py_ssize_t tail = (end - element) - LEN("<UserData>");
    Py_ssize_t n = LEN(USER_DATA_WITH_NS) + tail;
    char *buffer = PyMem_Malloc((size_t)n);
    if (buffer == NULL)
        return PyErr_NoMemory();
    memcpy(buffer, USER_DATA_WITH_NS, LEN(USER_DATA_WITH_NS));
    memcpy(buffer + LEN(USER_DATA_WITH_NS), element + LEN("<UserData>"), (size_t)tail);
    PyObject *result = PyUnicode_DecodeUTF8(buffer, n, "strict");
    PyMem_Free(buffer);
    return result;
}

/* "]]>" is not allowed in XML text: such a record is the XML parser's to refuse. */
static int has_cdata_end(const char *p, const char *end)
{
    while ((p = memchr(p, ']', (size_t)(end - p))) != NULL) {
        if (end - p >= 3 && p[1] == ']' && p[2] == '>')
            return 1;
        p++;
    }
    return 0;
}

/* The RawEvent of one rendering, or None (new reference) when it has another shape. `record_time` (ticks, or
   Py_None) stands in for a missing SystemTime. */
static PyObject *parse_rendering(PyObject *xml_text, PyObject *provenance_in, PyObject *record_time)
{
    Py_ssize_t size;
    const char *xml = PyUnicode_AsUTF8AndSize(xml_text, &size);
    if (xml == NULL) {  /* e.g. lone surrogates: not this renderer's output */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (size < LEN(PROLOGUE) || memcmp(xml, PROLOGUE, LEN(PROLOGUE)) != 0 || memchr(xml, '&', (size_t)size) ||
        has_cdata_end(xml, xml + size))
        Py_RETURN_NONE;
    Cursor c = {xml + LEN(PROLOGUE), xml + size};
    System s;
    if (!read_system(&c, &s))
        Py_RETURN_NONE;

    PyObject *event_data = NULL, *user_data = Py_None;
    Py_ssize_t rest = c.end - c.p;
    if (rest == LEN(EVENT_CLOSE) && memcmp(c.p, EVENT_CLOSE, LEN(EVENT_CLOSE)) == 0) {
        event_data = PyList_New(0);
    } else if (rest >= LEN(USER_DATA_OPEN) + LEN(USER_DATA_CLOSE) &&
               memcmp(c.p, USER_DATA_OPEN, LEN(USER_DATA_OPEN)) == 0 &&
               memcmp(c.end - LEN(USER_DATA_CLOSE), USER_DATA_CLOSE, LEN(USER_DATA_CLOSE)) == 0) {
        /* "  <UserData>…</UserData>\n</Event>\n": the element without the indent and the event's end */
        const char *element = c.p + 2, *element_end = c.end - LEN("\n</Event>\n");
        if (!user_data_is_plain(element, element_end) || find(xml + LEN(PROLOGUE), c.p, "xmlns", 5))
            Py_RETURN_NONE;
        user_data = user_data_as_lxml_writes_it(element, element_end);
        if (user_data == NULL)
            return NULL;
        event_data = PyList_New(0);
        if (event_data == NULL) {
            Py_DECREF(user_data);
            return NULL;
        }
    } else if (rest >= LEN(DATA_OPEN) + LEN(DATA_CLOSE) && memcmp(c.p, DATA_OPEN, LEN(DATA_OPEN)) == 0 &&
               memcmp(c.end - LEN(DATA_CLOSE), DATA_CLOSE, LEN(DATA_CLOSE)) == 0) {
        event_data = data_items(c.p + LEN(DATA_OPEN), c.end - LEN(DATA_CLOSE));
        if (event_data == Py_None) {
            Py_DECREF(event_data);
            Py_RETURN_NONE;
        }
    } else {
        Py_RETURN_NONE;  /* an EventData with attributes, RenderingInfo, …: the Python paths */
    }
    if (event_data == NULL)
        return NULL;

    PyObject *time_created;
    if (s.system_time.present) {
        long long ticks;
        if (!iso_ticks(s.system_time, &ticks)) {
            Py_DECREF(event_data);
            Py_XDECREF(user_data == Py_None ? NULL : user_data);
            Py_RETURN_NONE;
        }
        time_created = PyLong_FromLongLong(ticks);
    } else if (record_time != Py_None) {
        Py_INCREF(record_time);
        time_created = record_time;
    } else {
        Py_DECREF(event_data);
        Py_XDECREF(user_data == Py_None ? NULL : user_data);
        Py_RETURN_NONE;
    }
    if (user_data == Py_None)
        Py_INCREF(Py_None);  /* from here on user_data is an owned reference, consumed by set_item */

    PyObject *out = PyDict_Copy(event_template);  /* every key already in place: no resizing while filling */
    PyObject *keywords = NULL, *channel = NULL, *computer = NULL, *provenance = NULL;
    if (out == NULL)
        goto error;
    keywords = s.keywords.present && s.keywords.n ? text(s.keywords) : (Py_INCREF(Py_None), Py_None);
    channel = text(s.channel);
    computer = text(s.computer);
    provenance = PyDict_Copy(provenance_in);
    if (keywords == NULL || channel == NULL || computer == NULL || provenance == NULL)
        goto error;
    if (keywords != Py_None && is_space(keywords)) {
        Py_DECREF(keywords);
        Py_INCREF(Py_None);
        keywords = Py_None;
    }
    if (is_space(channel)) {
        Py_DECREF(channel);
        Py_INCREF(empty_str);
        channel = empty_str;
    }
    if (is_space(computer)) {
        Py_DECREF(computer);
        Py_INCREF(empty_str);
        computer = empty_str;
    }
    Py_INCREF(Py_None);
    if (set_item(out, k_provider_name, s.provider_name.present ? text(s.provider_name)
                                                                : (Py_INCREF(empty_str), empty_str)) < 0 ||
        set_item(out, k_provider_guid, text_or_none(s.provider_guid)) < 0 ||
        set_item(out, k_event_source_name, text_or_none(s.event_source_name)) < 0 ||
        set_item(out, k_event_id, int_or_none(s.event_id)) < 0 ||
        set_item(out, k_qualifiers, int_or_none(s.qualifiers)) < 0 ||
        set_item(out, k_version, int_or_none(s.version)) < 0 || set_item(out, k_level, int_or_none(s.level)) < 0 ||
        set_item(out, k_task, int_or_none(s.task)) < 0 || set_item(out, k_opcode, int_or_none(s.opcode)) < 0 ||
        set_item(out, k_keywords, keywords) < 0 || set_item(out, k_time_created, time_created) < 0 ||
        set_item(out, k_event_record_id, int_or_none(s.record_id)) < 0 ||
        set_item(out, k_activity_id, text_or_none(s.activity_id)) < 0 ||
        set_item(out, k_related_activity_id, text_or_none(s.related_activity_id)) < 0 ||
        set_item(out, k_process_id, int_or_none(s.process_id)) < 0 ||
        set_item(out, k_thread_id, int_or_none(s.thread_id)) < 0 || set_item(out, k_channel, channel) < 0 ||
        set_item(out, k_computer, computer) < 0 || set_item(out, k_user_id, text_or_none(s.user_id)) < 0 ||
        set_item(out, k_event_data, event_data) < 0 || set_item(out, k_user_data_xml, user_data) < 0 ||
        set_item(out, k_rendered_message, Py_None) < 0 || set_item(out, k_provenance, provenance) < 0) {
        /* set_item consumed every value passed to it, including the one that failed */
        Py_DECREF(out);
        return NULL;
    }
    return out;

error:
    Py_XDECREF(out);
    Py_DECREF(user_data);
    Py_XDECREF(keywords);
    Py_XDECREF(channel);
    Py_XDECREF(computer);
    Py_XDECREF(provenance);
    Py_DECREF(time_created);
    Py_DECREF(event_data);
    return NULL;
}

static PyObject *parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyDict_Check(args[1]) ||
        (args[2] != Py_None && !PyLong_Check(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "parse(xml: str, provenance: dict, record_time: int | None)");
        return NULL;
    }
    return parse_rendering(args[0], args[1], args[2]);
}

/* One record of evtx's PyEvtxParser.records() ({"event_record_id", "timestamp", "data"}) -> RawEvent, with what
   sources._read_evtx adds in Python: the header FILETIME's 7th digit when SystemTime is the same microsecond,
   the header as the time when SystemTime is missing, and the record id when EventRecordID is. None (declined):
   the caller does it in Python. */
static PyObject *from_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "from_record(record: dict, provenance: dict)");
        return NULL;
    }
    PyObject *xml = PyDict_GetItemWithError(args[0], k_data);
    PyObject *timestamp = PyDict_GetItemWithError(args[0], k_timestamp);
    PyObject *record_id = PyDict_GetItemWithError(args[0], k_record_id);
    if (PyErr_Occurred())
        return NULL;
    if (xml == NULL || timestamp == NULL || record_id == NULL || !PyUnicode_Check(xml) ||
        !PyUnicode_Check(timestamp) || !PyLong_Check(record_id))
        Py_RETURN_NONE;
    Py_ssize_t n;
    const char *ts = PyUnicode_AsUTF8AndSize(timestamp, &n);
    if (ts == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (n >= LEN(" UTC") && memcmp(ts + n - LEN(" UTC"), " UTC", LEN(" UTC")) == 0)
        n -= LEN(" UTC");
    long long header;
    if (!iso_ticks((Span){ts, n, 1}, &header))
        Py_RETURN_NONE;
    PyObject *header_time = PyLong_FromLongLong(header);
    if (header_time == NULL)
        return NULL;
    PyObject *event = parse_rendering(xml, args[1], header_time);
    if (event == NULL || event == Py_None) {
        Py_DECREF(header_time);
        return event;
    }
    /* The rendering rounds SystemTime to microseconds; the header keeps all 7 digits when it is the same instant. */
    PyObject *time_created = PyDict_GetItem(event, k_time_created);  /* borrowed; an int set by parse_rendering */
    int overflow = 0;
    long long event_ticks = time_created ? PyLong_AsLongLongAndOverflow(time_created, &overflow) : 0;
    if (time_created && !overflow && !PyErr_Occurred() && floor_div10(header) == floor_div10(event_ticks) &&
        PyDict_SetItem(event, k_time_created, header_time) < 0)
        goto error;
    if (PyErr_Occurred())
        goto error;
    Py_DECREF(header_time);
    if (PyDict_GetItem(event, k_event_record_id) == Py_None && PyDict_SetItem(event, k_event_record_id, record_id) < 0) {
        Py_DECREF(event);
        return NULL;
    }
    return event;
error:
    Py_DECREF(header_time);
    Py_DECREF(event);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(xml, provenance, record_time) -> RawEvent dict, or None when the XML is not the evtx rendering"},
    {"from_record", (PyCFunction)(void (*)(void))from_record, METH_FASTCALL,
     "from_record(record, provenance) -> RawEvent dict of one PyEvtxParser record, or None (declined)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "producers._evtxrender", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__evtxrender(void)
{
    struct {
        PyObject **slot;
        const char *name;
    } keys[] = {
        {&k_provider_name, "provider_name"}, {&k_provider_guid, "provider_guid"},
        {&k_event_source_name, "event_source_name"}, {&k_event_id, "event_id"}, {&k_qualifiers, "qualifiers"},
        {&k_version, "version"}, {&k_level, "level"}, {&k_task, "task"}, {&k_opcode, "opcode"},
        {&k_keywords, "keywords"}, {&k_time_created, "time_created"}, {&k_event_record_id, "event_record_id"},
        {&k_activity_id, "activity_id"}, {&k_related_activity_id, "related_activity_id"},
        {&k_process_id, "process_id"}, {&k_thread_id, "thread_id"}, {&k_channel, "channel"},
        {&k_computer, "computer"}, {&k_user_id, "user_id"}, {&k_event_data, "event_data"},
        {&k_user_data_xml, "user_data_xml"}, {&k_rendered_message, "rendered_message"},
        {&k_provenance, "provenance"}, {&k_name, "name"}, {&k_value, "value"}, {&empty_str, ""},
        {&k_data, "data"}, {&k_timestamp, "timestamp"}, {&k_record_id, "event_record_id"},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        *keys[i].slot = PyUnicode_InternFromString(keys[i].name);
        if (*keys[i].slot == NULL)
            return NULL;
    }
    PyObject *event_keys[] = {
        k_provider_name, k_provider_guid, k_event_source_name, k_event_id, k_qualifiers, k_version, k_level, k_task,
        k_opcode, k_keywords, k_time_created, k_event_record_id, k_activity_id, k_related_activity_id,
        k_process_id, k_thread_id, k_channel, k_computer, k_user_id, k_event_data, k_user_data_xml,
        k_rendered_message, k_provenance,
    };
    event_template = PyDict_New();
    item_template = PyDict_New();
    if (event_template == NULL || item_template == NULL || PyDict_SetItem(item_template, k_name, Py_None) < 0 ||
        PyDict_SetItem(item_template, k_value, Py_None) < 0)
        return NULL;
    for (size_t i = 0; i < sizeof(event_keys) / sizeof(event_keys[0]); i++)
        if (PyDict_SetItem(event_template, event_keys[i], Py_None) < 0)
            return NULL;
    return PyModule_Create(&module_def);
}
