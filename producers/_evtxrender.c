/* The `evtx` parser's XML rendering of one record -> RawEvent dict, or straight to its Avro encoding, in C.

   Covers exactly the shape producers/adapters/event_xml.py calls "the evtx parser's own rendering": the prologue,
   the System block with the renderer's whitespace, then flat <Data> elements (+ <Binary>), a plain UserData
   element, or nothing, and no entity or character reference anywhere. For anything else it returns None and the
   caller takes the Python paths, which handle every shape; so this code may refuse more than it must, but what it
   returns equals what those paths return (tests/producers compare them on every EVTX record of the corpus and on
   variants built to probe each rule).

   parse(xml: str, provenance: dict, record_time: int | None) -> dict | None
   from_record(record: dict, provenance: dict) -> dict | None  (one PyEvtxParser record)
   encode_records(records, caught, provenance: bytes, limit, skip) -> a chunk of records as RawEvents in Avro
   (the bytes `schemas.codec` writes for what from_record returns; see encode_records below)
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
    if (!stop_at_quote) {  /* text, most of a record's bytes: memchr is vectorised */
        const char *lt = memchr(c->p, '<', (size_t)(c->end - c->p));
        c->p = lt != NULL ? lt : c->end;
    } else {
        while (c->p < c->end && *c->p != '<' && *c->p != '"' && *c->p != '\t' && *c->p != '\r' && *c->p != '\n')
            c->p++;
    }
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


/* One <Data> element: its Name attribute (absent: null) and its text. */
typedef struct {
    Span name, value;
} Item;

/* The <Data> elements of one record: in place for the usual few dozen, on the heap beyond. */
#define LOCAL_ITEMS 48
typedef struct {
    Item *v;
    Py_ssize_t n, cap;
    Item local[LOCAL_ITEMS];
} Items;

static void items_init(Items *items)
{
    items->v = items->local;
    items->n = 0;
    items->cap = LOCAL_ITEMS;
}

static void items_free(Items *items)
{
    if (items->v != items->local)
        PyMem_Free(items->v);
    items_init(items);
}

static int items_push(Items *items, Span name, Span value)
{
    if (items->n == items->cap) {
        Py_ssize_t cap = items->cap * 2;
        Item *grown = PyMem_Malloc(sizeof(Item) * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(grown, items->v, sizeof(Item) * (size_t)items->n);
        if (items->v != items->local)
            PyMem_Free(items->v);
        items->v = grown;
        items->cap = cap;
    }
    items->v[items->n].name = name;
    items->v[items->n].value = value;
    items->n++;
    return 0;
}

/* The body of <EventData>: flat `<Data>text</Data>` / `<Data Name="n">text</Data>` elements (text between them is
   layout), optionally a last <Binary> (not carried). 1 with `items` filled, 0 when the body has another shape,
   -1 on error. */
static int read_data_items(const char *p, const char *end, Items *items)
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
            return 0;
        open--;
        if (q - LEN("</Binary>") - open < LEN("<Binary>") || memcmp(open, "<Binary>", LEN("<Binary>")))
            return 0;
        end = open;
    }
    Cursor c = {p, end};
    while (1) {
        const char *lt = memchr(c.p, '<', (size_t)(c.end - c.p));
        if (lt == NULL)
            return 1;
        c.p = lt;
        Span name = {NULL, 0, 0};
        if (!LIT(&c, "<Data>")) {
            if (!LIT(&c, "<Data Name=\""))
                return 0;
            name = until_markup(&c, 1);
            if (!LIT(&c, "\">"))
                return 0;
        }
        Span value = until_markup(&c, 0);
        if (!LIT(&c, "</Data>"))
            return 0;
        if (items_push(items, name, value) < 0)
            return -1;
    }
}

static const char USER_DATA_OPEN[] = "  <UserData>";
static const char USER_DATA_CLOSE[] = "</UserData>\n</Event>\n";
static const char USER_DATA_WITH_NS[] = "<UserData xmlns=\"http://schemas.microsoft.com/win/2004/08/events/event\">";

static int find(const char *p, const char *end, const char *needle, Py_ssize_t n)
{
    while (end - p >= n && (p = memchr(p, needle[0], (size_t)(end - p - n + 1))) != NULL) {
        if (memcmp(p, needle, (size_t)n) == 0)
            return 1;
        p++;
    }
    return 0;
}

static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
           ch == '.' || ch == ':' || ch == '-';
}

