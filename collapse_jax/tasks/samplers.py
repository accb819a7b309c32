"""Exact samplers for sufficient statistics (THEORY.md section 3).

For ``n`` Gaussian samples with covariance ``Sigma = L L'`` the Gram matrix
``X'X`` is Wishart(Sigma, n) and equals ``L A A' L'`` in distribution, with
``A`` the lower-triangular Bartlett factor. Given ``X'X``, the noise moment
``X'eps`` is ``N(0, sigma^2 X'X)``, i.e. ``sigma * L A z``. Both need
``d (d + 1) / 2 + d`` random numbers instead of ``n (d + 1)``.

Speed (``benchmarks/``): random numbers dominate the engine's cost, so the
samplers draw exactly what they need: ``d (d - 1) / 2`` normals below the
diagonal (not ``d * d`` masked), and each chi-square costs one normal and one
uniform (Marsaglia-Tsang) plus a rare exact retry, instead of
``jax.random.gamma``'s per-element rejection loops with a key split per try.

Random bits to variates: each data set's numbers come from one
``jax.random.bits`` call; normals by Box-Muller (two per pair of words, the
angle from a symmetry of the square instead of a range-reduced ``sin``/``cos``,
see :func:`_box_muller`), uniforms directly from the bits. This is exact in
distribution (up to float rounding, as ``jax.random.normal``'s ``erf_inv``
is) and cheaper than ``erf_inv``. It changed the random streams (issue 13): results
saved before it are reproduced in distribution, not bit for bit, by the
same key.

The PRNG implementation is the caller's key; nothing here sets a global.
Measured on a 2-core CPU (JAX 0.10.2; the sampler vmapped over 8192 data
sets of n = 128, d = 32, the engine's shape; machine heavily shared, so
ratios only): ``jax.random.key(seed, impl="philox4x32")`` draws the bits
about 7x faster than the default ``threefry2x32`` and makes this sampler
about 2.4x faster; its key space (64 bits) is the default's. In
``cj.simulate`` (K = 16, d = 32, n = m = 128, T = 50, R = 512) that is
1.45x the default key's model-updates/s (1.12x from this transform, 1.29x
from the key); with the default key the transform alone gains nothing there
(the threefry bits dominate). Its ``split`` and
``fold_in`` are cheap; ``threefry4x32``'s are not (about 100x slower under
``vmap``), so avoid it. ``rbg``/``unsafe_rbg`` are not suitable for the
engine: under ``vmap`` JAX draws a whole batch from its first key (documented
in ``jax.random``), so a data set's numbers would depend on its batch, i.e.
on the replicate count and chunk size (``tests/test_sampling.py`` checks
both facts).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BartlettFactor", "bartlett", "bartlett_and_normal", "bartlett_factor_and_normal", "chisquare",
           "psd_factor"]


def _marsaglia_tsang(x, u, shape):
    """One Marsaglia-Tsang proposal for Gamma(``shape``), ``shape >= 1``.

    With ``dd = shape - 1/3`` and ``c = 1 / sqrt(9 dd)``, the proposal
    ``dd * (1 + c x)^3`` for ``x ~ N(0, 1)`` is accepted iff ``1 + c x > 0``
    and ``log u < x^2 / 2 + dd (1 - v + log v)``; the accepted values are
    exactly Gamma(``shape``)-distributed (Marsaglia & Tsang, 2000). ``1 - v``
    and ``log v`` are formed from ``c x`` directly (``log1p``) so that float32
    does not lose the small difference between them.

    Returns:
        ``(accepted, value)`` with the shapes of ``x``.
    """
    dd = shape - 1.0 / 3.0
    cx = x / jnp.sqrt(9.0 * dd)
    valid = cx > -1.0
    cx = jnp.where(valid, cx, 0.0)
    one_minus_v = -cx * (3.0 + cx * (3.0 + cx))   # 1 - (1 + cx)^3
    log_v = 3.0 * jnp.log1p(cx)
    accept = valid & (jnp.log(u) < 0.5 * x * x + dd * (one_minus_v + log_v))
    return accept, dd * (1.0 - one_minus_v)


# Cephes single-precision sin and cos on [0, pi/4] (about 1 ulp there; checked against float64 in tests).
_SIN = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)
_COS = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)


def _sin_cos_octant(phi):
    """``(sin phi, cos phi)`` for ``0 < phi < pi / 4``: Cephes polynomials in float32, XLA's in float64."""
    if phi.dtype != np.float32:
        return jnp.sin(phi), jnp.cos(phi)
    z = phi * phi
    s = phi + phi * z * (_SIN[0] + z * (_SIN[1] + z * _SIN[2]))
    c = 1.0 - 0.5 * z + z * z * (_COS[0] + z * (_COS[1] + z * _COS[2]))
    return s, c


