import numpy as np
from sklearn.datasets import make_regression

from regtorch.datasets import make_line, make_sine


def test_line_split_shapes_and_dtype():
    d = make_line()
    assert d.X_train.shape == (800, 1) and d.y_train.shape == (800, 1)
    assert d.X_val.shape == (200, 1) and d.X_test.shape == (200, 1)
    assert d.X_train.dtype == np.float32 and d.y_test.dtype == np.float32
    assert abs(d.coef - 4.341) < 1e-3


def test_line_test_rows_are_the_last_200_of_make_regression():
    X, y = make_regression(n_samples=1200, n_features=1, bias=3.0, noise=2, random_state=42)
    d = make_line()
    np.testing.assert_array_equal(d.X_test, X[1000:].astype(np.float32))
    np.testing.assert_array_equal(d.y_test.ravel(), y[1000:].astype(np.float32))
    # train + val are exactly the first 1000 rows, reshuffled
    both = np.sort(np.concatenate([d.X_train, d.X_val]).ravel())
    np.testing.assert_array_equal(both, np.sort(X[:1000].astype(np.float32).ravel()))


def test_sine_is_seeded_and_shares_x():
    a, b = make_sine(), make_sine()
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.X_train, make_line().X_train)
    noise = a.y_test.ravel() - np.sin(2 * a.X_test.ravel().astype(np.float64))
    assert 0.07 < noise.std() < 0.13
    assert not np.array_equal(make_sine(noise_seed=1).y_train, a.y_train)