static int name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static int alphanumeric(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

/* A namespace URI of plain characters that libxml2 takes as it is: an absolute http(s) URI with a host and no port
   (it refuses e.g. the empty port of "http://http://…"), or a relative one like "LoadPerf" (a warning only).
   Either way: after the scheme, letters, digits, "_.-/" only, starting with a letter or digit, no other ':'. */
static int plain_namespace(const char *p, const char *end)
{
    Py_ssize_t n = end - p;
    if (n > 7 && memcmp(p, "http://", 7) == 0)
        p += 7;
    else if (n > 8 && memcmp(p, "https://", 8) == 0)
        p += 8;
    if (p >= end || !alphanumeric(*p))
        return 0;
    for (; p < end; p++)
        if (*p == ':' || !(name_char(*p) || *p == '/'))
            return 0;
    return 1;
}

/* Whether the attribute name `attribute` (up to `end`) declares a namespace: 1 for xmlns, 2 for xmlns:prefix,
   0 for an ordinary unprefixed attribute, -1 for anything else (prefixed attributes: lxml's namespace rules). */
static int namespace_declaration(const char *attribute, const char *end)
{
    Py_ssize_t n = end - attribute;
    const char *colon = memchr(attribute, ':', (size_t)n);
    if (colon == NULL)
        return n == 5 && memcmp(attribute, "xmlns", 5) == 0;
    const char *prefix = colon + 1;
    if (colon != attribute + 5 || memcmp(attribute, "xmlns", 5) != 0 || prefix == end || !name_start(*prefix) ||
        memchr(prefix, ':', (size_t)(end - prefix)) != NULL ||
        (end - prefix >= 3 && (prefix[0] | 0x20) == 'x' && (prefix[1] | 0x20) == 'm' && (prefix[2] | 0x20) == 'l'))
        return -1;
    return 2;
}

/* True when lxml would write the UserData element back exactly as it is (event_xml._user_data_as_lxml_writes_it):
   only plain tags (ASCII names, double-quoted attributes without <>&, tab, CR or LF, no space before > or />,
   namespace declarations before the other attributes, as lxml writes them, no attribute twice), balanced, no '>'
   or CR in text. (An empty <a></a> is fine: user_data_lxml_form writes it as lxml does, <a/>.) */
#define MAX_ATTRIBUTES 16
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
        if (name_length == 0 || !name_start(*name) || memchr(name, ':', (size_t)name_length) != NULL)
            return 0;
        if (closing) {
            if (p >= end || *p != '>' || depth == 0 || open_lengths[depth - 1] != name_length ||
                memcmp(open_names[depth - 1], name, (size_t)name_length) != 0)
                return 0;
            depth--;
            p++;
            continue;
        }
        const char *attributes[MAX_ATTRIBUTES];
        Py_ssize_t attribute_lengths[MAX_ATTRIBUTES];
        int count = 0, ordinary_seen = 0;
        while (p < end && *p == ' ') {
            p++;
            const char *attribute = p;
            while (p < end && name_char(*p))
                p++;
            Py_ssize_t attribute_length = p - attribute;
            if (attribute_length == 0 || !name_start(*attribute) || end - p < 2 || p[0] != '=' || p[1] != '"')
                return 0;
            int declaration = namespace_declaration(attribute, p);
            if (declaration < 0 || (declaration && ordinary_seen) || count == MAX_ATTRIBUTES)
                return 0;
            ordinary_seen |= !declaration;
            for (int i = 0; i < count; i++)
                if (attribute_lengths[i] == attribute_length &&
                    memcmp(attributes[i], attribute, (size_t)attribute_length) == 0)
                    return 0;  /* an attribute twice: not well-formed */
            attributes[count] = attribute;
            attribute_lengths[count++] = attribute_length;
            p += 2;
            const char *value = p;
            while (p < end && *p != '"' && *p != '<' && *p != '>' && *p != '\t' && *p != '\n' && *p != '\r')
                p++;
            if (p >= end || *p != '"')
                return 0;
            if (declaration && !plain_namespace(value, p))
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
        open_names[depth] = name;
        open_lengths[depth] = name_length;
        depth++;
    }
    return depth == 0;
}

/* The UserData element (one user_data_is_plain accepted) as lxml writes it: "<UserData>…" -> "<UserData
   xmlns=\"…/event\">…" (the namespace it inherits from <Event>), and every empty element <a …></a> as <a …/>.
   Writes to `out` unless it is NULL; returns the length either way. */
