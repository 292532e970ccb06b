/* The sides of an order-book frame as the JSON text the writer stores, straight from the frame's bytes.
 *
 * `units_to_sides(units, keys, integers, max_units, depth)` reads the ``[{"<ask price>":N,"<bid price>":N,
 * "<ask size>":N,"<bid size>":N},...]`` part of a frame (`keys`: those four key names, in that order) and
 * returns ``(asks_json, bids_json, best_ask, best_bid, units)``: each side as ``[[price,size],...]`` with every
 * number written exactly as ``orjson.dumps`` writes the float Python's fast path makes of it (see
 * feeder/exchanges/units_json.py), cut to `depth` units (0: all), and the best prices as floats. It returns
 * None for anything it does not take, and the caller then decodes the frame the ordinary way: the shape is not
 * exactly that, a value is zero, negative or not a plain JSON number of the fast path's grammar, there are
 * more than `max_units` units, or a number would need more than this file does to be written (a value outside
 * [1e-5, 1e16), where orjson writes an exponent; outside [1e-4, 1e16) with more than 15 significant digits).
 *
 * Why the text can be written without converting each number: a decimal with at most 15 significant digits
 * survives the trip to a double and back (DBL_DIG), so it is the shortest text of its double, and for values in
 * [1e-5, 1e16) orjson writes that shortest text in plain notation with at least one decimal. A number with more
 * digits is converted and written as repr writes it, which is orjson's text in [1e-4, 1e16). Only those and
 * the two best prices are converted, by CPython's own parser.
 *
 * `pairs_to_sides(rest, max_levels)` does the same for a Binance partial book: `rest` is what follows
 * ``"bids":``, exactly ``[["p","q"],...],"asks":[["p","q"],...]}}`` with every number a quoted decimal with a
 * point; it returns ``(bids_json, asks_json, best_bid, best_ask, bid levels)`` or None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_LEVELS_HERE 1000 /* levels a side this file writes at most (MD_MAX_LEVELS has no upper bound) */
#define MAX_NUMBER_TEXT 40 /* "0." + 4 zeros + 15 digits, or 16 digits + ".0", with room to spare */

typedef struct {
    const char *key[4];
    Py_ssize_t key_len[4];
    int integers; /* a value may be written without a decimal point */
} Shape;

/* The token's float as repr writes it (as orjson does in [1e-4, 1e16)); -1 outside that range. The token
 * is followed by ',' or '}' in the caller's bytes, where the conversion stops. */
static int repr_text(const char *token, char *out) {
    char *parsed;
    double value = PyOS_string_to_double(token, &parsed, NULL);
    if (value == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (!(value >= 1e-4 && value < 1e16))
        return -1;
    char *text = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        PyErr_Clear();
        return -1;
    }
    size_t n = strlen(text);
    int ok = n < MAX_NUMBER_TEXT && strchr(text, 'e') == NULL;
    if (ok)
        memcpy(out, text, n);
    PyMem_Free(text);
    return ok ? (int)n : -1;
}

/* One number token at *p (the fast path's grammar: (0|[1-9][0-9]{0,19})(\.[0-9]{1,20})?(E[+-]?[0-9]{1,2})?,
 * with the dot required unless `integers`). Writes its orjson text to `out` and returns its length, or -1. */
static int number_text(const char **p, const char *end, int integers, char *out, int *is_zero) {
    const char *s = *p, *token = *p, *int_start, *frac_start = NULL;
    int int_len = 0, frac_len = 0, exp = 0, exp_sign = 1, exp_len = 0;
    int_start = s;
    if (s < end && *s == '0') {
        s++;
        int_len = 1;
    } else {
        while (s < end && *s >= '0' && *s <= '9' && int_len <= 20) {
            s++;
            int_len++;
        }
        if (int_len == 0 || int_len > 20)
            return -1;
    }
    if (s < end && *s == '.') {
        s++;
        frac_start = s;
        while (s < end && *s >= '0' && *s <= '9' && frac_len <= 20) {
            s++;
            frac_len++;
        }
        if (frac_len == 0 || frac_len > 20)
            return -1;
    } else if (!integers) {
        return -1;
    }
    if (s < end && *s == 'E') {
        s++;
        if (s < end && (*s == '+' || *s == '-')) {
            if (*s == '-')
                exp_sign = -1;
            s++;
        }
        while (s < end && *s >= '0' && *s <= '9' && exp_len <= 2) {
            exp = exp * 10 + (*s - '0');
            s++;
            exp_len++;
        }
        if (exp_len == 0 || exp_len > 2)
            return -1;
        exp *= exp_sign;
    }
    *p = s;

    /* The digits without the point: d[0..n), the value is 0.d[0]d[1]... x 10^point. */
    char digits[48];
    int n = 0, point;
    const char *q;
    for (q = int_start; q < int_start + int_len; q++)
        digits[n++] = *q;
    if (frac_start != NULL)
        for (q = frac_start; q < frac_start + frac_len; q++)
            digits[n++] = *q;
    point = int_len + exp;
    /* strip leading zeros (moving the point) and trailing zeros */
    int lead = 0;
    while (lead < n && digits[lead] == '0')
        lead++;
    if (lead == n) {
        *is_zero = 1;
        return 0;
    }
    point -= lead;
    int last = n;
    while (last > lead && digits[last - 1] == '0')
        last--;
    int sig = last - lead;
    const char *d = digits + lead;
    if (sig > 15)
        return repr_text(token, out); /* maybe not the shortest text of its double: convert it */
    /* value = 0.d x 10^point; orjson writes plain notation in [1e-5, 1e16) <=> point in [-4, 16] */
    if (point < -4 || point > 16)
        return -1;
    int o = 0, i;
    if (point <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (i = 0; i < -point; i++)
            out[o++] = '0';
        memcpy(out + o, d, (size_t)sig);
        o += sig;
    } else if (point >= sig) {
        memcpy(out + o, d, (size_t)sig);
        o += sig;
        for (i = sig; i < point; i++)
            out[o++] = '0';
        out[o++] = '.';
        out[o++] = '0';
    } else {
        memcpy(out + o, d, (size_t)point);
        o += point;
        out[o++] = '.';
        memcpy(out + o, d + point, (size_t)(sig - point));
        o += sig - point;
    }
    return o;
}

