"""LSTM and GRU layers whose gate matrices are any compressed linear map.

`CompressedLSTM` and `CompressedGRU` are drop-ins for `nn.LSTM` and `nn.GRU` (same
constructor options, forward signature and outputs) in which the stacked input-to-gate
matrix W_ih (G H x F) and hidden-to-gate matrix W_hh (G H x H) of every layer and
direction are `BaseCompressedLinear` modules built by `make_linear` (or any factory).
This is how the papers behind sparse-nas compress RNNs: every gate matrix of the cell
becomes a Kronecker product, a low-rank product, an HMD matrix or a pruned matrix
(Thakker et al., arXiv 1906.02876, arXiv 1906.04886; Zhu & Gupta 2017, arXiv
1710.01878). `to_network` emits the matching hw_models `lstm` / `gru` layers.

Biases are stored as a deployment stores them and as hw_models counts them (4 H per
layer and direction for both cells), not as PyTorch does (two vectors of G H):

- LSTM: one vector b = b_ih + b_hh of 4 H, the bias of W_ih (W_hh has none). The two
  PyTorch vectors only ever appear summed (Hochreiter & Schmidhuber 1997), so the
  function class is the same with 4 H fewer values.
- GRU: W_ih's bias of 3 H holds b_ir + b_hr, b_iz + b_hz and b_in, and a separate b_hn
  (H) stays inside r * (W_hn h + b_hn) (Cho et al. 2014, as PyTorch defines the cell),
  so it cannot merge: 4 H instead of PyTorch's 6 H.

`from_torch` copies an `nn.LSTM` / `nn.GRU` into dense gate matrices with these merged
biases; the outputs then equal PyTorch's up to float rounding.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from hw_models import NetworkBuilder, OpKind
from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.compression._registry import make_linear
from search_spaces.errors import InvalidCompressionError, SearchSpaceError


class GateMatrixFactory(Protocol):
    """Builds one gate matrix; called as ``factory(in_features, out_features, bias=bias)``."""

    def __call__(self, in_features: int, out_features: int, *, bias: bool) -> BaseCompressedLinear: ...


GateMatrixSpec = str | tuple[str, Mapping[str, Any]] | GateMatrixFactory
"""How to build a gate matrix: a method name, (method name, knobs) for `make_linear`,
or a factory such as ``functools.partial(KroneckerLinear.for_compression, factor=15)``."""


class InvalidRNNInputError(SearchSpaceError, ValueError):
    """An input or initial state whose shape does not fit the recurrent layer."""


def _resolve_spec(spec: GateMatrixSpec, field: str) -> GateMatrixFactory:
    """A factory (in_features, out_features, bias) -> module for a spec; names `field`."""
    if isinstance(spec, str):
        return lambda n, m, *, bias: make_linear(spec, n, m, bias)
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], Mapping):
            raise InvalidCompressionError(f"{field}: expected (method, {{knob: value}}), got {spec!r}")
        method, knobs = spec[0], dict(spec[1])
        return lambda n, m, *, bias: make_linear(method, n, m, bias, **knobs)
    if callable(spec):
        return spec
    raise InvalidCompressionError(
        f"{field}: expected a method name, (method, knobs) or a factory (in, out, *, bias) -> module, got {spec!r}"
    )


def _check_positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidCompressionError(f"{field}: must be a positive integer, got {value!r}")
    return value


class BaseCompressedRNN(nn.Module, abc.ABC):
    """A multi-layer, optionally bidirectional RNN with compressed gate matrices.

    Contract (shared by `CompressedLSTM` and `CompressedGRU`):
    - Constructor options, forward signature and output shapes are those of `nn.LSTM`
      / `nn.GRU` (without `proj_size`, `device` and `dtype`, and without packed
      sequences): input (T, N, F), (N, T, F) with `batch_first`, or unbatched (T, F);
      output (T, N, D H) (batch-first: (N, T, D H); unbatched: (T, D H)); states
      (num_layers D, N, H) (unbatched: (num_layers D, H)), D = 2 if bidirectional.
    - `w_ih[k]` (G H x F_k) and `w_hh[k]` (G H x H) are the gate matrices of layer
      k // D, direction k % D (0 forward, 1 reverse), rows stacked in PyTorch's gate
      order; F_0 = input_size, F_k = D H for deeper layers.
    - Every gate matrix initialises as its method does (fan-in rule of nn.Linear for
      dense: U(-1/sqrt(F_k), 1/sqrt(F_k)) for W_ih), not as nn.LSTM (U(-1/sqrt(H),
      1/sqrt(H)) everywhere); only the global torch generator is used.
    - `stored_parameters()` is the deployed count: the gate matrices'
      `stored_parameters()` plus 4 H bias values per layer and direction; it equals
      the `nonzero_params` hw_models reports for `to_network`'s layers.
    - x W_ih^T is computed for all T steps in one call before the time loop (the input
      path does not depend on h), then each step applies W_hh to the previous state.
    - Gate matrices may be wrapped after construction (`prepare_qat` of
      search_spaces.quantization swaps in `QuantizedLayer`s for int8 training); only
      their forward, `in_features`, `out_features`, `bias`, `weight_bits`,
      `weight_structure()` and `stored_parameters()` are used.
    """

    GATES: ClassVar[int]
    """G: gates per hidden unit (rows of a gate matrix are G H)."""
    OP_KIND: ClassVar[str]
    """The hw_models op kind of one layer and direction."""
    STATE_TENSORS: ClassVar[int]
    """Tensors in the recurrent state: LSTM (h, c) 2, GRU (h) 1."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        w_ih: GateMatrixSpec = "dense",
        w_hh: GateMatrixSpec = "dense",
    ) -> None:
        super().__init__()
        if proj_size != 0:
            raise InvalidCompressionError(
                f"proj_size: projections (LSTMP) are not supported by compressed RNNs; must be 0, got {proj_size!r}"
            )
        self.input_size = _check_positive_int(input_size, "input_size")
        self.hidden_size = _check_positive_int(hidden_size, "hidden_size")
        self.num_layers = _check_positive_int(num_layers, "num_layers")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout <= 1:
            raise InvalidCompressionError(f"dropout: must be a number in [0, 1], got {dropout!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        make_ih, make_hh = _resolve_spec(w_ih, "w_ih"), _resolve_spec(w_hh, "w_hh")
        rows = self.GATES * hidden_size
        ih, hh = [], []
        for layer in range(num_layers):
            in_features = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                ih.append(_checked(make_ih(in_features, rows, bias=self.bias), in_features, rows, self.bias, "w_ih"))
                hh.append(_checked(make_hh(hidden_size, rows, bias=False), hidden_size, rows, False, "w_hh"))
        self.w_ih = nn.ModuleList(ih)
        self.w_hh = nn.ModuleList(hh)

    # --- to implement ---------------------------------------------------------------

    @abc.abstractmethod
    def _extra_bias_parameters(self) -> int:
        """Bias values stored outside the gate matrices (GRU: b_hn), all layers."""

    @abc.abstractmethod
    def _run_direction(
        self, index: int, gates_x: torch.Tensor, state: tuple[torch.Tensor, ...], reverse: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run one layer and direction over time.

        Args:
            index: k = layer * D + direction.
            gates_x: x W_ih^T + b for every step, (T, N, G H).
            state: initial state tensors, each (N, H).
            reverse: run from step T - 1 down to 0.

        Returns:
            Hidden states per step (T, N, H) in input time order, and the final state.
        """

    # --- shared ---------------------------------------------------------------------

    def _run(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, ...] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Shape handling around the layer loop; hx tensors as the caller passed them."""
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise InvalidRNNInputError("input: packed sequences are not supported; pad the batch and pass a tensor")
        if x.dim() not in (2, 3):
            raise InvalidRNNInputError(f"input: expected a 2-D (unbatched) or 3-D tensor, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise InvalidRNNInputError(f"input: last dimension must be input_size={self.input_size}, got {x.shape[-1]}")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[1]
        layers_by_dir = self.num_layers * self.num_directions
        if hx is None:
            zeros = x.new_zeros(layers_by_dir, batch, self.hidden_size)
            states = tuple(zeros for _ in range(self.STATE_TENSORS))
        else:
            expected = (layers_by_dir, self.hidden_size) if unbatched else (layers_by_dir, batch, self.hidden_size)
            for i, h in enumerate(hx):
                if tuple(h.shape) != expected:
                    raise InvalidRNNInputError(f"hx[{i}]: expected shape {expected}, got {tuple(h.shape)}")
            states = tuple(h.unsqueeze(1) if unbatched else h for h in hx)
        finals: list[tuple[torch.Tensor, ...]] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                gates_x = self.w_ih[k](x)
                out, final = self._run_direction(k, gates_x, tuple(s[k] for s in states), direction == 1)
                outputs.append(out)
                finals.append(final)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if layer + 1 < self.num_layers:
                x = nn.functional.dropout(x, self.dropout, self.training)
        final_states = tuple(torch.stack([f[i] for f in finals]) for i in range(self.STATE_TENSORS))
        if unbatched:
            return x.squeeze(1), tuple(s.squeeze(1) for s in final_states)
        return (x.transpose(0, 1) if self.batch_first else x), final_states

    def stored_parameters(self) -> int:
        """Values a deployment stores: the gate matrices' plus 4 H biases per layer and direction."""
        matrices = sum(m.stored_parameters() for m in [*self.w_ih, *self.w_hh])
        ih_bias = sum(m.bias.numel() for m in self.w_ih if m.bias is not None)
        return matrices + ih_bias + self._extra_bias_parameters()

    def to_network(
        self,
        builder: NetworkBuilder,
        x: str,
        *,
        return_sequences: bool = False,
        weight_bits: int | None = None,
        name: str | None = None,
    ) -> str:
        """Append this RNN's hw_models layers to `builder`; returns the output tensor name.

        One `lstm` / `gru` op per layer and direction with the gate matrices' current
        `weight_structure()` and bits. The reverse direction costs the same as the
        forward one, so it is the same op on the same input. Bidirectional layers
        concatenate both directions' outputs on the last axis. Every layer but the last
        returns sequences (T, D H); the last returns (T, D H) with `return_sequences`,
        else the final hidden states (D H,), what a classifier on h_n reads.

        Args:
            builder: the network under construction.
            x: input tensor name, shape (T, input_size).
            return_sequences: whether the last layer outputs every step.
            weight_bits: bits of every gate matrix in deployment (e.g. 8); None takes
                each matrix's `weight_bits`.
            name: prefix of the op names (`{name}_l{layer}`, `..._reverse`); None lets
                the builder number them.

        Raises:
            InvalidRNNInputError: `x` is not (T, input_size).
        """
        shape = builder.shape(x)
        if len(shape) != 2 or shape[1] != self.input_size:
            raise InvalidRNNInputError(f"x: expected a (T, {self.input_size}) tensor, got {x!r} of shape {shape}")
        for layer in range(self.num_layers):
            sequences = return_sequences or layer + 1 < self.num_layers
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                weights = {
                    key: (
                        (m.out_features, m.in_features),
                        m.weight_bits if weight_bits is None else weight_bits,
                        m.weight_structure(),
                    )
                    for key, m in (("w_ih", self.w_ih[k]), ("w_hh", self.w_hh[k]))
                }
                op_name = None if name is None else f"{name}_l{layer}" + ("_reverse" if direction else "")
                attrs = {"return_sequences": sequences, "bias": self.bias}
                outputs.append(builder.add(self.OP_KIND, [x], attrs, weights, op_name))
            x = outputs[0] if len(outputs) == 1 else builder.concat(outputs, axis=-1)
        return x

    def extra_repr(self) -> str:
        methods = f"w_ih={type(self.w_ih[0]).__name__}, w_hh={type(self.w_hh[0]).__name__}"
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"batch_first={self.batch_first}, dropout={self.dropout}, bidirectional={self.bidirectional}, {methods}"
        )


def _checked(
    module: BaseCompressedLinear, in_features: int, out_features: int, bias: bool, field: str
) -> BaseCompressedLinear:
    """`module` if it is a BaseCompressedLinear of the requested shape and bias."""
    if not isinstance(module, BaseCompressedLinear):
        raise InvalidCompressionError(f"{field}: the factory must return a BaseCompressedLinear, got {module!r}")
    if (module.in_features, module.out_features, module.bias is not None) != (in_features, out_features, bias):
        raise InvalidCompressionError(
            f"{field}: expected a {out_features}x{in_features} matrix with bias={bias}, got "
            f"{module.out_features}x{module.in_features} with bias={module.bias is not None}"
        )
    return module


def _time_steps(length: int, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


class CompressedLSTM(BaseCompressedRNN):
    """nn.LSTM with compressed gate matrices (gate order i, f, g, o, as PyTorch).

    Per step (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000):
    [i; f; g; o] = x_t W_ih^T + h_{t-1} W_hh^T + b, c_t = sigmoid(f) c_{t-1} +
    sigmoid(i) tanh(g), h_t = sigmoid(o) tanh(c_t). One merged bias b (4 H) per layer
    and direction (see the module docstring). Returns (output, (h_n, c_n)).

    Args:
        input_size: F, features per step.
        hidden_size: H.
        num_layers: stacked layers.
        bias: learn b.
        batch_first: input and output are (N, T, .) instead of (T, N, .).
        dropout: dropout on the outputs of every layer but the last, in training.
        bidirectional: add a reverse direction per layer.
        proj_size: must be 0 (accepted for nn.LSTM compatibility).
        w_ih: spec of every input-to-gate matrix (4 H x F_k); default dense.
        w_hh: spec of every hidden-to-gate matrix (4 H x H); default dense.

    Example:
        >>> lstm = CompressedLSTM(10, 64, batch_first=True, w_hh=("kronecker", {}))
        >>> out, (h_n, c_n) = lstm(torch.zeros(8, 49, 10))  # (8, 49, 64), (1, 8, 64) x 2
    """

    GATES = 4
    OP_KIND = OpKind.LSTM
    STATE_TENSORS = 2

    def forward(
        self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(T, N, F) -> output (T, N, D H), (h_n, c_n) each (num_layers D, N, H); see the class."""
        if hx is not None and (not isinstance(hx, tuple | list) or len(hx) != 2):
            raise InvalidRNNInputError("hx: an LSTM takes the initial state as a tuple (h_0, c_0)")
        output, (h_n, c_n) = self._run(input, None if hx is None else tuple(hx))
        return output, (h_n, c_n)

    def _extra_bias_parameters(self) -> int:
        return 0

    def _run_direction(
        self, index: int, gates_x: torch.Tensor, state: tuple[torch.Tensor, ...], reverse: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        w_hh = self.w_hh[index]
        h, c = state
        outputs: list[torch.Tensor] = [h] * gates_x.shape[0]
        for t in _time_steps(gates_x.shape[0], reverse):
            i, f, g, o = (gates_x[t] + w_hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs[t] = h
        return torch.stack(outputs), (h, c)

    @classmethod
    def from_torch(cls, module: nn.LSTM) -> CompressedLSTM:
        """A dense CompressedLSTM computing what `module` computes (b = b_ih + b_hh).

        Raises:
            InvalidCompressionError: `module` is not an nn.LSTM or has a projection.
        """
        if not isinstance(module, nn.LSTM) or module.proj_size:
            raise InvalidCompressionError(f"module: expected an nn.LSTM without projection, got {module!r}")
        copy = cls(**_torch_options(module))
        _copy_torch_weights(copy, module, lambda b_ih, b_hh, h: b_ih + b_hh)
        return copy


class CompressedGRU(BaseCompressedRNN):
    """nn.GRU with compressed gate matrices (gate order r, z, n, as PyTorch).

    Per step (Cho et al. 2014, arXiv 1406.1078, in PyTorch's form): [r; z] =
    sigmoid(x_t W_i{r,z}^T + h_{t-1} W_h{r,z}^T + b_{r,z}), n = tanh(x_t W_in^T + b_in +
    r (h_{t-1} W_hn^T + b_hn)), h_t = (1 - z) n + z h_{t-1}. W_ih's bias holds b_r, b_z
    and b_in; `b_hn[k]` (H) is kept apart (see the module docstring). Returns
    (output, h_n).

    Args:
        input_size: F, features per step.
        hidden_size: H.
        num_layers: stacked layers.
        bias: learn the biases.
        batch_first: input and output are (N, T, .) instead of (T, N, .).
        dropout: dropout on the outputs of every layer but the last, in training.
        bidirectional: add a reverse direction per layer.
        proj_size: must be 0 (nn.GRU has none; accepted to fail clearly).
        w_ih: spec of every input-to-gate matrix (3 H x F_k); default dense.
        w_hh: spec of every hidden-to-gate matrix (3 H x H); default dense.
    """

    GATES = 3
    OP_KIND = OpKind.GRU
    STATE_TENSORS = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        w_ih: GateMatrixSpec = "dense",
        w_hh: GateMatrixSpec = "dense",
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            w_ih=w_ih, w_hh=w_hh,
        )  # fmt: skip
        bound = 1.0 / math.sqrt(hidden_size)
        self.b_hn = nn.ParameterList(
            [nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound)) for _ in self.w_hh] if self.bias else []
        )

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N, F) -> output (T, N, D H), h_n (num_layers D, N, H); see the class."""
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise InvalidRNNInputError("hx: a GRU takes the initial state as one tensor h_0")
        output, (h_n,) = self._run(input, None if hx is None else (hx,))
        return output, h_n

    def _extra_bias_parameters(self) -> int:
        return sum(b.numel() for b in self.b_hn)

    def _run_direction(
        self, index: int, gates_x: torch.Tensor, state: tuple[torch.Tensor, ...], reverse: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        w_hh = self.w_hh[index]
        b_hn = self.b_hn[index] if self.bias else None
        x_rz, x_n = gates_x.split([2 * self.hidden_size, self.hidden_size], dim=-1)
        (h,) = state
        outputs: list[torch.Tensor] = [h] * gates_x.shape[0]
        for t in _time_steps(gates_x.shape[0], reverse):
            h_rz, h_n = w_hh(h).split([2 * self.hidden_size, self.hidden_size], dim=-1)
            r, z = torch.sigmoid(x_rz[t] + h_rz).chunk(2, dim=-1)
            if b_hn is not None:
                h_n = h_n + b_hn
            n = torch.tanh(x_n[t] + r * h_n)
            h = n + z * (h - n)
            outputs[t] = h
        return torch.stack(outputs), (h,)

    @classmethod
    def from_torch(cls, module: nn.GRU) -> CompressedGRU:
        """A dense CompressedGRU computing what `module` computes (b_r, b_z merged).

        Raises:
            InvalidCompressionError: `module` is not an nn.GRU.
        """
        if not isinstance(module, nn.GRU):
            raise InvalidCompressionError(f"module: expected an nn.GRU, got {module!r}")
        copy = cls(**_torch_options(module))

        def merge(b_ih: torch.Tensor, b_hh: torch.Tensor, h: int) -> torch.Tensor:
            return torch.cat([b_ih[: 2 * h] + b_hh[: 2 * h], b_ih[2 * h :]])

        _copy_torch_weights(copy, module, merge)
        if copy.bias:
            with torch.no_grad():
                for k, b_hn in enumerate(copy.b_hn):
                    b_hn.copy_(getattr(module, f"bias_hh{_torch_suffix(copy, k)}")[2 * copy.hidden_size :])
        return copy


def _torch_options(module: nn.RNNBase) -> dict[str, Any]:
    return {
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
        "bidirectional": module.bidirectional,
    }


def _torch_suffix(rnn: BaseCompressedRNN, index: int) -> str:
    """PyTorch's parameter suffix of layer/direction `index`: `_l0`, `_l0_reverse`, ..."""
    layer, direction = divmod(index, rnn.num_directions)
    return f"_l{layer}" + ("_reverse" if direction else "")


def _copy_torch_weights(
    rnn: BaseCompressedRNN,
    module: nn.RNNBase,
    merge_bias: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> None:
    """Copy PyTorch's weight_ih/hh into dense gate matrices and merge the biases."""
    with torch.no_grad():
        for k, (ih, hh) in enumerate(zip(rnn.w_ih, rnn.w_hh, strict=True)):
            suffix = _torch_suffix(rnn, k)
            ih.weight.copy_(getattr(module, f"weight_ih{suffix}"))
            hh.weight.copy_(getattr(module, f"weight_hh{suffix}"))
            if rnn.bias:
                b_ih, b_hh = getattr(module, f"bias_ih{suffix}"), getattr(module, f"bias_hh{suffix}")
                ih.bias.copy_(merge_bias(b_ih, b_hh, rnn.hidden_size))
