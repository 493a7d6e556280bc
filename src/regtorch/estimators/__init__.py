"""scikit-learn estimators backed by regtorch's solvers and training loop."""

from regtorch.estimators.linear import ElasticNet, Lasso, LinearRegression, Ridge
from regtorch.estimators.mlp import MLPRegressor

__all__ = ["ElasticNet", "Lasso", "LinearRegression", "MLPRegressor", "Ridge"]
