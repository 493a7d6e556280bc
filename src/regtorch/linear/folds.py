"""Cross-validation statistics from one pass: one mergeable moment state per fold.

Every row gets its fold from :func:`regtorch.data.split.fold_of` (a seeded hash of its global
index) or from the index sets of a scikit-learn splitter; each fold's
:class:`~regtorch.linear.moments.MomentState` takes that fold's rows. The training statistics
of fold ``k`` merge the other folds (never a subtraction from the total, so nothing cancels),
and the held-out error of any coefficient vector comes exactly from the fold's own moments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from regtorch import distributed
from regtorch._base import abs_peaks
from regtorch._threads import map_halves, reading_threads
from regtorch._validation import column_peaks
from regtorch.data.prefetch import Progress, prefetch
from regtorch.data.readers import DataError
from regtorch.data.split import fold_of
from regtorch.linear.moments import BatchSource, MomentState
from regtorch.linear.solvers import GramState
from regtorch.linear.streamed import _stream_gram

__all__ = ["FoldStates", "cv_states", "fold_states_in_memory"]

# rows per update when folding arrays in memory: bounds the copies of the fold's rows
MEMORY_BLOCK_ROWS = 65_536
# rows gathered at once by the one-pass fold moments (a buffer of a few MB, in cache)
FOLD_BLOCK_ROWS = 65_536
# values of X from which the fold pass runs in two halves on two threads
PARALLEL_FOLD_SIZE = 4_000_000


@dataclass
class FoldStates:
    """Per-fold moments of ``Z = [X, y]`` (merged over ranks) and the CV statistics from them.

    ``fold[k]`` holds the rows of held-out fold ``k``. ``rest`` holds rows that train every
    fold and test none (a splitter whose test sets do not cover all rows). With
    ``train_sets`` (a splitter whose training set is not the complement of its test set) the
    training states are those, and ``total`` the state of all rows.
    """

    fold: list[MomentState]
    features: list[str]
    n_targets: int
    fit_intercept: bool
    rest: MomentState = field(default_factory=MomentState)
    train_sets: list[MomentState] | None = None
    total: MomentState | None = None
    rows_read: int = 0

    @property
    def n_folds(self) -> int:
        """Number of folds (held-out sets)."""
        return len(self.fold)

    def _m(self) -> int:
        return len(self.features) + self.n_targets

    def _gram(self, state: MomentState, fit_intercept: bool, what: str) -> GramState:
        if state.n <= 0 or state.mean is None:
            raise ValueError(
                f"Cross-validation: {what} has no rows (none, or only rows of weight 0). "
                "cv=K gives each row a fold by a seeded hash of its index, so with few rows a "
                "fold can come out empty: use fewer folds, more rows, another random_state, "
                "or a splitter with folds of equal size, such as cv=KFold(K)."
            )
        return _stream_gram(state, fit_intercept, True, self.features, "Cross-validation")[0]

    def train_state(self, k: int) -> MomentState:
        """The merged moments of fold ``k``'s training rows."""
        if self.train_sets is not None:
            return self.train_sets[k]
        out = MomentState()
        out.merge(self.rest)
        for j, s in enumerate(self.fold):
            if j != k:
                out.merge(s)
        return out

    def full_state(self) -> MomentState:
        """The merged moments of every row used by the fit (all folds)."""
        if self.total is not None:
            return self.total
        out = MomentState()
        out.merge(self.rest)
        for s in self.fold:
            out.merge(s)
        return out

    def train(self, k: int) -> GramState:
        """Training statistics of fold ``k`` (data units; centred iff ``fit_intercept``)."""
        return self._gram(self.train_state(k), self.fit_intercept, f"the training set of fold {k}")

    def full(self) -> GramState:
        """Statistics of all rows (the final refit's)."""
        return self._gram(self.full_state(), self.fit_intercept, "the data")

    def test(self, k: int) -> GramState:
        """Held-out fold ``k``'s moments, centred about its own weighted mean."""
        return self._gram(self.fold[k], True, f"held-out fold {k}")

    def heldout_mse(
        self, k: int, coef: Any, intercept: Any, target: int | None = None
    ) -> np.ndarray:
        """Weighted mean squared error on fold ``k`` of ``y - X coef - intercept``, exactly.

        ``coef`` is ``(p, t)`` or ``(n_alphas, p, t)`` (``(p,)`` / ``(n_alphas, p)`` for one
        target), ``intercept`` ``(t,)`` / ``(n_alphas, t)`` (or scalars / ``(n_alphas,)``).
        Returns one value per target and alpha, shaped like ``intercept``. The mean residual
        and the centred quadratic form ``[-b, 1]' C [-b, 1] / W`` add up to the MSE: exact up
        to the rounding of the moments (an absolute error of about ``eps`` times the fold's
        weighted variance of ``y``; relative 1e-10 unless the fit is nearly noiseless).
        ``target`` scores one column of a multi-target fold: ``coef`` ``(p,)`` or
        ``(n_alphas, p)`` against that target's statistics.
        """
        st = self.test(k)
        p = len(self.features)
        b = torch.as_tensor(np.asarray(coef, dtype=np.float64))
        b0 = torch.as_tensor(np.asarray(intercept, dtype=np.float64))
        out_shape = tuple(b0.shape)
        b = self._as_alpha_p_t(b, p, target)
        b0 = b0.reshape(b.shape[0], b.shape[2])
        cols = list(range(b.shape[2])) if target is None else [int(target)]
        yty, Xty = st.yty[cols], st.Xty[:, cols]
        # centred part: yc'Wyc - 2 b'Xc'Wyc + b'Xc'WXc b, per alpha and target
        quad = yty - 2 * (b * Xty).sum(1) + (b * torch.matmul(st.G, b)).sum(1)
        bias = st.y_offset[cols] - torch.matmul(st.X_offset, b) - b0
        mse = quad.clamp_min(0) / st.weight_sum + bias.square()
        return mse.numpy().reshape(out_shape)

    def _as_alpha_p_t(self, b: torch.Tensor, p: int, target: int | None) -> torch.Tensor:
        """``coef`` as ``(n_alphas, p, t)``: 3-D as given; one target's ``(p,)`` or
        ``(n_alphas, p)``; a multi-target ``(p, t)``."""
        if b.ndim == 3:
            return b
        if target is not None or self.n_targets == 1:
            if b.ndim == 2 and b.shape == (p, 1):
                return b.unsqueeze(0)
            return b.reshape(-1, p).unsqueeze(-1)
        return b.reshape(1, p, -1)


