"""Warning classes raised by regtorch, so that users can filter them by kind.

Every regtorch warning derives from :class:`RegtorchWarning` (itself a ``UserWarning``).
Non-convergence keeps scikit-learn's ``ConvergenceWarning`` and deprecations keep
``DeprecationWarning``, so existing filters for those go on working.

Examples
--------
>>> import warnings
>>> import regtorch
>>> warnings.filterwarnings("ignore", category=regtorch.RankWarning)
"""

from __future__ import annotations

__all__ = ["DataWarning", "IllConditionedWarning", "RankWarning", "RegtorchWarning"]


class RegtorchWarning(UserWarning):
    """Base class of every warning regtorch raises itself.

    Silence them all with ``warnings.filterwarnings("ignore", category=RegtorchWarning)``.
    """


class RankWarning(RegtorchWarning):
    """The design matrix is rank deficient; the minimum-norm solution was returned.

    Raised by closed-form, streamed and gradient fits of linear models when the design has
    fewer independent columns than features. Filter with
    ``warnings.filterwarnings("ignore", category=regtorch.RankWarning)``.
    """


class IllConditionedWarning(RegtorchWarning):
    """A fit lost precision: an ill-conditioned Gram or design, a fallback pass or solver.

    Raised when a linear fit's scaled Gram matrix is too ill-conditioned for the path taken
    (a one-pass streamed fit, the normal equations), when a fallback (a second pass, another
    solver) was used, or when a requested precision cannot be met. Filter with
    ``warnings.filterwarnings("ignore", category=regtorch.IllConditionedWarning)``.
    """


class DataWarning(RegtorchWarning):
    """The input data looked odd: rows were dropped, or values read from a file were unusual.

    Filter with ``warnings.filterwarnings("ignore", category=regtorch.DataWarning)``.
    """
