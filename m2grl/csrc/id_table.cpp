// IdTable: external ids -> rows and back, for the server's hot path and the trainer's id maps (m2grl/idtable.py).
//
// A Python dict of a million ids answered a GetEmbeddings call of 100 random ids in 65-150 us, nearly
// all of it waiting on memory: each lookup walks dict index -> entry -> key string -> int object,
// one cache miss after another, while the call holds the GIL. Here ids sit in an open-addressing
// table of 8-byte slots (the high half of the id's hash, its row), the ids' bytes one after the other
// in an arena, where each row starts; and a batch is looked up in steps over all of its ids: hash each
// and prefetch its slot; probe and prefetch where its row starts and its vector; prefetch the id's
// bytes; compare and copy. The misses of a batch overlap instead of queueing. At a load of at most
// one half, that is 16-32 bytes per id plus its bytes and 8 for where they start (a slot of 64-bit
// hash, row, offset and length took 64-128).
//
// Every function runs with the GIL held and never releases it (except while regrowing the slots,
// see grow), so a lookup never sees an add half-done. Rows are append-only, like the ids files.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

constexpr int64_t EMPTY = -1;
constexpr uint32_t FREE = UINT32_MAX;  // a slot's row when no id is in it
constexpr int64_t MAX_ROWS = FREE;     // rows are 32 bits: 4 billion ids per view
constexpr Py_ssize_t BLOCK = 64;  // ids whose memory accesses are in flight together

struct Slot {
    uint32_t tag;  // the high half of the id's hash (the low bits chose where the slot is)
    uint32_t row;  // FREE: a free slot
};

using Slots = std::vector<Slot>;

uint32_t tag_of(uint64_t hash) { return static_cast<uint32_t>(hash >> 32); }

struct Key {
    const char *data;
    Py_ssize_t length;
    uint64_t hash;
};

uint64_t mix(uint64_t x) {
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    x ^= x >> 33;
    return x;
}

// Seeded per table: ids come from users' events, so their probe chains must not be predictable.
uint64_t hash_bytes(const char *data, Py_ssize_t length, uint64_t seed) {
    uint64_t h = mix(seed ^ static_cast<uint64_t>(length));
    Py_ssize_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t chunk;
        std::memcpy(&chunk, data + i, 8);
        h = mix(h ^ chunk) + 0x9e3779b97f4a7c15ULL;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, data + i, static_cast<size_t>(length - i));
    return mix(h ^ tail ^ (static_cast<uint64_t>(length) << 56));
}

struct IdTableObject {
    PyObject_HEAD
    uint64_t seed;
    Slots *slots;
    std::string *arena;             // every id's UTF-8 bytes, in row order
    std::vector<uint64_t> *starts;  // row -> where its bytes start in the arena; one more: where they end
    int64_t size;
    bool growing;
};

const char *bytes_of(const IdTableObject *table, uint32_t row) { return table->arena->data() + (*table->starts)[row]; }

uint64_t length_of(const IdTableObject *table, uint32_t row) {
    return (*table->starts)[row + 1] - (*table->starts)[row];
}

bool key_of(PyObject *item, uint64_t seed, Key *key) {
    if (!PyUnicode_Check(item)) {
        PyErr_Format(PyExc_TypeError, "ids must be str, got %.100s", Py_TYPE(item)->tp_name);
        return false;
    }
    key->data = PyUnicode_AsUTF8AndSize(item, &key->length);
    if (key->data == nullptr) return false;
    key->hash = hash_bytes(key->data, key->length, seed);
    return true;
}

bool same(const IdTableObject *table, const Slot &slot, const Key &key) {
    return slot.tag == tag_of(key.hash) && length_of(table, slot.row) == static_cast<uint64_t>(key.length) &&
           std::memcmp(bytes_of(table, slot.row), key.data, static_cast<size_t>(key.length)) == 0;
}