# folds of a streamed fit: each is one mergeable state updated per batch
MAX_STREAMED_FOLDS = 1_000


def check_fold_sizes(k: int, n: int, smallest: int | None, what: str) -> None:
    """Refuse ``k`` folds over ``n`` < 2k training rows or with an empty fold (its size
    ``smallest``; None before the folds are counted): the same rule in memory and streamed.
    ``what`` names the setting (``"--cv 5"``, ``"cv=5"``)."""
    if n < 2 * k or (smallest is not None and smallest < 1):
        held = (
            "" if smallest is None else f", and every fold non-empty; the smallest holds {smallest}"
        )
        raise ValueError(
            f"{what}: {n} rows to train on are too few for {k} folds (at least {2 * k} are "
            f"needed{held}): use fewer folds or more rows."
        )


def _merge_ranks(states: list[MomentState], m: int) -> list[MomentState]:
    """Every fold's state merged over ranks, in rank order (one collective for all folds)."""
    if not distributed.is_distributed():
        return states
    mine = torch.stack([s.to_tensor(m) for s in states])
    merged = [MomentState() for _ in states]
    for t in distributed.all_gather(mine):
        for k, part in enumerate(merged):
            part.merge(MomentState.from_tensor(t[k], m))
    return merged


def _update_by_fold(
    states: list[MomentState],
    Z: np.ndarray,
    w: np.ndarray | None,
    folds: np.ndarray,
    work: list[np.ndarray] | None = None,
) -> None:
    """Add each row of ``Z`` to its fold's state (fold -1: dropped).

    Each fold's rows are gathered column by column into a column-major array (a batch
    comes column-major from Arrow), whose column peaks then cost little: the scaling
    needs them, and finding them row-wise cost more than the folds' Grams. ``work``
    (``[array]``, kept by the caller across batches) holds the reused gather buffer: a
    fresh one per fold and batch would be page-faulted in every time.
    """
    small = len(states) < 127  # stable sorts of 8-bit labels are radix sorts
    order = np.argsort(folds.astype(np.int8) if small else folds, kind="stable")
    bounds = np.searchsorted(folds[order], np.arange(len(states) + 1) - 0.5)
    Zf = np.asarray(Z, dtype=np.float64)
    m = Zf.shape[1]
    work = work if work is not None else []
    if not work or work[0].size < Zf.size:
        work[:] = [np.empty(Zf.size)]
    for k, state in enumerate(states):
        idx = order[bounds[k] : bounds[k + 1]]
        if not len(idx):
            continue
        part = work[0][: len(idx) * m].reshape(m, len(idx)).T  # column-major view
        for j in range(m):
            np.take(Zf[:, j], idx, out=part[:, j])
        top = torch.from_numpy(abs_peaks(part))
        wk = None if w is None else torch.from_numpy(np.asarray(w, dtype=np.float64)[idx])
        state.update(torch.from_numpy(part), wk, top)


