"""Kernels for the synthetic graph generator: counter-based RNG, hash permutations, R-MAT.

Every output element is a pure function of (keys, global index): a chunk can be regenerated
bit for bit, whatever the chunking and the thread count. All hash arithmetic is uint64 (Numba
turns uint64/int64 mixes into float64, hence the explicit casts).

Key arrays (built by the caller from a seed):

* ``perm`` uint64 (2, R): a bijection of ``[0, 2**bits)``; row 0 XOR keys, row 1 odd
  multipliers. :func:`permute` restricts it to ``[0, n)`` by cycle-walking.
"""

from statistics import NormalDist

import numba as nb
import numpy as np

from .rng import derive_key, draw

_U16 = np.uint64(16)
_U11 = np.uint64(11)
_LOW16 = np.uint64(0xFFFF)
_INV53 = 1.0 / 9007199254740992.0
_MAX_ATTEMPTS = 1000


@nb.njit(nogil=True, cache=True, inline="always")
def uniform(x):
    """A uint64 hash -> float64 in [0, 1)."""
    return float(x >> _U11) * _INV53


@nb.njit(nogil=True, cache=True, inline="always")
def _perm_pow2(x, perm, bits):
    """A bijection of [0, 2**bits): rounds of xor-key, odd multiply, xorshift (all mod 2**bits)."""
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    shift = np.uint64(max(1, (bits + 1) // 2))
    for r in range(perm.shape[1]):
        x = (x ^ perm[0, r]) & mask
        x = (x * perm[1, r]) & mask
        x = x ^ (x >> shift)
    return x


@nb.njit(nogil=True, cache=True)
def permute(v, n, perm, bits):
    """Bijection of [0, n) (n <= 2**bits < 2n): the power-of-two one, cycle-walked."""
    x = _perm_pow2(np.uint64(v), perm, bits)
    while x >= np.uint64(n):
        x = _perm_pow2(x, perm, bits)
    return np.int64(x)


@nb.njit(nogil=True, cache=True)
def permute_range(start, stop, n, perm, bits):
    """int64 ``[permute(i) for i in range(start, stop)]``: a slice of the permutation."""
    out = np.empty(stop - start, np.int64)
    for i in range(start, stop):
        out[i - start] = permute(i, n, perm, bits)
    return out


def permutation_keys(key: int, rounds: int = 4) -> np.ndarray:
    """Round keys of a hash permutation from a uint64 ``key``: row 0 XOR keys, row 1 odd
    multipliers (``perm`` of :func:`permute`)."""
    keys = np.empty((2, rounds), np.uint64)
    for r in range(rounds):
        keys[0, r] = derive_key(key, 2 * r)
        keys[1, r] = derive_key(key, 2 * r + 1) | 1
    return keys


def permutation_bits(n: int) -> int:
    """The ``bits`` of :func:`permute` for ``[0, n)``: ``n <= 2**bits < 2n`` (1 at least)."""
    return max(1, (n - 1).bit_length())


@nb.njit(nogil=True, cache=True, inline="always")
def node_class(v, num_classes, class_key):
    """Planted class of node v: a seeded cyclic shift of v % C inside each block of C ids.

    Every block of C consecutive ids holds each class once, so a node of a given class near
    any id is found in O(1) (:func:`class_member`).
    """
    c = np.int64(num_classes)
    shift = np.int64(draw(class_key, v // c) % np.uint64(c))
    return (v % c + shift) % c


@nb.njit(nogil=True, cache=True, inline="always")
def class_member(block, cls, num_nodes, num_classes, class_key):
    """The node of class ``cls`` in id block ``block`` (the previous block if it is cut off)."""
    c = np.int64(num_classes)
    for b in (block, block - 1):
        shift = np.int64(draw(class_key, b) % np.uint64(c))
        v = b * c + (cls - shift + c) % c
        if v < num_nodes:
            return v
    return np.int64(0)  # unreachable when num_nodes >= num_classes


@nb.njit(nogil=True, cache=True)
def _rmat_pair(key, num_nodes, scale, ta, tab, tabc):
    """One R-MAT (src, dst) in [0, num_nodes)**2 before permutation; draws 2.. of ``key``.

    Pairs with an id >= num_nodes are rejected and redrawn.
    """
    n = np.uint64(num_nodes)
    j = 2
    for _ in range(_MAX_ATTEMPTS):
        s = np.uint64(0)
        d = np.uint64(0)
        x = np.uint64(0)
        for level in range(scale):
            if level % 4 == 0:
                x = draw(key, j)
                j += 1
            u = x & _LOW16
            x = x >> _U16
            # quadrant a (0,0) | b (0,1) | c (1,0) | d (1,1), branch-free
            s = (s << np.uint64(1)) | np.uint64(u >= tab)
            d = (d << np.uint64(1)) | np.uint64((u >= ta) ^ (u >= tab) ^ (u >= tabc))
        if s < n and d < n:
            return np.int64(s), np.int64(d)
    return np.int64(s % n), np.int64(d % n)


@nb.njit(parallel=True, nogil=True, cache=True)
def rmat_edges(start, src, dst, num_nodes, scale, thresholds, homophily, num_classes,
               edge_key, class_key, perm):
    """Fill src/dst with edges start .. start + len(src) of the seeded graph.

    Edge e is R-MAT with probability 1 - homophily; otherwise an R-MAT source joined to a
    uniformly random node of the source's planted class. R-MAT ids are then permuted so
    degree does not follow id. ``thresholds`` holds int64 (a, a+b, a+b+c) * 2**16.
    """
    ta = np.uint64(thresholds[0])
    tab = np.uint64(thresholds[1])
    tabc = np.uint64(thresholds[2])
    num_blocks = (num_nodes + num_classes - 1) // num_classes
    for i in nb.prange(src.shape[0]):
        key = draw(edge_key, start + i)
        s, d = _rmat_pair(key, num_nodes, scale, ta, tab, tabc)
        s = permute(s, num_nodes, perm, scale)
        if uniform(draw(key, 0)) < homophily:
            block = np.int64(uniform(draw(key, 1)) * num_blocks)
            d = class_member(min(block, num_blocks - 1), node_class(s, num_classes, class_key),
                             num_nodes, num_classes, class_key)
        else:
            d = permute(d, num_nodes, perm, scale)
        src[i] = s
        dst[i] = d


@nb.njit(parallel=True, nogil=True, cache=True)
def node_classes(start, out, num_classes, class_key):
    """out[i] = planted class of node start + i."""
    for i in nb.prange(out.shape[0]):
        out[i] = node_class(start + i, num_classes, class_key)


@nb.njit(parallel=True, nogil=True, cache=True)
def split_codes(start, out, num_nodes, perm, bits, bounds):
    """out[i] = k where bounds[k] <= rank < bounds[k+1] (else -1); rank = permuted node id."""
    for i in nb.prange(out.shape[0]):
        rank = permute(start + i, num_nodes, perm, bits)
        code = -1
        for k in range(bounds.shape[0] - 1):
            if bounds[k] <= rank < bounds[k + 1]:
                code = k
        out[i] = code


@nb.njit(parallel=True, nogil=True, cache=True)
def class_features(start, out, centroids, noise, num_classes, class_key, feature_key, quantiles):
    """out[i] = centroids[class(v)] + noise * z per element, v = start + i, z a standard
    normal draw by inverse CDF: each 16 bits of a counter-based hash index ``quantiles``
    (the normal's quantiles at (k + 0.5) / 2**16, :func:`normal_quantiles`), four draws per
    hash and no transcendental function (about 1/18 of the CPU of the float64 Box-Muller
    it replaced)."""
    dim = out.shape[1]
    for i in nb.prange(out.shape[0]):
        v = start + i
        c = node_class(v, num_classes, class_key)
        row_key = draw(feature_key, v)
        for j in range(0, dim, 4):
            x = draw(row_key, j // 4)
            for k in range(min(4, dim - j)):
                z = quantiles[np.int64(x & _LOW16)]
                out[i, j + k] = centroids[c, j + k] + noise * z
                x = x >> _U16


def normal_quantiles(bits: int = 16) -> np.ndarray:
    """float64 (2**bits,): the standard normal's quantiles at (k + 0.5) / 2**bits (|z| up to
    4.3 at 16 bits), the table :func:`class_features` draws from."""
    n = 1 << bits
    inv = NormalDist().inv_cdf
    return np.array([inv((k + 0.5) / n) for k in range(n)])