static int expect(const char **p, const char *end, const char *text, Py_ssize_t len) {
    if (end - *p < len || memcmp(*p, text, (size_t)len) != 0)
        return 0;
    *p += len;
    return 1;
}

/* The result of both functions: the two sides' text cut to their length, the best price of each as CPython
 * parses it (its token ends at the delimiter after it), and a count; NULL with an exception on failure. */
static PyObject *sides_result(PyObject **first, Py_ssize_t first_len, PyObject **second, Py_ssize_t second_len,
                              const char *first_best, const char *second_best, Py_ssize_t count) {
    char *parsed;
    double one = PyOS_string_to_double(first_best, &parsed, NULL);
    if (one == -1.0 && PyErr_Occurred())
        return NULL;
    double two = PyOS_string_to_double(second_best, &parsed, NULL);
    if (two == -1.0 && PyErr_Occurred())
        return NULL;
    if (_PyBytes_Resize(first, first_len) < 0 || _PyBytes_Resize(second, second_len) < 0)
        return NULL;
    return Py_BuildValue("(OOddn)", *first, *second, one, two, count);
}

static PyObject *units_to_sides(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer units;
    PyObject *keys;
    int integers;
    Py_ssize_t max_units, depth;
    if (!PyArg_ParseTuple(args, "y*Opnn", &units, &keys, &integers, &max_units, &depth))
        return NULL;
    PyObject *result = NULL, *asks = NULL, *bids = NULL;
    Shape shape;
    shape.integers = integers;
    if (!PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) != 4) {
        PyErr_SetString(PyExc_TypeError, "keys must be a tuple of four bytes");
        goto done;
    }
    for (int k = 0; k < 4; k++) {
        PyObject *key = PyTuple_GET_ITEM(keys, k);
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be a tuple of four bytes");
            goto done;
        }
        shape.key[k] = PyBytes_AS_STRING(key);
        shape.key_len[k] = PyBytes_GET_SIZE(key);
    }
    if (max_units < 1) {
        PyErr_SetString(PyExc_ValueError, "max_units must be at least 1");
        goto done;
    }
    if (max_units > MAX_LEVELS_HERE)
        max_units = MAX_LEVELS_HERE; /* a bigger book is declined: the caller decodes it */
    /* each unit adds at most 2 numbers + "[,]," per side */
    Py_ssize_t bound = 2 + max_units * (2 * MAX_NUMBER_TEXT + 4);
    asks = PyBytes_FromStringAndSize(NULL, bound);
    bids = PyBytes_FromStringAndSize(NULL, bound);
    if (asks == NULL || bids == NULL)
        goto done;
    char *a = PyBytes_AS_STRING(asks), *b = PyBytes_AS_STRING(bids);
    Py_ssize_t ao = 0, bo = 0;
    const char *p = units.buf, *end = p + units.len;
    const char *best_ask_text = NULL, *best_bid_text = NULL;
    Py_ssize_t count = 0;
    char text[4][MAX_NUMBER_TEXT];
    int len[4];
    a[ao++] = '[';
    b[bo++] = '[';
    if (!expect(&p, end, "[", 1))
        goto reject;
    for (;;) {
        if (!expect(&p, end, "{", 1))
            goto reject;
        for (int k = 0; k < 4; k++) {
            if (k > 0 && !expect(&p, end, ",", 1))
                goto reject;
            if (!expect(&p, end, "\"", 1) || !expect(&p, end, shape.key[k], shape.key_len[k]) ||
                !expect(&p, end, "\":", 2))
                goto reject;
            if (count == 0 && k == 0)
                best_ask_text = p;
            if (count == 0 && k == 1)
                best_bid_text = p;
            int zero = 0;
            len[k] = number_text(&p, end, shape.integers, text[k], &zero);
            if (len[k] < 0 || zero)
                goto reject;
        }
        if (!expect(&p, end, "}", 1))
            goto reject;
        count++;
        if (count > max_units)
            goto reject;
        if (depth == 0 || count <= depth) {
            if (count > 1) {
                a[ao++] = ',';
                b[bo++] = ',';
            }
            /* asks: ask price, ask size; bids: bid price, bid size */
            a[ao++] = '[';
            memcpy(a + ao, text[0], (size_t)len[0]);
            ao += len[0];
            a[ao++] = ',';
            memcpy(a + ao, text[2], (size_t)len[2]);
            ao += len[2];
            a[ao++] = ']';
            b[bo++] = '[';
            memcpy(b + bo, text[1], (size_t)len[1]);
            bo += len[1];
            b[bo++] = ',';
            memcpy(b + bo, text[3], (size_t)len[3]);
            bo += len[3];
            b[bo++] = ']';
        }
        if (expect(&p, end, ",", 1))
            continue;
        if (!expect(&p, end, "]", 1) || p != end)
            goto reject;
        break;
    }
    a[ao++] = ']';
    b[bo++] = ']';
    result = sides_result(&asks, ao, &bids, bo, best_ask_text, best_bid_text, count);
    goto done;