def cv_states(
    source: BatchSource,
    n_folds: int,
    seed: int,
    *,
    fit_intercept: bool,
    missing: str = "error",
    test_fraction: float = 0.0,
    progress: bool = False,
) -> FoldStates:
    """One pass over ``source``: the moments of each hash fold, merged over ranks.

    A row's fold is ``fold_of(row, seed, n_folds, test_fraction)``; rows held out as test
    rows (fold -1, the same rows a fit with that ``test_fraction`` holds out) are skipped.

    Examples
    --------
    >>> import numpy as np
    >>> from regtorch.data.source import ArraySource
    >>> rng = np.random.default_rng(0)
    >>> src = ArraySource(rng.normal(size=(50, 2)), rng.normal(size=50), batch_rows=7)
    >>> st = cv_states(src, 5, seed=0, fit_intercept=True)
    >>> sum(s.rows for s in st.fold), st.full().weight_sum
    (50, 50.0)
    """
    fold_of(np.zeros(0, dtype=np.int64), seed, n_folds, test_fraction)  # checks the arguments
    m = len(source.features) + len(source.targets)
    states = [MomentState() for _ in range(n_folds)]
    rank, world = distributed.rank_world()
    total = None if source.n_rows is None else source.n_rows // world
    bar = Progress(total, progress and rank == 0, "cross-validation pass")
    seen = 0
    work: list[np.ndarray] = []
    # one torch thread: pyarrow's decoding threads keep the other cores busy (as streamed fits)
    with reading_threads():
        try:
            for b in prefetch(source.batches(missing)):
                folds = fold_of(b.rows, seed, n_folds, test_fraction)
                _update_by_fold(states, b.Z, getattr(b, "w", None), folds, work)
                seen += len(b.rows)
                bar.update(len(b.rows))
        finally:
            bar.close()
    merged = _merge_ranks(states, m)
    if sum(s.rows for s in merged) < 2:
        raise DataError(f"{source.path}: fewer than 2 training rows for cross-validation.")
    return FoldStates(
        merged, list(source.features), len(source.targets), fit_intercept, rows_read=seen
    )


def _state_of(Z: Any, w: torch.Tensor | None, idx: np.ndarray) -> MomentState:
    """The moments of rows ``idx`` of ``Z``, in blocks. ``Z`` is a tensor, or the columns
    ``(X, y, top)`` with ``top`` the largest magnitude of each column of ``[X, y]``: each
    block is gathered straight into ``[X, y]`` (no copy of all the data), scaled by ``top``."""
    state = MomentState()
    for s in range(0, len(idx), MEMORY_BLOCK_ROWS):
        blk = torch.from_numpy(idx[s : s + MEMORY_BLOCK_ROWS])
        wb = None if w is None else w[blk]
        if isinstance(Z, tuple):
            X, y, top = Z
            state.update(torch.cat([X[blk], y[blk]], 1), wb, top=top)
        else:
            state.update(Z[blk], wb)
    return state


