/* Exact top-k selection by magnitude for float32 tensors in CPU memory, in two passes over a layer.
 *
 * The rule is the one impress_lightning/nn/select.py documents (its torch-op version runs off the CPU): keep the k
 * entries of largest |score|, equal magnitudes at the boundary lowest flat index first. A float32's magnitude
 * orders like its bit pattern with the sign bit cleared, read as an unsigned integer, so a radix select on
 * those integers finds the k-th largest:
 *   pass 1: a histogram of their top 16 bits finds the bin holding the k-th largest;
 *   pass 2: writes every entry outside that bin (kept when above it) and lists the bin's entries, which a
 *           histogram of their low 15 bits then settles.
 * The torch-op version of the same select runs about twenty operations per layer, several of them full
 * passes; pass 2 here is written so that the compiler vectorises it.
 *
 * Callers pass the addresses of contiguous tensors they own; both functions release the GIL while they run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL_VERSION 1 /* select.py refuses a build of another version (a stale editable install) */
#define SIGN_CLEARED 0x7fffffffu
#define HIGH_SHIFT 15
#define HIGH_BINS (1u << 16)
#define LOW_BINS (1u << HIGH_SHIFT)
#define LOW_MASK (LOW_BINS - 1u)
#define NON_FINITE_BIN (0x7f800000u >> HIGH_SHIFT) /* inf/NaN: all exponent bits set, from this bin up */
#define GROUP 256                                   /* histogram bins summed together to walk it quickly */
#define BLOCK 64                                    /* entries checked together for members of the bin */

enum { SELECT_OK = 0, SELECT_NON_FINITE = 1, SELECT_NO_MEMORY = 2 };

/* The bin holding the k-th largest magnitude, how many of the k largest lie in it, how many entries it holds. */
typedef struct {
    uint32_t bin;
    int64_t wanted, in_bin;
} Boundary;

/* A histogram kept per thread between calls (a fresh allocation per call costs the page faults of a new
 * mapping), cleared. */
static uint32_t *cleared_histogram(int which, size_t bins) {
    static _Thread_local uint32_t *kept[2] = {NULL, NULL};
    if (kept[which] == NULL) kept[which] = malloc(bins * sizeof(uint32_t));
    if (kept[which] != NULL) memset(kept[which], 0, bins * sizeof(uint32_t));
    return kept[which];
}

/* In a histogram, the bin holding the k-th largest entry (walking down from bin ``top``), and how many
 * entries lie above it in *above. The groups' totals let the walk skip empty stretches. */
static uint32_t bin_of_kth_largest(const uint32_t *histogram, uint32_t top, int64_t k, int64_t *above) {
    int64_t count = 0;
    uint32_t bin = top;
    while (bin % GROUP != GROUP - 1 && count + histogram[bin] < k) count += histogram[bin--];
    while (count + histogram[bin] < k && bin >= GROUP) {
        int64_t group = 0; /* the GROUP bins ending at ``bin`` */
        for (uint32_t b = bin + 1 - GROUP; b <= bin; b++) group += histogram[b];
        if (count + group >= k) break;
        count += group;
        bin -= GROUP;
    }
    while (count + histogram[bin] < k) count += histogram[bin--];
    *above = count;
    return bin;
}

/* Pass 1 over bits[0..n) (1 <= k <= n). */
static int find_boundary(const uint32_t *bits, int64_t n, int64_t k, Boundary *found) {
    uint32_t *high = cleared_histogram(0, HIGH_BINS);
    if (high == NULL) return SELECT_NO_MEMORY;
    for (int64_t i = 0; i < n; i++) high[(bits[i] & SIGN_CLEARED) >> HIGH_SHIFT]++;
    for (uint32_t b = NON_FINITE_BIN; b < HIGH_BINS; b++)
        if (high[b] != 0) return SELECT_NON_FINITE;
    int64_t above;
    found->bin = bin_of_kth_largest(high, NON_FINITE_BIN - 1, k, &above);
    found->wanted = k - above;
    found->in_bin = high[found->bin];
    return SELECT_OK;
}

/* Of the bin's entries (``candidates[0..count)``, ascending flat indices), moves the ``wanted`` of largest
 * magnitude (equal ones lowest index first) to the front. */
static int choose_in_bin(const uint32_t *bits, int64_t *candidates, int64_t count, int64_t wanted) {
    uint32_t *low = cleared_histogram(1, LOW_BINS);
    if (low == NULL) return SELECT_NO_MEMORY;
    for (int64_t j = 0; j < count; j++) low[bits[candidates[j]] & LOW_MASK]++;
    int64_t above;
    uint32_t digit = bin_of_kth_largest(low, LOW_MASK, wanted, &above);
    int64_t ties_left = wanted - above, chosen = 0;
    for (int64_t j = 0; j < count; j++) {
        uint32_t d = bits[candidates[j]] & LOW_MASK;
        if (d > digit || (d == digit && ties_left-- > 0)) candidates[chosen++] = candidates[j];
    }
    return SELECT_OK;
}