def _word_dtypes(dtype):
    """(unsigned word, signed word, compute float) for a float dtype: 64-bit words for float64."""
    if np.dtype(dtype) == np.float64:
        return jnp.uint64, jnp.int64, jnp.float64
    return jnp.uint32, jnp.int32, jnp.float32


def _open_uniform(w, dtype):
    """Uniforms on (0, 1) from words ``w``: ``(k + 1/2) 2^-(B-1)`` for the top ``B - 1`` bits ``k``.

    Fine near 0 (the smallest value is ``2^-32`` in float32, ``2^-64`` in
    float64), where ``-log u`` needs it; ``k`` is rounded to the float's
    precision near 1, and never reaches 0 or exceeds 1.
    """
    _, sword, fdt = _word_dtypes(dtype)
    bits = np.iinfo(w.dtype).bits
    k = jax.lax.shift_right_logical(w, np.array(1, w.dtype)).astype(sword)
    return (k.astype(fdt) + np.array(0.5, fdt)) * np.array(2.0 ** (1 - bits), fdt)


def _box_muller(w, n: int, dtype):
    """``n`` standard normals from ``2 ceil(n / 2)`` random words (Box-Muller, exact in distribution).

    Each pair of words ``(w1, w2)`` gives two independent normals
    ``r (cos t, sin t)`` with radius ``r = sqrt(-2 log u)``, ``u`` uniform on
    (0, 1) from ``w1``, and ``t`` uniform on the circle from ``w2`` without a
    range-reduced ``sin``/``cos`` (which cost XLA's CPU backend 3x an
    ``erf_inv``): the low bits of ``w2`` give ``phi`` uniform on
    (0, pi / 4); its top three bits pick one of the eight symmetries of the
    square (swap the coordinates, flip either sign), which map the arc
    ``(cos phi, sin phi)`` one-to-one onto the whole circle, so ``t`` is
    uniform. The radius reaches 6.66 (float32) where
    ``jax.random.normal``'s ``erf_inv`` of a 23-bit uniform stops at 5.3.
    """
    uword, sword, fdt = _word_dtypes(dtype)
    bits = np.iinfo(uword).bits
    m = (n + 1) // 2
    w1, w2 = w[:m], w[m:2 * m]
    r = jnp.sqrt(np.array(-2.0, fdt) * jnp.log(_open_uniform(w1, dtype)))
    low = (w2 & np.array((1 << (bits - 3)) - 1, uword)).astype(sword)
    phi = (low.astype(fdt) + np.array(0.5, fdt)) * np.array(np.pi / 4 * 2.0 ** (3 - bits), fdt)
    s, c = _sin_cos_octant(phi)
    swap = (w2 & np.array(1 << (bits - 3), uword)) != 0
    sign = np.array(1 << (bits - 1), uword)
    x = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(r * jnp.where(swap, s, c), uword) ^ (w2 & sign), fdt)
    y = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(r * jnp.where(swap, c, s), uword)
        ^ (jax.lax.shift_left(w2, np.array(1, uword)) & sign), fdt)
    return jnp.concatenate([x, y])[:n].astype(dtype)


def _normals_and_uniforms(key: jax.Array, n_normal: int, n_uniform: int, dtype):
    """``n_normal`` standard normals and ``n_uniform`` uniforms on (0, 1) from one RNG call.

    One ``jax.random.bits`` call (64-bit words for float64, 32-bit otherwise)
    instead of two halves the compiled random-number code (each threefry call
    costs about 0.3 s of XLA compile on CPU). The normals come from
    :func:`_box_muller` (two per pair of words), the uniforms from
    :func:`_open_uniform` (one per word). Any key implementation works; see
    the module docstring for which is fastest.
    """
    uword, _, _ = _word_dtypes(dtype)
    m = (n_normal + 1) // 2
    w = jax.random.bits(key, (2 * m + n_uniform,), uword)
    # The barrier keeps XLA from fusing (so recomputing) the transform into each consumer of a slice
    # (the Bartlett factor's triangles, z, the chi-squares): 1.6x faster in the sampler on CPU.
    return jax.lax.optimization_barrier(
        (_box_muller(w, n_normal, dtype), _open_uniform(w[2 * m:], dtype).astype(dtype)))