def _states_by_label(
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    label: np.ndarray,
    S: int,
    top: torch.Tensor,
) -> list[MomentState]:
    """The moments of the rows of each label ``0..S-1``, in one pass over ``[X, y]``.

    Each block of consecutive rows is gathered in label order into one buffer (it stays in
    cache), so every label's rows of the block are one contiguous slice: the data are read
    once, and each slice's Gram is one symmetric BLAS update. Large arrays go in two halves
    on two threads (single-threaded BLAS in each), merged first half first: the result does
    not depend on the threads' timing.
    """
    n = X.shape[0]
    Xn, yn = X.numpy(), y.numpy()
    wn = None if w is None else w.numpy()
    lab = label.astype(np.int16 if S < 2**15 else np.int64, copy=False)
    args = (Xn, yn, wn, lab, S, top)
    first, *rest = map_halves(
        lambda i, j: _label_states(*args, i, j), n, FOLD_BLOCK_ROWS, Xn.size, PARALLEL_FOLD_SIZE
    )
    for other in rest:
        for state, part in zip(first, other, strict=True):
            state.merge(part)
    return first


def _label_states(
    Xn: np.ndarray,
    yn: np.ndarray,
    wn: np.ndarray | None,
    lab: np.ndarray,
    S: int,
    top: torch.Tensor,
    start: int,
    stop: int,
) -> list[MomentState]:
    """:func:`_states_by_label` of rows ``start:stop``."""
    p, t = Xn.shape[1], yn.shape[1]
    states = [MomentState() for _ in range(S)]
    xbuf = np.empty((min(FOLD_BLOCK_ROWS, max(stop - start, 0)), p))
    ybuf = np.empty((min(FOLD_BLOCK_ROWS, max(stop - start, 0)), t))
    for i in range(start, stop, FOLD_BLOCK_ROWS):
        r = min(FOLD_BLOCK_ROWS, stop - i)
        order = np.argsort(lab[i : i + r], kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(lab[i : i + r], minlength=S))))
        Xb = np.take(Xn[i : i + r], order, axis=0, out=xbuf[:r], mode="clip")
        yb = np.take(yn[i : i + r], order, axis=0, out=ybuf[:r], mode="clip")
        wb = None if wn is None else wn[i : i + r][order]
        for k in range(S):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if b > a:
                states[k].update_columns(Xb[a:b], yb[a:b], None if wb is None else wb[a:b], top)
    return states


def _disjoint(a: np.ndarray, b: np.ndarray, n: int) -> bool:
    """Whether index arrays ``a`` and ``b`` (of ``n`` rows) share no row."""
    mark = np.zeros(n, dtype=bool)
    mark[b] = True
    return not bool(mark[a].any())


