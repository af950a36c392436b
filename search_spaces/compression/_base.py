"""The extension point for compressed linear maps: `BaseCompressedLinear`.

Every compression method of sparse-nas (pruning, low-rank, Kronecker family, HMD) is a
drop-in for `nn.Linear` built on this class, so the same module serves as a Linear
layer, a 1x1 convolution (`CompressedConv1x1`) and a gate matrix of an LSTM/GRU cell.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from hw_models import WeightSpec, WeightStructure


class BaseCompressedLinear(nn.Module, abc.ABC):
    """y = x W^T + b where the (out_features x in_features) matrix W has a structure.

    Contract (every implementation; `tests/search_spaces_tests` checks it for all):
    - `forward(x)`: (..., in_features) -> (..., out_features), equal to
      `x @ dense_weight().T + bias` up to float rounding. Where the structure allows
      it (factorised ones), forward never materialises W.
    - `dense_weight()`: W reconstructed, (out_features, in_features); for tests, export
      and structure conversion only.
    - `weight_structure()`: the `hw_models` structure of the CURRENT state (actual mask
      density, actual factor shapes); `weight_spec()` wraps it with the shape and bits.
      The non-zeros hw_models counts for it equal `stored_parameters()` (bias
      excluded), and the MACs it derives are the module's own forward cost (for masks,
      the non-zeros a sparse kernel multiplies).
    - `stored_parameters()`: values a deployment stores for W (non-zeros for masks).
    - Gradients reach every trainable parameter. Initialisation draws from torch's
      global generator only, so seeding it (the trainer does) makes it deterministic.
    - `weight_bits` is 32 until quantisation sets it (8, 4 or 2); the spec reports it.
    - Picklable and deep-copyable (no lambdas or open handles in state).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight_bits = 32
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""

    @abc.abstractmethod
    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense matrix W, (out_features, in_features)."""

    @abc.abstractmethod
    def weight_structure(self) -> WeightStructure:
        """The hw_models structure (Dense, Sparse, LowRank, Kronecker, ...) of W now."""

    @abc.abstractmethod
    def stored_parameters(self) -> int:
        """Values stored for W in a deployed model (bias excluded)."""

    def weight_spec(self) -> WeightSpec:
        """hw_models WeightSpec of W as (out_features, in_features) at `weight_bits`."""
        return WeightSpec((self.out_features, self.in_features), self.weight_bits, self.weight_structure())

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def kaiming_uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class CompressedConv1x1(nn.Module):
    """A 1x1 convolution on (N, C, H, W) whose channel map is any BaseCompressedLinear."""

    def __init__(self, linear: BaseCompressedLinear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)

    def weight_spec(self) -> WeightSpec:
        """hw_models conv2d weight (O, 1, 1, I) with the linear map's structure."""
        spec = self.linear.weight_spec()
        return WeightSpec((self.linear.out_features, 1, 1, self.linear.in_features), spec.bits, spec.structure)