// The row of each key (EMPTY: unknown, or not among the first ``count`` rows), in four passes over
// the block so that its memory accesses overlap; ``vectors``/``stride``: also prefetch the rows' vectors.
void find_block(const IdTableObject *table, const Key *keys, Py_ssize_t n, int64_t count, int64_t *rows,
                const char *vectors, Py_ssize_t stride) {
    const Slots &slots = *table->slots;
    const uint64_t mask = slots.size() - 1;
    size_t at[BLOCK];
    for (Py_ssize_t i = 0; i < n; i++) {
        at[i] = keys[i].hash & mask;
        __builtin_prefetch(&slots[at[i]]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {  // to the first slot whose tag matches, or a free one
        size_t p = at[i];
        const uint32_t tag = tag_of(keys[i].hash);
        while (slots[p].row != FREE && slots[p].tag != tag) p = (p + 1) & mask;
        at[i] = p;
        const uint32_t row = slots[p].row;
        if (row == FREE) continue;
        __builtin_prefetch(&(*table->starts)[row]);
        if (vectors != nullptr && row < count) {  // almost always the row: the bytes compare equal below
            for (Py_ssize_t line = 0; line < stride; line += 64) __builtin_prefetch(vectors + row * stride + line);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (slots[at[i]].row != FREE) __builtin_prefetch(bytes_of(table, slots[at[i]].row));
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t p = at[i];
        while (slots[p].row != FREE && !same(table, slots[p], keys[i])) p = (p + 1) & mask;
        const uint32_t row = slots[p].row;
        rows[i] = row != FREE && row < count ? row : EMPTY;
    }
}

// A new reference, released when the holder goes out of scope.
struct Owned {
    PyObject *object;
    ~Owned() { Py_XDECREF(object); }
};

// Calls ``each(first, rows, n)`` on blocks of the rows of ``seq``'s ids (a PySequence_Fast), while it
// returns true; false with a Python error set on failure.
template <typename Each>
bool for_rows(const IdTableObject *table, PyObject *seq, int64_t count, const char *vectors, Py_ssize_t stride,
              Each each) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Key keys[BLOCK];
    int64_t rows[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t m = std::min(BLOCK, n - start);
        for (Py_ssize_t i = 0; i < m; i++) {
            if (!key_of(items[start + i], table->seed, &keys[i])) return false;
        }
        find_block(table, keys, m, count, rows, vectors, stride);
        if (!each(start, rows, m)) return false;
    }
    return true;
}

void place(Slots &slots, uint64_t hash, uint32_t row) {
    const uint64_t mask = slots.size() - 1;
    size_t p = hash & mask;
    while (slots[p].row != FREE) p = (p + 1) & mask;
    slots[p] = Slot{tag_of(hash), row};
}

// Room for ``wanted`` ids at a load of at most one half; false (MemoryError set) if there is no memory
// for it. Past a million ids this takes 0.1 s: done with the GIL released (the old slots keep
// answering lookups meanwhile, and only this thread adds) and swapped in with it held.
bool grow(IdTableObject *table, int64_t wanted) {
    size_t capacity = table->slots->size();
    if (static_cast<size_t>(wanted) * 2 <= capacity) return true;
    while (static_cast<size_t>(wanted) * 2 > capacity) capacity *= 2;
    const Slots &old = *table->slots;
    Slots *bigger = nullptr;
    Py_BEGIN_ALLOW_THREADS
    try {
        bigger = new Slots(capacity, Slot{0, FREE});
        for (size_t i = 0; i < old.size(); i++) {  // a slot keeps half the hash: the rest is hashed again
            const uint32_t row = old[i].row;
            if (row != FREE) {
                place(*bigger, hash_bytes(bytes_of(table, row), static_cast<Py_ssize_t>(length_of(table, row)),
                                          table->seed), row);
            }
        }
    } catch (const std::bad_alloc &) {
        bigger = nullptr;
    }
    Py_END_ALLOW_THREADS
    if (bigger == nullptr) {
        PyErr_NoMemory();
        return false;
    }
    delete table->slots;
    table->slots = bigger;
    return true;
}

PyObject *IdTable_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static const char *names[] = {"seed", nullptr};
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "K", const_cast<char **>(names), &seed)) return nullptr;
    auto *self = reinterpret_cast<IdTableObject *>(type->tp_alloc(type, 0));
    if (self == nullptr) return nullptr;
    self->seed = seed;
    try {
        self->slots = new Slots(16, Slot{0, FREE});
        self->arena = new std::string();
        self->starts = new std::vector<uint64_t>(1, 0);
    } catch (const std::bad_alloc &) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->size = 0;
    self->growing = false;
    return reinterpret_cast<PyObject *>(self);
}