def _splits(cv: Any, n: int, X: Any, y: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays from a splitter or an iterable, checked."""
    if isinstance(cv, (str, bytes, float)) or not (
        hasattr(cv, "split") or isinstance(cv, (Iterable, Iterator))
    ):
        raise ValueError(
            "cv must be None, an int >= 2, a cross-validation splitter or an iterable of "
            f"(train, test) index arrays; got {cv!r}."
        )
    it: Iterable[Any] = cv.split(X, y) if hasattr(cv, "split") else cv
    out = []
    for i, pair in enumerate(it):
        try:
            train, test = pair
        except (TypeError, ValueError):
            raise ValueError(f"cv split {i} is not a (train, test) pair of index arrays.") from None
        arrs = []
        for name, a in (("train", train), ("test", test)):
            a = np.asarray(a)
            if a.dtype == bool and a.shape == (n,):
                a = np.flatnonzero(a)
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or len(a) == 0:
                raise ValueError(
                    f"cv split {i}: {name} must be a non-empty 1-D array of row indices."
                )
            if a.min() < -n or a.max() >= n:
                raise ValueError(f"cv split {i}: {name} index out of range for {n} rows.")
            counts = np.bincount(np.where(a < 0, a + n, a), minlength=n)  # O(n), not a sort
            if int(counts.max()) > 1:
                j = int(np.argmax(counts))
                raise ValueError(
                    f"cv split {i}: {name} repeats row {j} ({int(counts[j])} times), as a "
                    "bootstrap does; the fold statistics count each row once. Give the "
                    "repeats as sample_weight, or splits without repeated rows."
                )
            arrs.append(np.flatnonzero(counts))
        out.append((arrs[0], arrs[1]))
    if len(out) < 2:
        raise ValueError(f"cv must give at least 2 splits, got {len(out)}.")
    return out


def fold_states_in_memory(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    cv: Any,
    random_state: Any,
    *,
    fit_intercept: bool,
    feature_names: list[str] | None = None,
    peaks: torch.Tensor | None = None,
) -> FoldStates:
    """The fold states of arrays in memory (``X (n, p)``, ``y (n, t)``, float64 CPU tensors).

    ``cv``: None (5) or an int: hash folds of the row positions with ``random_state``
    (default 0) as seed; a splitter (with ``split``) or an iterable of ``(train, test)``
    index pairs: one fold per test set. When the test sets are disjoint and every training
    set is the complement of its test set, training states merge the other folds; otherwise
    they are computed from the training indices directly.
    """
    n, p = X.shape
    names = feature_names or [f"x{j}" for j in range(p)]
    Xd, yd = X.cpu().to(torch.float64), y.cpu().to(torch.float64)
    if peaks is None:  # the largest magnitude of each column of [X, y]
        peaks = torch.cat([column_peaks(Xd), column_peaks(yd)])
    Z = (Xd, yd, peaks)  # gathered per block, no full copy
    w = None if sw is None else sw.cpu().to(torch.float64).reshape(-1)
    t = int(y.shape[1])
    if cv is None or (isinstance(cv, (int, np.integer)) and not isinstance(cv, bool)):
        k = 5 if cv is None else int(cv)
        if k < 2:
            raise ValueError(f"cv must be >= 2 folds, got {k}.")
        if k > n:
            raise ValueError(f"Cannot have number of folds cv={k} greater than n_samples={n}.")
        seed = 0 if random_state is None else _seed(random_state)
        folds = fold_of(np.arange(n), seed, k)
        states = _states_by_label(Xd, yd, w, folds, k, peaks)
        return FoldStates(states, names, t, fit_intercept, rows_read=n)
    splits = _splits(cv, n, X.numpy(), y.numpy())
    tests = [s[1] for s in splits]
    counts = np.bincount(np.concatenate(tests), minlength=n)
    complement = bool((counts <= 1).all()) and all(len(tr) + len(te) == n for tr, te in splits)
    complement = complement and all(_disjoint(tr, te, n) for tr, te in splits)
    if complement:  # one pass: each row's label is its test fold (K: in no test set)
        K = len(tests)
        label = np.full(n, K, dtype=np.int64)
        for j, te in enumerate(tests):
            label[te] = j
        states = _states_by_label(Xd, yd, w, label, K + 1, peaks)
        return FoldStates(states[:K], names, t, fit_intercept, rest=states[K], rows_read=n)
    states = [_state_of(Z, w, te) for te in tests]
    trains = [_state_of(Z, w, tr) for tr, _ in splits]
    total = _state_of(Z, w, np.arange(n))
    return FoldStates(states, names, t, fit_intercept, train_sets=trains, total=total, rows_read=n)


def _seed(random_state: Any) -> int:
    """An int seed for the hash folds (an int, or a draw from a numpy RandomState)."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    raise ValueError(
        f"random_state must be None, an int or a numpy RandomState, got {random_state!r}."
    )