static Py_ssize_t user_data_lxml_form(const char *element, const char *end, char *out)
{
    Py_ssize_t n = 0;
#define EMIT(text, length)                                        \
    do {                                                          \
        if (out != NULL)                                          \
            memcpy(out + n, (text), (size_t)(length));            \
        n += (length);                                            \
    } while (0)
    EMIT(USER_DATA_WITH_NS, LEN(USER_DATA_WITH_NS) - 1);  /* all but its '>' */
    const char *p = element + LEN("<UserData"), *copied = p;  /* p: the '>' ending an opening tag */
    while (1) {
        if (end - p >= 3 && p[1] == '<' && p[2] == '/') {  /* <a …></a> */
            EMIT(copied, p - copied);
            EMIT("/>", 2);
            p = memchr(p + 1, '>', (size_t)(end - p - 1)) + 1;  /* past the closing tag */
            copied = p;
        }
        /* the next opening tag that is not self-closing (attribute values hold no '>') */
        const char *tag;
        while ((tag = memchr(p, '<', (size_t)(end - p))) != NULL) {
            p = memchr(tag, '>', (size_t)(end - tag));
            if (tag[1] != '/' && p[-1] != '/')
                break;
        }
        if (tag == NULL)
            break;
    }
    EMIT(copied, end - copied);
#undef EMIT
    return n;
}

