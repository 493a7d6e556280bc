"""The two-thread passes leave the BLAS thread limit as they found it, also when two run at
once in different threads, and give the one-thread results."""

import threading

import numpy as np
from threadpoolctl import threadpool_info

import regtorch._base as base
from regtorch import LinearRegression
from regtorch._threads import split_rows, worker_pool


def _blas_threads():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_limits_restored_after_concurrent_sections():
    before = _blas_threads()
    errors = []

    def work():
        try:
            for _ in range(20):
                with worker_pool() as pool:
                    assert list(pool.map(lambda v: v * 2, [1, 2])) == [2, 4]
                    assert all(n == 1 for n in _blas_threads())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == before


def test_split_rows_covers_every_row_once():
    for n in (0, 1, 5, 64, 65, 1000):
        (a, b), (c, d) = split_rows(n, 16)
        assert a == 0 and b == c and d == n and 0 <= b <= n


def test_two_thread_peaks_and_fit_equal_one_thread(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 4)) * [1.0, 1e3, 1e-3, 5.0]
    X[4321, 2] = -7.0
    y = X @ [1.0, 2.0, 3.0, 4.0] + rng.normal(size=5000)
    one = base.abs_peaks(X)
    fit1 = LinearRegression(solver="cholesky").fit(X, y)
    monkeypatch.setattr(base, "_PARALLEL_PEAK_SIZE", 0)
    import regtorch.linear.solvers as solvers

    monkeypatch.setattr(solvers, "PARALLEL_GRAM_SIZE", 0)
    np.testing.assert_array_equal(base.abs_peaks(X), one)
    assert one[2] == 7.0
    fit2 = LinearRegression(solver="cholesky").fit(X, y)
    np.testing.assert_allclose(fit2.coef_, fit1.coef_, rtol=1e-12)
    Xn = X.copy()
    Xn[10, 1] = np.nan
    assert np.isnan(base.abs_peaks(Xn)[1])
