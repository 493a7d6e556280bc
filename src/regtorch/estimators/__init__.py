"""scikit-learn estimators backed by regtorch's solvers and training loop."""

from regtorch.estimators.linear import ElasticNet, Lasso, LinearRegression, Ridge

__all__ = ["ElasticNet", "Lasso", "LinearRegression", "Ridge"]
