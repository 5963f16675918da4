/* The receive side's one compiled loop: an optional accelerator (see client/setup.py).

   take(data, pos, received, limit, inbox) -> (pos, received, added)

   From offset *pos* of *data* (any bytes-like object), take the longest run of DATA
   frames that are
     - in the fixed-width layout our encoder writes (protocol.md section 2):
         0x93 0x03 0xcf <seq: uint64 big-endian> 0xc6 <length: uint32 big-endian> <payload>
     - complete inside *data*,
     - at most *limit* bytes each, header included (the frame limit, section 1.3),
     - numbered *received* + 1, *received* + 2, ... (section 5.1).
   Append each payload to the list *inbox* as a new bytes object, and return the offset
   after the last frame taken, the last sequence number taken (*received* if none) and
   the number of payload bytes appended.

   It stops, and never fails, at anything else: another frame type, another encoding of
   the same frame, a wrong sequence number, a frame over the limit, an incomplete frame.
   The caller's msgpack path decodes from the returned offset and applies every rule of
   the protocol, so every refusal is raised there, exactly as without this module. It
   fails only on wrong arguments or when memory runs out. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define HEAD 16 /* bytes of a DATA header: 3 lead bytes, 8 of seq, 1 bin32 marker, 4 of length */

static uint64_t
read_u64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value = (value << 8) | p[i];
    }
    return value;
}

static uint32_t
read_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static PyObject *
take(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5 || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "take(data, pos, received, limit, inbox: list)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    unsigned long long received = PyLong_AsUnsignedLongLong(args[2]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *data = view.buf;
    Py_ssize_t end = view.len;
    PyObject *inbox = args[4];
    Py_ssize_t held = PyList_GET_SIZE(inbox); /* restored if anything fails below */
    Py_ssize_t added = 0;
    PyObject *result = NULL;
    if (pos < 0 || pos > end) {
        PyErr_SetString(PyExc_ValueError, "pos outside data");
        goto done;
    }
    /* received == UINT64_MAX: no next number exists, so nothing is taken (the +1 below
       would wrap to 0). Every length is compared in Py_ssize_t after the header is known
       to be inside data, so no sum can overflow. */
    while (received < UINT64_MAX && end - pos >= HEAD) {
        const unsigned char *h = data + pos;
        if (h[0] != 0x93 || h[1] != 0x03 || h[2] != 0xcf || h[11] != 0xc6) {
            break; /* not the fixed-width DATA layout */
        }
        uint64_t seq = read_u64(h + 3);
        Py_ssize_t length = (Py_ssize_t)read_u32(h + 12);
        if (seq != received + 1 || length > limit - HEAD || length > end - pos - HEAD) {
            break; /* out of sequence, over the limit, or not complete yet */
        }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)h + HEAD, length);
        if (payload == NULL) {
            goto done;
        }
        int failed = PyList_Append(inbox, payload);
        Py_DECREF(payload);
        if (failed) {
            goto done;
        }
        received = seq;
        added += length;
        pos += HEAD + length;
    }
    result = PyTuple_New(3);
    if (result != NULL) {
        PyObject *items[3] = {
            PyLong_FromSsize_t(pos),
            PyLong_FromUnsignedLongLong(received),
            PyLong_FromSsize_t(added),
        };
        for (int i = 0; i < 3; i++) {
            if (items[i] == NULL) {
                for (int j = 0; j < 3; j++) {
                    Py_XDECREF(items[j]);
                }
                Py_CLEAR(result);
                break;
            }
        }
        if (result != NULL) {
            for (int i = 0; i < 3; i++) {
                PyTuple_SET_ITEM(result, i, items[i]);
            }
        }
    }
done:
    if (result == NULL && PyList_GET_SIZE(inbox) > held) {
        /* Out of memory part-way: the caller's counters were not told of these payloads,
           so the inbox goes back to what it held (the MemoryError stays set). */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyList_SetSlice(inbox, held, PY_SSIZE_T_MAX, NULL) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(data, pos, received, limit, inbox) -> (pos, received, added): append the payloads\n"
     "of the run of fixed-width, next-in-sequence, complete DATA frames at data[pos:]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_datarun", "Optional compiled DATA loop of the receive path.", 0,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__datarun(void)
{
    return PyModuleDef_Init(&module);
}