reject:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(asks);
    Py_XDECREF(bids);
    PyBuffer_Release(&units);
    return result;
}

/* One side of a Binance partial book, ``[["p","q"],...]`` (numbers as quoted decimals with a point), as
 * ``[[p,q],...]`` in orjson's text; the side's first price in *best. Returns the number of levels, or -1. */
static Py_ssize_t pairs_side(const char **p, const char *end, char *out, Py_ssize_t *o, Py_ssize_t max_levels,
                             const char **best) {
    Py_ssize_t count = 0;
    char text[2][MAX_NUMBER_TEXT];
    int len[2];
    if (!expect(p, end, "[", 1))
        return -1;
    out[(*o)++] = '[';
    for (;;) {
        if (!expect(p, end, "[", 1))
            return -1;
        for (int k = 0; k < 2; k++) {
            if ((k > 0 && !expect(p, end, ",", 1)) || !expect(p, end, "\"", 1))
                return -1;
            if (count == 0 && k == 0)
                *best = *p;
            int zero = 0;
            len[k] = number_text(p, end, 0, text[k], &zero);
            if (len[k] < 0 || zero || !expect(p, end, "\"", 1))
                return -1;
        }
        if (!expect(p, end, "]", 1))
            return -1;
        if (++count > max_levels)
            return -1;
        if (count > 1)
            out[(*o)++] = ',';
        out[(*o)++] = '[';
        memcpy(out + *o, text[0], (size_t)len[0]);
        *o += len[0];
        out[(*o)++] = ',';
        memcpy(out + *o, text[1], (size_t)len[1]);
        *o += len[1];
        out[(*o)++] = ']';
        if (expect(p, end, ",", 1))
            continue;
        if (!expect(p, end, "]", 1))
            return -1;
        out[(*o)++] = ']';
        return count;
    }
}

static PyObject *pairs_to_sides(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer rest;
    Py_ssize_t max_levels;
    if (!PyArg_ParseTuple(args, "y*n", &rest, &max_levels))
        return NULL;
    PyObject *result = NULL, *bids = NULL, *asks = NULL;
    if (max_levels < 1) {
        PyErr_SetString(PyExc_ValueError, "max_levels must be at least 1");
        goto done;
    }
    if (max_levels > MAX_LEVELS_HERE)
        max_levels = MAX_LEVELS_HERE; /* a bigger book is declined: the caller decodes it */
    Py_ssize_t bound = 2 + max_levels * (2 * MAX_NUMBER_TEXT + 4);
    bids = PyBytes_FromStringAndSize(NULL, bound);
    asks = PyBytes_FromStringAndSize(NULL, bound);
    if (bids == NULL || asks == NULL)
        goto done;
    const char *p = rest.buf, *end = p + rest.len, *best_bid_text = NULL, *best_ask_text = NULL;
    Py_ssize_t bo = 0, ao = 0;
    Py_ssize_t nbids = pairs_side(&p, end, PyBytes_AS_STRING(bids), &bo, max_levels, &best_bid_text);
    if (nbids < 0 || !expect(&p, end, ",\"asks\":", 8))
        goto reject;
    Py_ssize_t nasks = pairs_side(&p, end, PyBytes_AS_STRING(asks), &ao, max_levels, &best_ask_text);
    if (nasks < 0 || !expect(&p, end, "}}", 2) || p != end)
        goto reject;
    result = sides_result(&bids, bo, &asks, ao, best_bid_text, best_ask_text, nbids);
    goto done;
reject:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(bids);
    Py_XDECREF(asks);
    PyBuffer_Release(&rest);
    return result;
}

static PyMethodDef methods[] = {
    {"units_to_sides", units_to_sides, METH_VARARGS,
     "units_to_sides(units, keys, integers, max_units, depth) -> (asks_json, bids_json, best_ask, best_bid, "
     "units) | None"},
    {"pairs_to_sides", pairs_to_sides, METH_VARARGS,
     "pairs_to_sides(rest, max_levels) -> (bids_json, asks_json, best_bid, best_ask, bid levels) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_units", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__units(void) { return PyModule_Create(&module); }
