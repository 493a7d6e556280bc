"""Double-double (about 32 significant digits) arithmetic on float64 numpy arrays.

Error-free transformations (Knuth's TwoSum, Dekker's TwoProduct) carry every rounding
error in a second float64, so the centred Gram of a design, its Cholesky factor and its
inverse come out correct to float64 whatever the BLAS, the CPU's vector width or the
summation order: the least-squares fits and standard errors that use them are the same to
the last digit on every x86 machine. Only elementwise numpy operations are used (no BLAS).

A double-double value is a pair ``(hi, lo)`` of arrays with ``|lo| <= ulp(hi) / 2``.
Inputs must be scaled (by powers of two, which is exact) so that ``|x| < 1e290``:
Dekker's split multiplies by ``2**27 + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DD", "DDMoments", "dd_cholesky", "dd_moments", "pow2_scale"]

DD = tuple[np.ndarray, np.ndarray]
_SPLITTER = 134217729.0  # 2**27 + 1


def two_sum(a: np.ndarray, b: np.ndarray) -> DD:
    """``a + b`` as an exact unevaluated sum (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> DD:
    s = a + b
    return s, b - (s - a)


def _split(a: np.ndarray) -> DD:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> DD:
    """``a * b`` as an exact unevaluated sum (Dekker)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def dd_add(ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray) -> DD:
    """Double-double sum (the accurate variant: both parts through TwoSum)."""
    s, e = two_sum(ah, bh)
    t, f = two_sum(al, bl)
    s, e = _fast_two_sum(s, e + t)
    return _fast_two_sum(s, e + f)


def dd_neg(a: DD) -> DD:
    """Negation."""
    return -a[0], -a[1]


def dd_mul(ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray) -> DD:
    """Double-double product."""
    p, e = two_prod(ah, bh)
    return _fast_two_sum(p, e + (ah * bl + al * bh))


def dd_div(ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray) -> DD:
    """Double-double quotient (three correction steps of long division)."""
    q1 = ah / bh
    ph, pl = dd_mul(bh, bl, q1, np.zeros_like(q1))
    rh, rl = dd_add(ah, al, -ph, -pl)
    q2 = rh / bh
    ph, pl = dd_mul(bh, bl, q2, np.zeros_like(q2))
    rh, rl = dd_add(rh, rl, -ph, -pl)
    q3 = rh / bh
    qh, ql = _fast_two_sum(q1, q2)
    return dd_add(qh, ql, q3, np.zeros_like(q3))


def dd_sqrt(ah: np.ndarray, al: np.ndarray) -> DD:
    """Double-double square root of a positive value (one Newton step)."""
    x = np.sqrt(ah)
    ph, pl = two_prod(x, x)
    rh, _ = dd_add(ah, al, -ph, -pl)
    return _fast_two_sum(x, rh / (2.0 * x))


def dd_sum(h: np.ndarray, lo: np.ndarray, axis: int = 0) -> DD:
    """Sum along ``axis`` by a pairwise tree of double-double additions.

    Error at most about ``log2(n) * 2**-104`` times the sum of the absolute values (the
    bound the Gram needs), with the cheaper ("sloppy") double-double addition.
    """
    h, lo = np.moveaxis(h, axis, 0), np.moveaxis(lo, axis, 0)
    if h.shape[0] == 0:
        z = np.zeros(h.shape[1:])
        return z, z.copy()
    while h.shape[0] > 1:
        if h.shape[0] % 2:  # fold the odd last term into the first
            first = _sloppy_add(h[0], lo[0], h[-1], lo[-1])
            h = np.concatenate([first[0][None], h[1:-1]])
            lo = np.concatenate([first[1][None], lo[1:-1]])
            continue
        h, lo = _sloppy_add(h[0::2], lo[0::2], h[1::2], lo[1::2])
    return h[0], lo[0]


def _sloppy_add(ah: np.ndarray, al: np.ndarray, bh: np.ndarray, bl: np.ndarray) -> DD:
    s, e = two_sum(ah, bh)
    return _fast_two_sum(s, e + (al + bl))


def pow2_scale(max_abs: np.ndarray) -> np.ndarray:
    """Powers of two ``s`` with ``max_abs * s`` in ``[0.5, 1)`` (1 where ``max_abs`` is 0)."""
    _, e = np.frexp(np.where(max_abs > 0, max_abs, 1.0))
    return np.ldexp(1.0, -e)


@dataclass
class DDMoments:
    """Weighted sums of ``U = (Z - shift) * scale`` in double-double: mergeable.

    ``shift`` and ``scale`` (powers of two) must be equal in states that are merged.
    """

    shift: np.ndarray  # (m,) in units of Z
    scale: np.ndarray  # (m,) powers of two
    w: DD  # total weight, scalar arrays
    s1: DD  # (m,) sum of w U
    s2: DD  # (m, m) sum of w U U'

    def merge(self, other: DDMoments) -> DDMoments:
        """The moments of both row sets."""
        return DDMoments(
            self.shift,
            self.scale,
            dd_add(*self.w, *other.w),
            dd_add(*self.s1, *other.s1),
            dd_add(*self.s2, *other.s2),
        )

    def centred(self, centre: bool) -> tuple[DD, DD]:
        """``(mean, C)`` of the scaled ``Z``: weighted mean and (centred) Gram, in dd.

        Without ``centre`` the Gram is about ``shift * scale`` (use ``shift = 0``).
        """
        h1, l1 = self.s1
        ssh = self.shift * self.scale
        if not centre:
            return (ssh, np.zeros_like(ssh)), self.s2
        wh, wl = self.w
        mh, ml = dd_div(h1, l1, np.full_like(h1, wh), np.full_like(l1, wl))
        oh, ol = dd_mul(h1[:, None], l1[:, None], mh[None, :], ml[None, :])
        ch, cl = dd_add(*self.s2, -oh, -ol)
        return dd_add(mh, ml, ssh, np.zeros_like(ssh)), (ch, cl)


def dd_moments(
    Z: np.ndarray,
    w: np.ndarray | None,
    shift: np.ndarray,
    scale: np.ndarray,
    block_elems: int = 1 << 18,
) -> DDMoments:
    """Double-double moments of the rows of ``Z`` (n, m), blockwise (exact shift and scale)."""
    n, m = Z.shape
    zero = np.zeros(())
    acc = DDMoments(
        shift, scale, (zero, zero), (np.zeros(m), np.zeros(m)), (np.zeros((m, m)), np.zeros((m, m)))
    )
    ssh = shift * scale
    rows = max(1, block_elems // max(m, 1))
    for i in range(0, n, rows):
        uh, ul = two_sum(Z[i : i + rows] * scale, np.broadcast_to(-ssh, (min(rows, n - i), m)))
        if w is None:
            ah, al = uh, ul
            wb = (np.asarray(float(len(uh))), zero)
        else:
            wi = w[i : i + rows, None]
            ah, al = dd_mul(uh, ul, np.broadcast_to(wi, uh.shape), np.zeros_like(uh))
            wb = dd_sum(w[i : i + rows], np.zeros(len(uh)))
        s1 = dd_sum(ah, al)
        s2h, s2l = _gram_upper(ah, al, uh, ul)
        acc = acc.merge(DDMoments(shift, scale, wb, s1, (s2h, s2l)))
    return acc


def _gram_upper(ah: np.ndarray, al: np.ndarray, uh: np.ndarray, ul: np.ndarray) -> DD:
    """``A'U`` (symmetric, from its upper triangle) of dd blocks ``(rows, m)``.

    Row ``j`` of the triangle at a time against the contiguous slice ``U[:, j:]``, with
    Dekker's splits computed once per element rather than once per product.
    """
    m = uh.shape[1]
    a1, a2 = _split(ah)
    u1, u2 = _split(uh)
    s2h, s2l = np.zeros((m, m)), np.zeros((m, m))
    for j in range(m):
        a, b1, b2 = ah[:, j : j + 1], a1[:, j : j + 1], a2[:, j : j + 1]
        p = a * uh[:, j:]
        e = ((b1 * u1[:, j:] - p) + b1 * u2[:, j:] + b2 * u1[:, j:]) + b2 * u2[:, j:]
        e += a * ul[:, j:] + al[:, j : j + 1] * uh[:, j:]
        th, tl = dd_sum(*_fast_two_sum(p, e))
        s2h[j, j:], s2l[j, j:] = th, tl
        s2h[j:, j], s2l[j:, j] = th, tl
    return s2h, s2l


def dd_cholesky(ah: np.ndarray, al: np.ndarray, tol: float) -> tuple[DD, int]:
    """Lower Cholesky factor of a symmetric (p, p) dd matrix with unit-order diagonal.

    Stops at the first pivot below ``tol`` (relative to the diagonal entry), returning the
    number of columns factored (the rank when that is less than p).
    """
    p = ah.shape[0]
    Lh, Ll = np.zeros((p, p)), np.zeros((p, p))
    for j in range(p):
        if j:
            ph, pl = dd_mul(Lh[j:, :j], Ll[j:, :j], Lh[j, :j][None, :], Ll[j, :j][None, :])
            sh, sl = dd_sum(ph, pl, axis=1)
            sh, sl = dd_add(ah[j:, j], al[j:, j], -sh, -sl)
        else:
            sh, sl = ah[:, 0].copy(), al[:, 0].copy()
        if not sh[0] > tol * max(ah[j, j], np.finfo(float).tiny):
            return (Lh, Ll), j
        dh, dl = dd_sqrt(sh[:1], sl[:1])
        Lh[j, j], Ll[j, j] = dh[0], dl[0]
        if j + 1 < p:
            qh, ql = dd_div(sh[1:], sl[1:], np.full(p - j - 1, dh[0]), np.full(p - j - 1, dl[0]))
            Lh[j + 1 :, j], Ll[j + 1 :, j] = qh, ql
    return (Lh, Ll), p


def dd_forward(L: DD, B: DD) -> DD:
    """Solve ``L X = B`` (L lower, dd) for dd ``B`` of shape (p, k)."""
    Lh, Ll = L
    Bh, Bl = B
    p = Lh.shape[0]
    Xh, Xl = np.zeros_like(Bh), np.zeros_like(Bl)
    for i in range(p):
        ph, pl = dd_mul(Lh[i, :i, None], Ll[i, :i, None], Xh[:i], Xl[:i])
        sh, sl = dd_sum(ph, pl)
        sh, sl = dd_add(Bh[i], Bl[i], -sh, -sl)
        Xh[i], Xl[i] = dd_div(sh, sl, np.full_like(sh, Lh[i, i]), np.full_like(sl, Ll[i, i]))
    return Xh, Xl


def dd_backward(L: DD, B: DD) -> DD:
    """Solve ``L' X = B`` (L lower, dd) for dd ``B`` of shape (p, k)."""
    Lh, Ll = L
    Bh, Bl = B
    p = Lh.shape[0]
    Xh, Xl = np.zeros_like(Bh), np.zeros_like(Bl)
    for i in range(p - 1, -1, -1):
        ph, pl = dd_mul(Lh[i + 1 :, i, None], Ll[i + 1 :, i, None], Xh[i + 1 :], Xl[i + 1 :])
        sh, sl = dd_sum(ph, pl)
        sh, sl = dd_add(Bh[i], Bl[i], -sh, -sl)
        Xh[i], Xl[i] = dd_div(sh, sl, np.full_like(sh, Lh[i, i]), np.full_like(sl, Ll[i, i]))
    return Xh, Xl