void IdTable_dealloc(PyObject *object) {
    auto *self = reinterpret_cast<IdTableObject *>(object);
    delete self->slots;
    delete self->arena;
    delete self->starts;
    Py_TYPE(object)->tp_free(object);
}

Py_ssize_t IdTable_len(PyObject *object) { return reinterpret_cast<IdTableObject *>(object)->size; }

template <typename Container>
void reserve_room(Container &container, size_t wanted) {
    if (container.capacity() < wanted) container.reserve(std::max(wanted, container.capacity() + container.capacity() / 2));
}

bool add_all(IdTableObject *self, PyObject *seq) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    std::vector<Key> keys(static_cast<size_t>(n));
    size_t bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!key_of(items[i], self->seed, &keys[i])) return false;
        bytes += static_cast<size_t>(keys[i].length);
    }
    std::vector<Py_ssize_t> order(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; i++) order[i] = i;
    std::sort(order.begin(), order.end(), [&](Py_ssize_t a, Py_ssize_t b) { return keys[a].hash < keys[b].hash; });
    for (Py_ssize_t j = 0; j < n; j++) {
        const Key &key = keys[order[j]];
        bool twice = false;
        for (Py_ssize_t k = j + 1; k < n && keys[order[k]].hash == key.hash && !twice; k++) {
            twice = keys[order[k]].length == key.length && std::memcmp(keys[order[k]].data, key.data, key.length) == 0;
        }
        int64_t row = EMPTY;
        if (!twice) find_block(self, &key, 1, INT64_MAX, &row, nullptr, 0);
        if (twice || row != EMPTY) {
            PyErr_Format(PyExc_ValueError, "id %R is listed twice", items[order[j]]);
            return false;
        }
    }
    if (self->size + n > MAX_ROWS) {
        PyErr_Format(PyExc_OverflowError, "an id table holds at most %lld ids", static_cast<long long>(MAX_ROWS));
        return false;
    }
    // Nothing below allocates, so nothing fails half-way. Room grows by half at a time: reserving
    // just enough copied every id's bytes and starts at each version's handful of new ids.
    reserve_room(*self->arena, self->arena->size() + bytes);
    reserve_room(*self->starts, self->starts->size() + static_cast<size_t>(n));
    self->growing = true;
    bool grown = grow(self, self->size + n);
    self->growing = false;
    if (!grown) return false;
    for (Py_ssize_t i = 0; i < n; i++) {
        self->arena->append(keys[i].data, static_cast<size_t>(keys[i].length));
        self->starts->push_back(self->arena->size());
        place(*self->slots, keys[i].hash, static_cast<uint32_t>(self->size + i));
    }
    self->size += n;
    return true;
}