static PyObject *user_data_as_lxml_writes_it(const char *element, const char *end)
{
    Py_ssize_t n = user_data_lxml_form(element, end, NULL);
    char *buffer = PyMem_Malloc((size_t)n);
    if (buffer == NULL)
        return PyErr_NoMemory();
    user_data_lxml_form(element, end, buffer);
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


/* What one rendering holds, as spans of its UTF-8 text: read once, then built into a dict or written as Avro. */
enum { BODY_EMPTY, BODY_USER_DATA, BODY_EVENT_DATA };
typedef struct {
    System s;
    int has_time;  /* SystemTime present (and then valid): `ticks` */
    long long ticks;
    int body;
    const char *user_data, *user_data_end;  /* the <UserData> element, without its indent and the event's end */
    Items items;
} Rendering;

/* 1: the evtx renderer's own shape, `r` filled (items_free it after); 0: another shape (declined); -1: error. */
static int read_rendering(const char *xml, Py_ssize_t size, Rendering *r)
{
    items_init(&r->items);
    r->body = BODY_EMPTY;
    r->has_time = 0;
    r->user_data = r->user_data_end = NULL;
    if (size < LEN(PROLOGUE) || memcmp(xml, PROLOGUE, LEN(PROLOGUE)) != 0 || memchr(xml, '&', (size_t)size) ||
        has_cdata_end(xml, xml + size))
        return 0;
    Cursor c = {xml + LEN(PROLOGUE), xml + size};
    if (!read_system(&c, &r->s))
        return 0;
    if (r->s.system_time.present) {
        if (!iso_ticks(r->s.system_time, &r->ticks))
            return 0;
        r->has_time = 1;
    }
    Py_ssize_t rest = c.end - c.p;
    if (rest == LEN(EVENT_CLOSE) && memcmp(c.p, EVENT_CLOSE, LEN(EVENT_CLOSE)) == 0)
        return 1;
    if (rest >= LEN(USER_DATA_OPEN) + LEN(USER_DATA_CLOSE) && memcmp(c.p, USER_DATA_OPEN, LEN(USER_DATA_OPEN)) == 0 &&
        memcmp(c.end - LEN(USER_DATA_CLOSE), USER_DATA_CLOSE, LEN(USER_DATA_CLOSE)) == 0) {
        /* "  <UserData>…</UserData>\n</Event>\n": the element without the indent and the event's end */
        const char *element = c.p + 2, *element_end = c.end - LEN("\n</Event>\n");
        if (!user_data_is_plain(element, element_end) || find(xml + LEN(PROLOGUE), c.p, "xmlns", 5))
            return 0;
        r->body = BODY_USER_DATA;
        r->user_data = element;
        r->user_data_end = element_end;
        return 1;
    }
    /* "  <EventData>" or, in classic Application events, "  <EventData Name=\"…\">" (a name not carried) */
    const char *body = NULL;
    if (rest >= LEN(DATA_OPEN) && memcmp(c.p, DATA_OPEN, LEN(DATA_OPEN)) == 0) {
        body = c.p + LEN(DATA_OPEN);
    } else if (LIT(&c, "  <EventData Name=\"")) {
        until_markup(&c, 1);
        if (LIT(&c, "\">"))
            body = c.p;
    }
    if (body != NULL && c.end - body >= LEN(DATA_CLOSE) &&
        memcmp(c.end - LEN(DATA_CLOSE), DATA_CLOSE, LEN(DATA_CLOSE)) == 0) {
        int rc = read_data_items(body, c.end - LEN(DATA_CLOSE), &r->items);
        if (rc <= 0) {
            items_free(&r->items);
            return rc;
        }
        r->body = BODY_EVENT_DATA;
        return 1;
    }
    return 0;  /* an EventData with attributes, RenderingInfo, …: the Python paths */
}

static PyObject *event_data_list(const Items *items)
{
    PyObject *list = PyList_New(items->n);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < items->n; i++) {
        PyObject *item = PyDict_Copy(item_template);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
        if (set_item(item, k_name, text_or_none(items->v[i].name)) < 0 ||
            set_item(item, k_value, text(items->v[i].value)) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

/* The RawEvent dict of a rendering read by read_rendering, or None (new reference) when it has no time.
   `record_time` (ticks, or Py_None) stands in for a missing SystemTime. */
static PyObject *build_event(const Rendering *r, PyObject *provenance_in, PyObject *record_time)
{
    const System *s = &r->s;
    PyObject *time_created;
    if (r->has_time) {
        time_created = PyLong_FromLongLong(r->ticks);
        if (time_created == NULL)
            return NULL;
    } else if (record_time != Py_None) {
        Py_INCREF(record_time);
        time_created = record_time;
    } else {
        Py_RETURN_NONE;
    }
    PyObject *event_data = event_data_list(&r->items);
    PyObject *user_data = r->body == BODY_USER_DATA ? user_data_as_lxml_writes_it(r->user_data, r->user_data_end)
                                                    : (Py_INCREF(Py_None), Py_None);
    PyObject *out = NULL, *keywords = NULL, *channel = NULL, *computer = NULL, *provenance = NULL;
    if (event_data == NULL || user_data == NULL)
        goto error;
    out = PyDict_Copy(event_template);  /* every key already in place: no resizing while filling */
    if (out == NULL)
        goto error;
    keywords = s->keywords.present && s->keywords.n ? text(s->keywords) : (Py_INCREF(Py_None), Py_None);
    channel = text(s->channel);
    computer = text(s->computer);
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
    /* The values made above first, every one of them (`|`): each is consumed whatever happens to the others. The
       keys are all in place already, so the order of setting does not change the dict's order. */
    int failed = (set_item(out, k_keywords, keywords) < 0) | (set_item(out, k_time_created, time_created) < 0) |
                 (set_item(out, k_channel, channel) < 0) | (set_item(out, k_computer, computer) < 0) |
                 (set_item(out, k_event_data, event_data) < 0) | (set_item(out, k_user_data_xml, user_data) < 0) |
                 (set_item(out, k_rendered_message, Py_None) < 0) | (set_item(out, k_provenance, provenance) < 0);
    if (failed ||
        set_item(out, k_provider_name, s->provider_name.present ? text(s->provider_name)
                                                                : (Py_INCREF(empty_str), empty_str)) < 0 ||
        set_item(out, k_provider_guid, text_or_none(s->provider_guid)) < 0 ||
        set_item(out, k_event_source_name, text_or_none(s->event_source_name)) < 0 ||
        set_item(out, k_event_id, int_or_none(s->event_id)) < 0 ||
        set_item(out, k_qualifiers, int_or_none(s->qualifiers)) < 0 ||
        set_item(out, k_version, int_or_none(s->version)) < 0 || set_item(out, k_level, int_or_none(s->level)) < 0 ||
        set_item(out, k_task, int_or_none(s->task)) < 0 || set_item(out, k_opcode, int_or_none(s->opcode)) < 0 ||
        set_item(out, k_event_record_id, int_or_none(s->record_id)) < 0 ||
        set_item(out, k_activity_id, text_or_none(s->activity_id)) < 0 ||
        set_item(out, k_related_activity_id, text_or_none(s->related_activity_id)) < 0 ||
        set_item(out, k_process_id, int_or_none(s->process_id)) < 0 ||
        set_item(out, k_thread_id, int_or_none(s->thread_id)) < 0 ||
        set_item(out, k_user_id, text_or_none(s->user_id)) < 0) {
        /* set_item consumed every value passed to it, including the one that failed; later ones were not made */
        Py_DECREF(out);
        return NULL;
    }
    return out;

error:
    Py_XDECREF(out);
    Py_XDECREF(user_data);
    Py_XDECREF(keywords);
    Py_XDECREF(channel);
    Py_XDECREF(computer);
    Py_XDECREF(provenance);
    Py_DECREF(time_created);
    Py_XDECREF(event_data);
    return NULL;
}

/* The RawEvent of one rendering, or None (new reference) when it has another shape. */
static PyObject *parse_rendering(PyObject *xml_text, PyObject *provenance_in, PyObject *record_time)
{
    Py_ssize_t size;
    const char *xml = PyUnicode_AsUTF8AndSize(xml_text, &size);
    if (xml == NULL) {  /* e.g. lone surrogates: not this renderer's output */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Rendering r;
    int rc = read_rendering(xml, size, &r);
    if (rc < 0)
        return NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    PyObject *event = build_event(&r, provenance_in, record_time);
    items_free(&r.items);
    return event;
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


/* ------------------------------------------------------------------ the RawEvent as Avro, without any dict

   The same rendering, written straight in the RawEvent.v1 binary encoding (field order of the schema, unions as
   their branch index, ints and longs as zigzag varints, strings as length + UTF-8, arrays as one block + 0), so
   what the dict path gives `schemas.codec` is never built. Values are those build_event would put in the dict;
   numbers outside the schema's int/long range, and anything else unusual, are declined and take the dict path. */

/* A growing bytes object, handed over as it is at the end (no copy). `hint`: the size to start with. */
typedef struct {
    PyObject *bytes;
    char *p;
    Py_ssize_t n, cap, hint;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra)
{
    if (b->n + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap * 2 : (b->hint > 4096 ? b->hint : 4096);
    while (cap < b->n + extra)
        cap *= 2;
    if (b->bytes == NULL)
        b->bytes = PyBytes_FromStringAndSize(NULL, cap);
    else
        _PyBytes_Resize(&b->bytes, cap);  /* on failure: freed and NULL */
    if (b->bytes == NULL)
        return -1;
    b->p = PyBytes_AS_STRING(b->bytes);
    b->cap = cap;
    return 0;
}

/* The bytes written (a new reference), or NULL on error; `b` is left empty. */
static PyObject *buf_finish(Buf *b)
{
    PyObject *bytes = b->bytes;
    b->bytes = NULL;
    if (bytes == NULL)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (_PyBytes_Resize(&bytes, b->n) < 0)
        return NULL;
    return bytes;
}

/* Callers reserve first; these only write. A varint takes at most 10 bytes. */
static void put_byte(Buf *b, unsigned char byte)
{
    b->p[b->n++] = (char)byte;
}

static void put_long(Buf *b, long long value)
{
    uint64_t z = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    while (z >= 0x80) {
        b->p[b->n++] = (char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    b->p[b->n++] = (char)z;
}

static void put_raw(Buf *b, const char *s, Py_ssize_t n)
{
    if (n > 0)
        memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
}

static void put_string(Buf *b, const char *s, Py_ssize_t n)
{
    put_long(b, n);
    put_raw(b, s, n);
}

/* ["null", "string"]: null when absent */
static void put_optional_string(Buf *b, Span span)
{
    if (!span.present) {
        put_byte(b, 0);
        return;
    }
    put_byte(b, 2);
    put_string(b, span.s, span.n);
}

/* The value of a digits span: 0 null (absent or empty), 1 `*out` set, -1 beyond `max` (declined). */
static int number(Span span, long long max, long long *out)
{
    if (!span.present || span.n == 0)
        return 0;
    if (span.n > 18)
        return -1;
    long long value = 0;
    for (Py_ssize_t i = 0; i < span.n; i++)
        value = value * 10 + (span.s[i] - '0');
    if (value > max)
        return -1;
    *out = value;
    return 1;
}

/* str.isspace() of the span's text, as is_space on the decoded str: 1, 0, or -1 on error. */
static int span_is_space(Span span)
{
    if (span.n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < span.n; i++) {
        unsigned char ch = (unsigned char)span.s[i];
        if (ch >= 0x80) {
            PyObject *decoded = PyUnicode_DecodeUTF8(span.s, span.n, "strict");
            if (decoded == NULL)
                return -1;
            int space = is_space(decoded);
            Py_DECREF(decoded);
            return space;
        }
        if (!Py_UNICODE_ISSPACE(ch))
            return 0;
    }
    return 1;
}

#define INT_MAX32 2147483647LL
#define LONG_MAX64 9223372036854775807LL
enum { N_QUALIFIERS, N_VERSION, N_LEVEL, N_TASK, N_OPCODE, N_PROCESS, N_THREAD, N_COUNT };

/* One record (its rendering read into `r`, its header time and record id) appended to `b` as a RawEvent.
   1 written (`host` = the computer as the batch key takes it), 0 declined (nothing written), -1 error. */
static int write_event(Buf *b, const Rendering *r, long long header, PyObject *header_record_id,
                       const char *provenance, Py_ssize_t provenance_n, Span *host)
{
    const System *s = &r->s;
    const Span numeric[N_COUNT] = {s->qualifiers, s->version, s->level, s->task, s->opcode, s->process_id,
                                   s->thread_id};
    const long long maxima[N_COUNT] = {INT_MAX32, INT_MAX32, INT_MAX32, INT_MAX32, INT_MAX32, LONG_MAX64,
                                       LONG_MAX64};
    long long values[N_COUNT], event_id, record_id;
    int present[N_COUNT];
    for (int i = 0; i < N_COUNT; i++) {
        present[i] = number(numeric[i], maxima[i], &values[i]);
        if (present[i] < 0)
            return 0;
    }
    if (number(s->event_id, INT_MAX32, &event_id) != 1)
        return 0;
    int has_record_id = number(s->record_id, LONG_MAX64, &record_id);
    if (has_record_id < 0)
        return 0;
    if (has_record_id == 0) {  /* the record header's id, as from_record takes it */
        int overflow = 0;
        record_id = PyLong_AsLongLongAndOverflow(header_record_id, &overflow);
        if (overflow)
            return 0;
        if (record_id == -1 && PyErr_Occurred())
            return -1;
    }
    /* The rendering rounds SystemTime to microseconds; the header keeps all 7 digits when it is the same instant. */
    long long ticks = r->has_time ? r->ticks : header;
    if (floor_div10(header) == floor_div10(ticks))
        ticks = header;

    Span keywords = s->keywords, channel = s->channel, computer = s->computer;
    int space;
    if (keywords.present && keywords.n) {
        if ((space = span_is_space(keywords)) < 0)
            return -1;
        keywords.present = !space;
    } else {
        keywords.present = 0;
    }
    if ((space = span_is_space(channel)) < 0)
        return -1;
    if (space)
        channel.n = 0;
    if ((space = span_is_space(computer)) < 0)
        return -1;
    if (space)
        computer.n = 0;
    *host = computer;

    /* Every string's bytes plus 11 bytes per field (varint + union index) bound the size. */
    Py_ssize_t bound = 64 * 11 + provenance_n + s->provider_name.n + s->provider_guid.n + s->event_source_name.n +
                       keywords.n + s->activity_id.n + s->related_activity_id.n + channel.n + computer.n +
                       s->user_id.n + LEN(USER_DATA_WITH_NS) + (r->user_data_end - r->user_data);
    for (Py_ssize_t i = 0; i < r->items.n; i++)
        bound += 22 + r->items.v[i].name.n + r->items.v[i].value.n;
    if (buf_reserve(b, bound) < 0)
        return -1;

    put_string(b, s->provider_name.s, s->provider_name.present ? s->provider_name.n : 0);
    put_optional_string(b, s->provider_guid);
    put_optional_string(b, s->event_source_name);
    put_long(b, event_id);
    for (int i = N_QUALIFIERS; i <= N_OPCODE; i++) {
        put_byte(b, present[i] ? 2 : 0);
        if (present[i])
            put_long(b, values[i]);
    }
    put_optional_string(b, keywords);
    put_long(b, ticks);
    put_byte(b, 2);
    put_long(b, record_id);
    put_optional_string(b, s->activity_id);
    put_optional_string(b, s->related_activity_id);
    for (int i = N_PROCESS; i <= N_THREAD; i++) {
        put_byte(b, present[i] ? 2 : 0);
        if (present[i])
            put_long(b, values[i]);
    }
    put_string(b, channel.s, channel.n);
    put_string(b, computer.s, computer.n);
    put_optional_string(b, s->user_id);
    if (r->items.n) {
        put_long(b, r->items.n);
        for (Py_ssize_t i = 0; i < r->items.n; i++) {
            put_optional_string(b, r->items.v[i].name);
            put_byte(b, 2);
            put_string(b, r->items.v[i].value.s, r->items.v[i].value.n);
        }
    }
    put_byte(b, 0);  /* the end of the EventData array */
    if (r->body == BODY_USER_DATA) {
        Py_ssize_t n = user_data_lxml_form(r->user_data, r->user_data_end, NULL);
        put_byte(b, 2);
        put_long(b, n);
        b->n += user_data_lxml_form(r->user_data, r->user_data_end, b->p + b->n);
    } else {
        put_byte(b, 0);
    }
    put_byte(b, 0);  /* rendered_message: null */
    put_raw(b, provenance, provenance_n);
    return 1;
}

/* The header fields of one PyEvtxParser record: 1, or 0 when it is not the shape from_record takes. */
static int record_header(PyObject *record, PyObject **xml, long long *header, PyObject **record_id)
{
    if (!PyDict_Check(record))
        return 0;
    PyObject *timestamp = PyDict_GetItemWithError(record, k_timestamp);
    *xml = PyDict_GetItemWithError(record, k_data);
    *record_id = PyDict_GetItemWithError(record, k_record_id);
    if (PyErr_Occurred())
        return -1;
    if (*xml == NULL || timestamp == NULL || *record_id == NULL || !PyUnicode_Check(*xml) ||
        !PyUnicode_Check(timestamp) || !PyLong_Check(*record_id))
        return 0;
    Py_ssize_t n;
    const char *ts = PyUnicode_AsUTF8AndSize(timestamp, &n);
    if (ts == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (n >= LEN(" UTC") && memcmp(ts + n - LEN(" UTC"), " UTC", LEN(" UTC")) == 0)
        n -= LEN(" UTC");
    return iso_ticks((Span){ts, n, 1}, header);
}

/* One record -> Avro appended to `b`: 1 written, 0 declined, -1 error. `host` points into the record's text. */
static int encode_record(PyObject *record, Buf *b, const char *provenance, Py_ssize_t provenance_n, Span *host)
{
    PyObject *xml_text, *record_id;
    long long header;
    int rc = record_header(record, &xml_text, &header, &record_id);
    if (rc <= 0)
        return rc;
    Py_ssize_t size;
    const char *xml = PyUnicode_AsUTF8AndSize(xml_text, &size);
    if (xml == NULL) {
        PyErr_Clear();
        return 0;
    }
    Rendering r;
    rc = read_rendering(xml, size, &r);
    if (rc <= 0)
        return rc;
    rc = write_event(b, &r, header, record_id, provenance, provenance_n, host);
    items_free(&r.items);
    return rc;
}

enum { STOP_LIMIT, STOP_END, STOP_ERROR, STOP_RECORD };

/* Whether `host` (a str) is the text of `span`. */
static int same_host(PyObject *host, Span span)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(host, &n);
    return s != NULL && n == span.n && memcmp(s, span.s, (size_t)n) == 0;
}

/* encode_records(records, caught, provenance, limit, skip)
     -> (stop, taken, data, ends, runs, pending)

   Takes up to `limit` records from the PyEvtxParser iterator `records` and appends each as a RawEvent in Avro to
   `data` (bytes); `ends` holds each event's end offset in `data` (native uint32), `runs` the (host, first event
   index) where the computer changes. The first `skip` records are taken but not encoded (resuming); None
   records are passed over. `taken` counts the records taken (skipped included, `pending` not).
   It stops early, with `pending`, when the caller must look: STOP_RECORD, a record it declined or one whose
   reading added to `caught` (the parser's warnings; the caller reports those first); STOP_ERROR, the exception
   the iterator raised; STOP_END, the end. `provenance` is the Provenance record already in Avro. */
static PyObject *encode_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyIter_Check(args[0]) || !PyList_Check(args[1]) || !PyBytes_Check(args[2]) ||
        !PyLong_Check(args[3]) || !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_records(records: iterator, caught: list, provenance: bytes, limit: int, skip: int)");
        return NULL;
    }
    PyObject *records = args[0], *caught = args[1];
    const char *provenance = PyBytes_AS_STRING(args[2]);
    Py_ssize_t provenance_n = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]), skip = PyLong_AsSsize_t(args[4]);
    if ((limit == -1 || skip == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t seen = PyList_GET_SIZE(caught), taken = 0, count = 0;
    /* started at the size the last chunk of this many records took, so it rarely grows (each growth copies) */
    static Py_ssize_t bytes_per_record = 2048;
    /* capped: a chunk of huge records must not make the next call reserve hundreds of MB up front */
    Py_ssize_t reserve = bytes_per_record * (limit < 4096 ? limit : 4096) * 5 / 4;
    Buf data = {NULL, NULL, 0, 0, reserve < (8 << 20) ? reserve : (8 << 20)},
        ends = {NULL, NULL, 0, 0, 4 * (limit < 4096 ? limit : 4096)};
    PyObject *runs = PyList_New(0), *host = Py_None, *pending = NULL, *result = NULL;
    int stop = STOP_LIMIT;
    if (runs == NULL)
        return NULL;
    while (taken < limit) {
        PyObject *record = PyIter_Next(records);
        int warned = PyList_GET_SIZE(caught) != seen;
        if (record == NULL) {
            if (PyErr_Occurred()) {
                PyObject *type, *value, *traceback;
                PyErr_Fetch(&type, &value, &traceback);
                PyErr_NormalizeException(&type, &value, &traceback);
                if (traceback != NULL)
                    PyException_SetTraceback(value, traceback);
                Py_XDECREF(type);
                Py_XDECREF(traceback);
                pending = value;
                stop = STOP_ERROR;
            } else {
                stop = STOP_END;
            }
            break;
        }
        if (warned) {
            pending = record;
            stop = STOP_RECORD;
            break;
        }
        if (record == Py_None) {
            Py_DECREF(record);
            continue;
        }
        if (skip > 0) {
            skip--;
            taken++;
            Py_DECREF(record);
            continue;
        }
        Span computer;
        int rc = encode_record(record, &data, provenance, provenance_n, &computer);
        if (rc == 0) {
            pending = record;
            stop = STOP_RECORD;
            break;
        }
        if (rc > 0 && (host == Py_None || !same_host(host, computer))) {
            PyObject *run = NULL;
            host = text(computer);  /* borrowed from `runs` once appended */
            if (host != NULL)
                run = Py_BuildValue("(Nn)", host, count);
            if (run == NULL || PyList_Append(runs, run) < 0)
                rc = -1;
            Py_XDECREF(run);
        }
        Py_DECREF(record);
        if (rc < 0 || buf_reserve(&ends, 4) < 0)
            goto done;
        uint32_t end = (uint32_t)(data.n);
        if ((Py_ssize_t)end != data.n) {
            PyErr_SetString(PyExc_OverflowError, "encode_records: chunk over 4 GiB");
            goto done;
        }
        memcpy(ends.p + ends.n, &end, 4);
        ends.n += 4;
        taken++;
        count++;
    }
    if (count >= 64)
        bytes_per_record = data.n / count + 1;
    PyObject *data_bytes = buf_finish(&data), *ends_bytes = buf_finish(&ends);
    if (data_bytes != NULL && ends_bytes != NULL)
        result = Py_BuildValue("(inOOOO)", stop, taken, data_bytes, ends_bytes, runs, pending ? pending : Py_None);
    Py_XDECREF(data_bytes);
    Py_XDECREF(ends_bytes);
done:
    Py_XDECREF(runs);
    Py_XDECREF(pending);
    Py_XDECREF(data.bytes);
    Py_XDECREF(ends.bytes);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(xml, provenance, record_time) -> RawEvent dict, or None when the XML is not the evtx rendering"},
    {"from_record", (PyCFunction)(void (*)(void))from_record, METH_FASTCALL,
     "from_record(record, provenance) -> RawEvent dict of one PyEvtxParser record, or None (declined)"},
    {"encode_records", (PyCFunction)(void (*)(void))encode_records, METH_FASTCALL,
     "encode_records(records, caught, provenance, limit, skip) -> (stop, taken, data, ends, runs, pending): "
     "PyEvtxParser records -> RawEvents in Avro"},
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
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL || PyModule_AddIntConstant(module, "STOP_LIMIT", STOP_LIMIT) < 0 ||
        PyModule_AddIntConstant(module, "STOP_END", STOP_END) < 0 ||
        PyModule_AddIntConstant(module, "STOP_ERROR", STOP_ERROR) < 0 ||
        PyModule_AddIntConstant(module, "STOP_RECORD", STOP_RECORD) < 0) {
        Py_XDECREF(module);
        return NULL;
    }
    return module;
}
