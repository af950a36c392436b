"""`rnn`: LSTM / GRU sequence classifiers with a compression method per gate matrix.

Each recurrent layer's input-to-gate matrix W_ih (G H x F) and hidden-to-gate matrix
W_hh (G H x H) get their own compression method and level, as in the Arm work on
compressed RNNs for microcontrollers: Kronecker products (Thakker et al., "Compressing
RNNs for IoT devices by 15-38x using Kronecker Products", arXiv 1906.02876), hybrid
Kronecker and HMD matrices (Thakker et al., arXiv 1906.04886), low-rank factors and
magnitude pruning (Zhu & Gupta, arXiv 1710.01878). The classifier reads the top layer's
last hidden state h_T through an optional compressed dense layer, the usual keyword
spotting / activity recognition head (Zhang et al., "Hello Edge", arXiv 1711.07128).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from hw_models import Mixed, NetworkBuilder, NetworkSpec, WeightStructure
from search_spaces.compression._rnn import BaseCompressedRNN, CompressedGRU, CompressedLSTM
from search_spaces.families._base import (
    BaseSearchSpace,
    InvalidSearchSpaceError,
    OptionSpec,
    Params,
    between,
    int_range,
    register_search_space,
    subset_of,
)
from search_spaces.families._knobs import MAX_LEVEL, METHODS, knobs, make_compressed_linear, structure
from search_spaces.quantization import QuantizedLayer

CELLS: dict[str, type[BaseCompressedRNN]] = {"lstm": CompressedLSTM, "gru": CompressedGRU}
REFERENCE_DEVICE = "stm32f446re"
"""Board `smallest()` ranks points on: MACs do not depend on the board; flash only breaks ties."""
HIDDEN_STEP = 8
"""Hidden sizes are multiples of 8: gate matrices then have many Kronecker factorisations."""




def _hidden_range(value: Any) -> str | None:
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)
    if not ok or not HIDDEN_STEP <= value[0] <= value[1] or value[0] % HIDDEN_STEP or value[1] % HIDDEN_STEP:
        return f"expected [low, high], multiples of {HIDDEN_STEP} with {HIDDEN_STEP} <= low <= high, got {value!r}"
    return None






class RecurrentClassifier(nn.Module):
    """Stacked recurrent layers, then a head on the top layer's last hidden state.

    Args:
        rnns: the layers, each batch-first and one layer deep (its own gate-matrix methods).
        head: (N, H) -> (N, classes) logits.
    """

    def __init__(self, rnns: Sequence[BaseCompressedRNN], head: nn.Sequential) -> None:
        super().__init__()
        self.rnns = nn.ModuleList(rnns)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, F) -> (N, classes)."""
        for rnn in self.rnns:
            x, _ = rnn(x)
        return self.head(x[:, -1])