// add(ids): the next rows, in order. Refuses (ValueError, nothing added) an id it has, or twice.
PyObject *IdTable_add(PyObject *object, PyObject *ids) {
    auto *self = reinterpret_cast<IdTableObject *>(object);
    if (self->growing) {
        PyErr_SetString(PyExc_RuntimeError, "IdTable.add called while another add grows the table");
        return nullptr;
    }
    Owned seq{PySequence_Fast(ids, "ids must be a sequence of str")};
    if (seq.object == nullptr) return nullptr;
    try {
        if (!add_all(self, seq.object)) return nullptr;
    } catch (const std::bad_alloc &) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

// rows(ids, count) -> list[int]: each id's row, -1 if unknown or not among the first ``count``.
PyObject *IdTable_rows(PyObject *object, PyObject *const *args, Py_ssize_t nargs) {
    auto *self = reinterpret_cast<IdTableObject *>(object);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rows(ids, count)");
        return nullptr;
    }
    int64_t count = PyLong_AsLongLong(args[1]);
    if (count == -1 && PyErr_Occurred()) return nullptr;
    Owned seq{PySequence_Fast(args[0], "ids must be a sequence of str")};
    if (seq.object == nullptr) return nullptr;
    Owned out{PyList_New(PySequence_Fast_GET_SIZE(seq.object))};
    if (out.object == nullptr) return nullptr;
    bool ok = for_rows(self, seq.object, count, nullptr, 0, [&](Py_ssize_t first, const int64_t *rows, Py_ssize_t m) {
        for (Py_ssize_t i = 0; i < m; i++) {
            PyObject *row = PyLong_FromLongLong(rows[i]);
            if (row == nullptr) return false;
            PyList_SET_ITEM(out.object, first + i, row);
        }
        return true;
    });
    if (!ok) return nullptr;
    Py_INCREF(out.object);
    return out.object;
}

// gather(ids, count, vectors, stride) -> (found, vectors of the found): per id whether it is among the
// first ``count`` rows, and those rows of ``vectors`` (a buffer of ``stride`` bytes per row), in order.
PyObject *IdTable_gather(PyObject *object, PyObject *const *args, Py_ssize_t nargs) {
    auto *self = reinterpret_cast<IdTableObject *>(object);
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "gather(ids, count, vectors, stride)");
        return nullptr;
    }
    int64_t count = PyLong_AsLongLong(args[1]);
    Py_ssize_t stride = PyLong_AsSsize_t(args[3]);
    if ((count == -1 || stride == -1) && PyErr_Occurred()) return nullptr;
    Py_buffer buffer;
    if (PyObject_GetBuffer(args[2], &buffer, PyBUF_SIMPLE) < 0) return nullptr;
    if (count < 0 || stride <= 0 || count * stride > buffer.len) {
        PyBuffer_Release(&buffer);
        PyErr_Format(PyExc_ValueError, "%lld rows of %zd bytes do not fit a buffer of %zd bytes",
                     static_cast<long long>(count), stride, buffer.len);
        return nullptr;
    }
    const char *vectors = static_cast<const char *>(buffer.buf);
    Owned seq{PySequence_Fast(args[0], "ids must be a sequence of str")};
    Py_ssize_t n = seq.object != nullptr ? PySequence_Fast_GET_SIZE(seq.object) : 0;
    Owned found{seq.object != nullptr ? PyList_New(n) : nullptr};
    // Sized for every id, cut to the found ones at the end: the vectors are copied once, into the answer.
    Owned bytes{found.object != nullptr ? PyBytes_FromStringAndSize(nullptr, n * stride) : nullptr};
    Py_ssize_t used = 0;
    bool ok = bytes.object != nullptr && for_rows(self, seq.object, count, vectors, stride,
                                                  [&](Py_ssize_t first, const int64_t *rows, Py_ssize_t m) {
        char *out = PyBytes_AS_STRING(bytes.object);
        for (Py_ssize_t i = 0; i < m; i++) {
            PyObject *flag = rows[i] != EMPTY ? Py_True : Py_False;
            Py_INCREF(flag);
            PyList_SET_ITEM(found.object, first + i, flag);
            if (rows[i] == EMPTY) continue;
            std::memcpy(out + used, vectors + rows[i] * stride, static_cast<size_t>(stride));
            used += stride;
        }
        return true;
    });
    PyBuffer_Release(&buffer);
    // _PyBytes_Resize frees the bytes and clears the pointer when it fails.
    if (ok && used < n * stride) ok = _PyBytes_Resize(&bytes.object, used) == 0;
    return ok ? PyTuple_Pack(2, found.object, bytes.object) : nullptr;
}