def _chisquare(x, u, k_retry, df, dtype):
    """Chi-square draws from one Marsaglia-Tsang proposal ``(x, u)`` per entry, exact retries.

    ``x`` holds ``size`` normals, ``u`` ``size`` uniforms (``2 size`` when
    some ``df`` may be below 2: the second half boosts those entries).
    """
    a = jnp.ravel(jnp.asarray(df, dtype)) / 2.0
    size = a.shape[0]
    # With concrete df >= 2 (the Wishart case) the boost is known to be unused.
    may_boost = _may_boost(df)
    a1 = jnp.where(a < 1.0, a + 1.0, a) if may_boost else a
    accept, g = _marsaglia_tsang(x, u[:size], a1)

    k_retry = _vmap_safe_key(k_retry)

    def pending(state):
        return ~jnp.all(state[2])

    def retry(state):
        i, g, accept = state
        j = jnp.argmin(accept)  # the first entry still rejected
        xj, uj = _normals_and_uniforms(jax.random.fold_in(k_retry, i), 1, 1, dtype)
        ok, gj = _marsaglia_tsang(xj[0], uj[0], a1[j])
        return i + 1, g.at[j].set(jnp.where(ok, gj, g[j])), accept.at[j].set(ok)

    _, g, _ = jax.lax.while_loop(pending, retry, (jnp.zeros((), jnp.uint32), g, accept))
    if may_boost:
        # Gamma(a) = Gamma(a + 1) * U^(1 / a) for a < 1.
        g = jnp.where(a < 1.0, g * u[size:] ** (1.0 / jnp.where(a < 1.0, a, 1.0)), g)
    return (2.0 * g).reshape(np.shape(df))


def _vmap_safe_key(key: jax.Array) -> jax.Array:
    """``key`` itself, or for ``rbg``/``unsafe_rbg`` keys a threefry2x32 key made from its first half.

    Under ``vmap`` an rbg draw uses the batch's first key only (``jax.random``
    documents it). In the batched retry ``while_loop`` that key stops
    changing once the first lane is done, so every other lane would get the
    same rejected proposal forever (a hang, seen with ``df = 1``). The retry
    stream is therefore threefry's, keyed per lane; rbg's key halves are
    threefry keys already (rbg derives keys with threefry).
    """
    if str(jax.random.key_impl(key)) in ("rbg", "unsafe_rbg"):
        return jax.random.wrap_key_data(jax.random.key_data(key)[:2], impl="threefry2x32")
    return key


def _may_boost(df) -> bool:
    return isinstance(df, jax.core.Tracer) or bool(np.any(np.asarray(df) < 2))


def chisquare(key: jax.Array, df, dtype=None) -> jax.Array:
    """Exact chi-square draws, ``chi2(k) = 2 Gamma(k / 2)``, with array-valued ``df > 0``.

    Marsaglia-Tsang rejection: every entry gets one proposal (one normal and
    one uniform); the few rejected entries (about 0.05% for ``df`` near 100,
    1.8% for ``df = 4``) are redrawn one at a time in a ``while_loop`` until
    accepted, so the result is exact whatever the number of rejections. For
    ``df < 2`` it draws ``Gamma(df / 2 + 1) * U^(2 / df)`` (one more uniform
    per entry, drawn only when some ``df`` may be below 2); this underflows
    for ``df`` far below 1e-2, which the Wishart sampler never needs.

    Under ``vmap`` the retry loop runs until every lane is done, but each
    retry costs one proposal per lane, so its cost stays a few percent.
    No gradient flows to ``df``.

    Args:
        key: a PRNG key.
        df: positive degrees of freedom (array-like); the output has its shape.
        dtype: float dtype (default: JAX's default float).

    Returns:
        An array of ``df``'s shape.

    Example:
        >>> x = chisquare(jax.random.key(0), np.array([3.0, 50.0]))
        >>> x.shape
        (2,)
    """
    dtype = dtype or jnp.result_type(float)
    size = int(np.prod(np.shape(df)))
    k_draw, k_retry = jax.random.split(key)
    x, u = _normals_and_uniforms(k_draw, size, size * (1 + _may_boost(df)), dtype)
    return _chisquare(x, u, k_retry, df, dtype)


class BartlettFactor(NamedTuple):
    """A lower-triangular Bartlett factor kept in blocks: ``A = [[t1, 0], [b, t2]]``.

    ``t1`` is ``(h, h)`` and ``t2`` ``(d - h, d - h)``, both lower triangular,
    ``b`` is ``(d - h, h)``, with ``h = ceil(d / 2)``. The blocks skip the
    zero quarter: :meth:`gram` costs ``d^3 / 2`` multiply-adds instead of
    ``d^3`` and the matrix-vector products ``3 d^2 / 8`` instead of ``d^2``.
    """

    t1: jax.Array
    b: jax.Array
    t2: jax.Array

    def dense(self) -> jax.Array:
        """``A`` as a ``(d, d)`` array."""
        h, h2 = self.t1.shape[0], self.t2.shape[0]
        top = jnp.concatenate([self.t1, jnp.zeros((h, h2), self.t1.dtype)], 1)
        return jnp.concatenate([top, jnp.concatenate([self.b, self.t2], 1)], 0)

    def gram(self) -> jax.Array:
        """``A A'`` (d, d)."""
        g11 = self.t1 @ self.t1.T
        g21 = self.b @ self.t1.T
        g22 = self.b @ self.b.T + self.t2 @ self.t2.T
        return jnp.concatenate([jnp.concatenate([g11, g21.T], 1), jnp.concatenate([g21, g22], 1)], 0)

    def matvec(self, w: jax.Array) -> jax.Array:
        """``A w`` for ``w`` (d,)."""
        h = self.t1.shape[0]
        w1, w2 = w[:h], w[h:]
        return jnp.concatenate([self.t1 @ w1, self.b @ w1 + self.t2 @ w2])

    def rmatvec(self, v: jax.Array) -> jax.Array:
        """``A' v`` for ``v`` (d,)."""
        h = self.t1.shape[0]
        v1, v2 = v[:h], v[h:]
        return jnp.concatenate([self.t1.T @ v1 + self.b.T @ v2, self.t2.T @ v2])