@register_search_space
class RNNSpace(BaseSearchSpace):
    """LSTM or GRU layers -> last hidden state -> dense layers -> classifier.

    Input: sequences (T, F), e.g. 49 x 10 MFCC frames or 128 x 9 inertial samples; the
    torch model takes (N, T, F).

    Parameters (names are stable; layers beyond `n_layers` / `n_dense` are ignored):
        cell (lstm | gru, all layers), n_layers, rnn{i}_hidden (H, a multiple of 8),
        rnn{i}_ih_method / rnn{i}_ih_level (compression method and level 1-5, factor
        2^level, of W_ih, G H x F), rnn{i}_hh_method / rnn{i}_hh_level (the same for
        W_hh, G H x H), n_dense, dense{j}_units, dense{j}_method, dense{j}_level,
        quantization (int8 | float32). G = 4 for LSTM, 3 for GRU; every layer but the
        top returns its whole sequence to the next.
    """

    name = "rnn"
    option_specs = (
        OptionSpec("cells", list(CELLS), "recurrent cells searched (lstm, gru)", subset_of(tuple(CELLS))),
        OptionSpec("max_layers", 2, "maximum number of recurrent layers (1-3)", between(1, 3)),
        OptionSpec("hidden", [16, 256], "[low, high] hidden size H of a layer, multiples of 8", _hidden_range),
        OptionSpec("max_dense_layers", 1, "maximum hidden dense layers of the head (0-2)", between(0, 2)),
        OptionSpec("dense_units", [16, 256], "[low, high] units of a hidden dense layer", int_range),
        OptionSpec(
            "methods", list(METHODS), "compression methods of gate matrices and dense layers", subset_of(METHODS)
        ),
        OptionSpec("quantization", ["int8"], "deployment precisions searched", subset_of(("int8", "float32"))),
    )

    def __init__(self, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any] | None = None):
        super().__init__(input_shape, num_classes, options)
        if len(self.input_shape) != 2:
            raise InvalidSearchSpaceError(
                f"input_shape: the rnn family takes sequences (T, F), got {list(self.input_shape)}"
            )

    def distributions(self) -> dict[str, BaseDistribution]:
        o = self.options
        methods = tuple(o["methods"])
        d: dict[str, BaseDistribution] = {
            "cell": CategoricalDistribution(tuple(o["cells"])),
            "n_layers": IntDistribution(1, o["max_layers"]),
        }
        for i in range(o["max_layers"]):
            d[f"rnn{i}_hidden"] = IntDistribution(*o["hidden"], step=HIDDEN_STEP)
            for matrix in ("ih", "hh"):
                d[f"rnn{i}_{matrix}_method"] = CategoricalDistribution(methods)
                d[f"rnn{i}_{matrix}_level"] = IntDistribution(1, MAX_LEVEL)
        d["n_dense"] = IntDistribution(0, o["max_dense_layers"])
        for j in range(o["max_dense_layers"]):
            d[f"dense{j}_units"] = IntDistribution(*o["dense_units"], log=True)
            d[f"dense{j}_method"] = CategoricalDistribution(methods)
            d[f"dense{j}_level"] = IntDistribution(1, MAX_LEVEL)
        d["quantization"] = CategoricalDistribution(tuple(o["quantization"]))
        return d

    def smallest(self) -> dict[str, Any]:
        """One GRU layer of the smallest H at level 5, int8, with the fewest MACs.

        MACs add up over ops, so each part is chosen on its own: W_ih's method, W_hh's
        method, and the head (no dense layer, or a bottleneck of the fewest units, which
        is cheaper when H is large), each by MACs, then flash. A GRU has fewer gate rows
        than an LSTM and the same bias and element-wise work.
        """
        variants = {part: self._variants(part) for part in ("ih", "hh", "head")}
        candidates = [c for part in variants.values() for c in part]
        report = self.cost_batch(candidates, REFERENCE_DEVICE)
        best: dict[str, dict[str, Any]] = {}
        offset = 0
        for part, points in variants.items():
            costs = [(report.macs[offset + k], report.flash_bytes[offset + k]) for k in range(len(points))]
            best[part] = points[min(range(len(points)), key=costs.__getitem__)]
            offset += len(points)
        return self._point(
            best["ih"]["rnn0_ih_method"],
            best["hh"]["rnn0_hh_method"],
            best["head"]["n_dense"],
            best["head"]["dense0_method"] if best["head"]["n_dense"] else self.options["methods"][0],
        )

    def _point(self, ih: str, hh: str, n_dense: int, dense_method: str) -> dict[str, Any]:
        """The smallest sizes and top levels with these methods (every layer, active or not)."""
        o = self.options
        p: dict[str, Any] = {
            "cell": "gru" if "gru" in o["cells"] else o["cells"][0],
            "n_layers": 1,
            "n_dense": n_dense,
            "quantization": "int8" if "int8" in o["quantization"] else "float32",
        }
        for i in range(o["max_layers"]):
            p |= {
                f"rnn{i}_hidden": o["hidden"][0],
                f"rnn{i}_ih_method": ih,
                f"rnn{i}_ih_level": MAX_LEVEL,
                f"rnn{i}_hh_method": hh,
                f"rnn{i}_hh_level": MAX_LEVEL,
            }
        for j in range(o["max_dense_layers"]):
            p |= {
                f"dense{j}_units": o["dense_units"][0],
                f"dense{j}_method": dense_method,
                f"dense{j}_level": MAX_LEVEL,
            }
        return p

    def _variants(self, part: str) -> list[dict[str, Any]]:
        """Points differing from a fixed one only in `part`: W_ih's method, W_hh's, or the head."""
        methods = self.options["methods"]
        first = methods[0]
        if part == "ih":
            return [self._point(m, first, 0, first) for m in methods]
        if part == "hh":
            return [self._point(first, m, 0, first) for m in methods]
        heads = [(k, m) for k in range(1, self.options["max_dense_layers"] + 1) for m in methods]
        return [self._point(first, first, 0, first)] + [self._point(first, first, k, m) for k, m in heads]

    def corner_candidates(self) -> list[dict[str, Any]]:
        """The base corners plus every combination of cell, gate-matrix methods, head and precision.

        Methods trade MACs against stored bytes and SRAM (magnitude pruning multiplies
        the fewest values but stores indices; Kronecker stores the fewest values of a
        small matrix), and the parts of the network can each take the other side of a
        trade, so one-at-a-time variations of `smallest()` would miss the minimum of a
        cost over combinations.
        """
        o = self.options
        heads = [(0, o["methods"][0])] + [(k, m) for k in range(1, o["max_dense_layers"] + 1) for m in o["methods"]]
        extra = [
            self._point(ih, hh, k, m) | {"cell": cell, "quantization": q}
            for cell, ih, hh, (k, m), q in itertools.product(
                o["cells"], o["methods"], o["methods"], heads, o["quantization"]
            )
        ]
        return super().corner_candidates() + extra


    def topology_key(self, params: Params) -> tuple[Any, ...]:
        """Cell, depths and precision.

        Gate-matrix and dense-layer methods are not in it: candidates that differ in them
        share a pass, each weight a `Mixed` of their structures.
        """
        return (params["cell"], params["n_layers"], params["n_dense"], params["quantization"])

    # --- torch ------------------------------------------------------------------------

    def build(self, params: Params) -> nn.Module:
        p = self.check_params(params)
        cell = CELLS[p["cell"]]
        features = self.input_shape[1]
        rnns = []
        for i in range(p["n_layers"]):
            hidden = p[f"rnn{i}_hidden"]
            rows = cell.GATES * hidden
            ih, hh = p[f"rnn{i}_ih_method"], p[f"rnn{i}_hh_method"]
            w_ih = (ih, knobs(ih, rows, features, p[f"rnn{i}_ih_level"]))
            w_hh = (hh, knobs(hh, rows, hidden, p[f"rnn{i}_hh_level"]))
            rnns.append(cell(features, hidden, batch_first=True, w_ih=w_ih, w_hh=w_hh))
            features = hidden
        head: dict[str, nn.Module] = {}
        for j in range(p["n_dense"]):
            units = p[f"dense{j}_units"]
            head[f"dense{j}"] = make_compressed_linear(p[f"dense{j}_method"], features, units, p[f"dense{j}_level"])
            head[f"dense{j}_relu"] = nn.ReLU()
            features = units
        head["classifier"] = nn.Linear(features, self.num_classes)
        model = RecurrentClassifier(rnns, nn.Sequential(OrderedDict(head)))
        return self.quantize_if_int8(model, p)

    # --- hw_models --------------------------------------------------------------------

    def describe(
        self, b: NetworkBuilder, params: Params, structures: Mapping[str, WeightStructure] | None = None
    ) -> str:
        """Write the network into `b`; `structures` overrides planned ones by name.

        Names: ``rnn{i}.w_ih``, ``rnn{i}.w_hh`` and ``dense{j}``; absent ones take the
        structure of their method at their level.
        """
        p = params
        given = structures or {}

        def planned(name: str, method: Any, rows: Any, cols: Any, level: Any) -> WeightStructure | Mixed:
            return given[name] if name in given else structure(method, rows, cols, level)

        bits = self.activation_bits(p)
        cell = p["cell"]
        add_layer = b.lstm if cell == "lstm" else b.gru
        gates = CELLS[cell].GATES
        x = b.input
        for i in range(p["n_layers"]):
            hidden = p[f"rnn{i}_hidden"]
            features = b.shape(x)[-1]
            rows = gates * hidden
            w_ih = planned(f"rnn{i}.w_ih", p[f"rnn{i}_ih_method"], rows, features, p[f"rnn{i}_ih_level"])
            w_hh = planned(f"rnn{i}.w_hh", p[f"rnn{i}_hh_method"], rows, hidden, p[f"rnn{i}_hh_level"])
            last = i + 1 == p["n_layers"]
            x = add_layer(x, hidden, return_sequences=not last, weight_bits=bits, w_ih=w_ih, w_hh=w_hh, name=f"rnn{i}")
        for j in range(p["n_dense"]):
            features = b.shape(x)[-1]
            units = p[f"dense{j}_units"]
            s = planned(f"dense{j}", p[f"dense{j}_method"], units, features, p[f"dense{j}_level"])
            x = b.linear(x, units, activation="relu", weight_bits=bits, structure=s, name=f"dense{j}")
        return b.linear(x, self.num_classes, weight_bits=bits, name="classifier")

    def network_from_model(self, model: nn.Module, params: Params) -> NetworkSpec:
        """The network with the real structure of every gate matrix and dense layer."""
        p = self.check_params(params)
        structures: dict[str, WeightStructure] = {}
        for i in range(p["n_layers"]):
            rnn = model.get_submodule(f"rnns.{i}")
            structures[f"rnn{i}.w_ih"] = _unwrap(rnn.w_ih[0]).weight_structure()
            structures[f"rnn{i}.w_hh"] = _unwrap(rnn.w_hh[0]).weight_structure()
        for j in range(p["n_dense"]):
            structures[f"dense{j}"] = _unwrap(model.get_submodule(f"head.dense{j}")).weight_structure()
        b = NetworkBuilder(self.name, self.hw_input_shape(), bits=self.activation_bits(p))
        return b.build([self.describe(b, p, structures)])


def _unwrap(layer: nn.Module) -> nn.Module:
    """The compressed layer itself: QAT wraps every gate matrix in a QuantizedLayer."""
    return layer.module if isinstance(layer, QuantizedLayer) else layer