// ids(rows) -> list[str]: the id of each row; IndexError for a row the table does not have.
PyObject *IdTable_ids(PyObject *object, PyObject *rows) {
    auto *self = reinterpret_cast<IdTableObject *>(object);
    Owned seq{PySequence_Fast(rows, "rows must be a sequence of int")};
    if (seq.object == nullptr) return nullptr;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.object);
    PyObject **items = PySequence_Fast_ITEMS(seq.object);
    Owned out{PyList_New(n)};
    if (out.object == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long row = PyLong_AsLongLong(items[i]);
        if (row == -1 && PyErr_Occurred()) return nullptr;
        if (row < 0 || row >= self->size) {
            PyErr_Format(PyExc_IndexError, "row %lld is not among the %lld ids", row, static_cast<long long>(self->size));
            return nullptr;
        }
        const auto at = static_cast<uint32_t>(row);
        PyObject *id = PyUnicode_DecodeUTF8(bytes_of(self, at), static_cast<Py_ssize_t>(length_of(self, at)), "strict");
        if (id == nullptr) return nullptr;
        PyList_SET_ITEM(out.object, i, id);
    }
    Py_INCREF(out.object);
    return out.object;
}

PyMethodDef IdTable_methods[] = {
    {"add", IdTable_add, METH_O, "add(ids): give the ids the next rows, in order; ValueError (and nothing added) if one is known or listed twice."},
    {"ids", IdTable_ids, METH_O, "ids(rows) -> list[str]: the id of each row; IndexError for one it does not have."},
    {"rows", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(IdTable_rows)), METH_FASTCALL,
     "rows(ids, count) -> list[int]: the row of each id, -1 if unknown or not among the first count rows."},
    {"gather", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(IdTable_gather)), METH_FASTCALL,
     "gather(ids, count, vectors, stride) -> (found, bytes): per id whether it is among the first count rows; "
     "the rows of vectors (stride bytes each) of those that are, in order."},
    {nullptr, nullptr, 0, nullptr},
};

PySequenceMethods IdTable_sequence = {IdTable_len};

PyTypeObject IdTableType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module = {PyModuleDef_HEAD_INIT, nullptr, "IdTable: external ids -> rows for the server's hot path.", -1};

}  // namespace

// The module's name carries the hash of this source (m2grl/native.py), so its init function does too.
#ifndef MODULE
#error "build with -DMODULE=<module name>"
#endif
#define JOIN(a, b) a##b
#define INIT(name) JOIN(PyInit_, name)
#define QUOTE(name) #name
#define NAME(name) QUOTE(name)
PyMODINIT_FUNC INIT(MODULE)(void) {
    IdTableType.tp_name = "m2grl.IdTable";
    IdTableType.tp_basicsize = sizeof(IdTableObject);
    IdTableType.tp_flags = Py_TPFLAGS_DEFAULT;
    IdTableType.tp_doc = "IdTable(seed): external ids -> rows, append-only (see m2grl/csrc/id_table.cpp).";
    IdTableType.tp_new = IdTable_new;
    IdTableType.tp_dealloc = IdTable_dealloc;
    IdTableType.tp_methods = IdTable_methods;
    IdTableType.tp_as_sequence = &IdTable_sequence;
    if (PyType_Ready(&IdTableType) < 0) return nullptr;
    module.m_name = NAME(MODULE);
    PyObject *m = PyModule_Create(&module);
    if (m == nullptr) return nullptr;
    Py_INCREF(&IdTableType);
    if (PyModule_AddObject(m, "IdTable", reinterpret_cast<PyObject *>(&IdTableType)) < 0) {
        Py_DECREF(&IdTableType);
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
