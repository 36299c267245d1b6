"""Counter-based random numbers (splitmix64 finalizer) for deterministic parallel kernels.

Every random draw is a pure function of ``(key, stream, counter)``: no generator state is
shared between threads, so a kernel gives the same result for any thread count and any way
of splitting its work. Streams are derived by hashing: ``stream_key(key, a)`` then
``stream_key(.., b)``, and ``draw(stream, i)`` is the ``i``-th output of splitmix64 seeded
at ``stream``.
"""

import numba as nb
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)
_MASK64 = (1 << 64) - 1


@nb.njit(nogil=True, cache=True, inline="always")
def mix64(z):
    """The splitmix64 finalizer: a bijective avalanche hash of a uint64."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(nogil=True, cache=True, inline="always")
def stream_key(key, part):
    """Derive a sub-stream key from ``key`` and an integer ``part`` (hop, node id, ...)."""
    return mix64(key ^ mix64(np.uint64(part) * GOLDEN + GOLDEN))


@nb.njit(nogil=True, cache=True, inline="always")
def draw(stream, counter):
    """The ``counter``-th uint64 of ``stream``."""
    return mix64(stream + np.uint64(counter + 1) * GOLDEN)


@nb.njit(nogil=True, cache=True, inline="always")
def uniform_below(stream, counter, n):
    """An exactly uniform integer in ``[0, n)`` (``n >= 1``) from ``stream``.

    Returns ``(value, next_counter)``: Lemire's multiply-shift with rejection takes one draw,
    rarely more (probability ``n / 2**32`` per draw). For ``n >= 2**32`` it takes ``r % n``,
    whose bias (below ``n / 2**64``) is beyond measurement.
    """
    un = np.uint64(n)
    if un >= _TWO32:
        return np.int64(draw(stream, counter) % un), counter + 1
    m = (draw(stream, counter) >> _S32) * un
    counter += 1
    low = m & _LOW32
    if low < un:
        threshold = (_TWO32 - un) % un
        while low < threshold:
            m = (draw(stream, counter) >> _S32) * un
            counter += 1
            low = m & _LOW32
    return np.int64(m >> _S32), counter


def derive_key(*parts: int) -> int:
    """A uint64 key from integers, e.g. ``derive_key(seed, epoch)``; same parts, same key."""
    key = 0
    for part in parts:
        z = (key ^ ((part * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK64)) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        key = z ^ (z >> 31)
    return key
