"""Neural network modules: forward passes only, no training logic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "LinearModule", "MLP", "make_activation"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "logistic": nn.Sigmoid,  # scikit-learn's name
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (see ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"The 'activation' parameter must be one of {sorted(ACTIVATIONS)}. Got {name!r} "
            "instead."
        ) from None


class LinearModule(nn.Module):
    """One ``nn.Linear``: ``y = X @ W.T + b`` for any number of inputs and outputs.

    Examples
    --------
    >>> m = LinearModule(3, 2)
    >>> m(torch.zeros(5, 3)).shape
    torch.Size([5, 2])
    """

    def __init__(self, n_features: int, n_outputs: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_outputs, bias=bias)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.linear(X)


class MLP(nn.Module):
    """A multi-layer perceptron: Linear, activation, ..., Linear (no output activation).

    Parameters
    ----------
    n_features : int
        Number of inputs.
    hidden_layer_sizes : sequence of int
        Width of each hidden layer; empty gives a linear model.
    n_outputs : int
        Number of outputs.
    activation : str
        Activation after each hidden layer, a key of ``ACTIVATIONS``; default ReLU.

    Examples
    --------
    >>> MLP(1, (8, 8, 8))(torch.zeros(4, 1)).shape
    torch.Size([4, 1])
    """

    def __init__(
        self,
        n_features: int,
        hidden_layer_sizes: Sequence[int] = (100,),
        n_outputs: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_layer_sizes:
            layers.append(nn.Linear(width, int(size)))
            layers.append(make_activation(activation))
            width = int(size)
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        self.hidden_layer_sizes = tuple(int(s) for s in hidden_layer_sizes)
        self.activation = activation

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net(X)