/* Appends to ``candidates`` the entries of bits[start..end) in ``bin``. A block rarely holds one, so the
 * blocks' loops stay free of this branch. */
static inline int64_t list_bin(const uint32_t *bits, int64_t start, int64_t end, uint32_t bin,
                               int64_t *candidates, int64_t count) {
    for (int64_t i = start; i < end; i++)
        if (((bits[i] & SIGN_CLEARED) >> HIGH_SHIFT) == bin) candidates[count++] = i;
    return count;
}

/* Both passes; ``out_weight`` (with ``weight``) or ``out_keep`` receives the result. */
static int select_top_k(const uint32_t *bits, int64_t n, int64_t k, const float *weight, float *out_weight,
                        uint8_t *out_keep) {
    Boundary edge;
    int status = find_boundary(bits, n, k, &edge);
    if (status != SELECT_OK) return status;
    int64_t *candidates = malloc(edge.in_bin * sizeof(int64_t));
    if (candidates == NULL) return SELECT_NO_MEMORY;
    const uint32_t bin = edge.bin;
    int64_t count = 0;
    for (int64_t start = 0; start < n; start += BLOCK) {
        int64_t end = start + BLOCK < n ? start + BLOCK : n;
        uint32_t any_in_bin = 0;
        if (out_weight != NULL) {
            /* 1.0 or 0.0 times the weight: a dropped weight gives a zero of its sign, as the float product. */
            for (int64_t i = start; i < end; i++) {
                uint32_t top = (bits[i] & SIGN_CLEARED) >> HIGH_SHIFT;
                out_weight[i] = (top > bin ? 1.0f : 0.0f) * weight[i];
                any_in_bin |= top == bin;
            }
        } else {
            for (int64_t i = start; i < end; i++) {
                uint32_t top = (bits[i] & SIGN_CLEARED) >> HIGH_SHIFT;
                out_keep[i] = top > bin;
                any_in_bin |= top == bin;
            }
        }
        if (any_in_bin) count = list_bin(bits, start, end, bin, candidates, count);
    }
    status = choose_in_bin(bits, candidates, count, edge.wanted);
    for (int64_t j = 0; status == SELECT_OK && j < edge.wanted; j++) {
        int64_t i = candidates[j];
        if (out_weight != NULL) out_weight[i] = 1.0f * weight[i];
        else out_keep[i] = 1;
    }
    free(candidates);
    return status;
}

static int parse_count(long long n, long long k) {
    if (n > 0 && k > 0 && k <= n) return 1;
    PyErr_SetString(PyExc_ValueError, "top-k selection needs 1 <= k <= n");
    return 0;
}

static PyObject *result(int status) {
    if (status == SELECT_NO_MEMORY) return PyErr_NoMemory();
    return PyLong_FromLong(status);
}

/* masked(scores_address, weight_address, out_address, n, k) -> status: out = weight * keep. */
static PyObject *py_masked(PyObject *self, PyObject *args) {
    unsigned long long scores, weight, out;
    long long n, k;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKLL", &scores, &weight, &out, &n, &k) || !parse_count(n, k)) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = select_top_k((const uint32_t *)(uintptr_t)scores, n, k, (const float *)(uintptr_t)weight,
                          (float *)(uintptr_t)out, NULL);
    Py_END_ALLOW_THREADS
    return result(status);
}

/* keep(scores_address, out_address, n, k) -> status: out[i] = 1 for a kept entry, else 0 (bytes). */
static PyObject *py_keep(PyObject *self, PyObject *args) {
    unsigned long long scores, out;
    long long n, k;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKLL", &scores, &out, &n, &k) || !parse_count(n, k)) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = select_top_k((const uint32_t *)(uintptr_t)scores, n, k, NULL, NULL, (uint8_t *)(uintptr_t)out);
    Py_END_ALLOW_THREADS
    return result(status);
}

static PyMethodDef methods[] = {
    {"masked", py_masked, METH_VARARGS, "(scores, weight, out addresses, n, k) -> status: out = weight * keep"},
    {"keep", py_keep, METH_VARARGS, "(scores, out addresses, n, k) -> status: out = keep (bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_select_kernel", "Exact top-k selection for float32 CPU tensors (see select.py).", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__select_kernel(void) {
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && PyModule_AddIntConstant(created, "version", KERNEL_VERSION) != 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