def bartlett_factor_and_normal(key: jax.Array, n: int | jax.Array, d: int, dtype=None):
    """Bartlett factor of Wishart(I_d, n) (as :class:`BartlettFactor`) and an independent ``z ~ N(0, I_d)``.

    What one Gaussian data set's sufficient statistics need (the regression
    noise moment ``L A z``; a Gaussian sample mean): ``d (d - 1) / 2 + d``
    normals and ``d`` chi-squares, drawn with a single RNG call plus rare
    exact chi-square retries. Needs ``n >= d``.

    Layout (why no gather or scatter): an ``h x h`` block ``Q`` of normals
    gives both triangles' off-diagonal entries, its strict lower triangle to
    ``t1`` and its strict upper triangle, transposed, to ``t2``; its diagonal
    is half of ``z``. Masks fuse into one pass, where a gather into the
    triangle costs a third of the RNG time.
    """
    dtype = dtype or jnp.result_type(float)
    df = n - np.arange(d) if isinstance(n, (int, np.integer)) else n - jnp.arange(d)
    h = (d + 1) // 2
    h2 = d - h
    k_draw, k_retry = jax.random.split(key)
    x, u = _normals_and_uniforms(k_draw, h * h + h2 * h + d + h2, d * (1 + _may_boost(df)), dtype)
    Q = x[:h * h].reshape(h, h)
    b = x[h * h:h * h + h2 * h].reshape(h2, h)
    rest = x[h * h + h2 * h:]
    diag = jnp.sqrt(_chisquare(rest[:d], u, k_retry, df, dtype))
    lower, eye = np.tri(h, k=-1, dtype=bool), np.eye(h, dtype=bool)
    t1 = jnp.where(lower, Q, jnp.where(eye, diag[None, :h], 0.0))
    # Odd d: t2 is one smaller than Q; the cropped upper entries are unused.
    t2 = jnp.where(lower[:h2, :h2], Q.T[:h2, :h2], jnp.where(eye[:h2, :h2], diag[None, h:], 0.0))
    z = jnp.concatenate([jnp.sum(jnp.where(eye, Q, 0.0), 0), rest[d:]])
    return BartlettFactor(t1, b, t2), z


def bartlett_and_normal(key: jax.Array, n: int | jax.Array, d: int, dtype=None):
    """Bartlett factor ``A`` (d, d) of Wishart(I_d, n) and an independent ``z ~ N(0, I_d)``.

    The dense form of :func:`bartlett_factor_and_normal` (same draws).

    Example:
        >>> A, z = bartlett_and_normal(jax.random.key(0), 50, 3)
        >>> A.shape, z.shape
        ((3, 3), (3,))
    """
    factor, z = bartlett_factor_and_normal(key, n, d, dtype)
    return factor.dense(), z


def bartlett(key: jax.Array, n: int | jax.Array, d: int, dtype=None) -> jax.Array:
    """Bartlett factor ``A`` (d, d) with ``A A' ~ Wishart(I_d, n)``; needs ``n >= d``.

    ``A[i, i] = sqrt(chi2(n - i))`` for ``i = 0..d-1`` and ``A[i, j] ~ N(0, 1)``
    for ``i > j``.

    Example:
        >>> A = bartlett(jax.random.key(0), 50, 3)
        >>> A.shape
        (3, 3)
    """
    return bartlett_and_normal(key, n, d, dtype)[0]


def psd_factor(S: jax.Array) -> jax.Array:
    """A square factor ``F`` with ``F F' = S`` for a PSD (possibly singular) ``S``.

    Uses the eigendecomposition so that rank-deficient covariances and Gram
    matrices of low-rank designs are handled exactly (zero columns).
    """
    lam, U = jnp.linalg.eigh(S)
    return U * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]
