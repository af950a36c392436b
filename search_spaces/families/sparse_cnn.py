"""`sparse_cnn`: SpArSe-like image CNNs searched together with per-layer pruning and compression.

Fedorov et al., "SpArSe: Sparse Architecture Search for CNNs on Resource-Constrained
Microcontrollers", arXiv 1905.12107: 1-4 conv blocks (channels, kernel, downsampling,
optional depthwise-separable), 0-2 dense layers, a pruning density per conv layer. We
add a compression method and level per dense layer, and int8 as a choice.

One deliberate difference: the conv stack ends in global average pooling, not SpArSe's
flatten. With flatten, a deeper network can have a smaller classifier, so no single
point is cheapest in every cost and a job's budgets could not be checked against "the
smallest configuration"; with pooling every cost grows with every parameter (and it is
what MCU models such as MicroNets' and DS-CNN do).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from torch import nn

from hw_models import NetworkBuilder, Sparse
from search_spaces.compression import MaskedConv2d
from search_spaces.families._base import (
    BaseSearchSpace,
    OptionSpec,
    Params,
    between,
    int_range,
    register_search_space,
    subset_of,
)
from search_spaces.families._knobs import MAX_LEVEL, METHODS, make_compressed_linear, structure
from search_spaces.families._padding import same_conv_padding, same_output_size

DOWNSAMPLE = ("none", "stride", "max", "avg")
MIN_DENSITY = 0.05


@register_search_space
class SparseCNNSpace(BaseSearchSpace):
    """SpArSe-like CNN: conv blocks -> global average pool -> dense layers -> classifier.

    Parameters (names are stable; blocks beyond `n_conv` / `n_dense` are ignored):
        n_conv, conv{i}_channels, conv{i}_kernel (3 or 5), conv{i}_downsample
        (none | stride | max | avg: halves H and W), conv{i}_separable (depthwise 3x3 or 5x5
        then a pruned 1x1), conv{i}_density (pruning density of the block's main conv),
        n_dense, dense{j}_units, dense{j}_method (compression method), dense{j}_level
        (compression factor 2^level), quantization (int8 | float32).
    Every conv is followed by batch norm (folded at deployment) and ReLU.
    """

    name = "sparse_cnn"
    option_specs = (
        OptionSpec("max_conv_blocks", 4, "maximum number of conv blocks (1-4)", between(1, 4)),
        OptionSpec("channels", [4, 64], "[low, high] output channels of a conv block, in steps of 4", int_range),
        OptionSpec("max_dense_layers", 2, "maximum hidden dense layers (0-2)", between(0, 2)),
        OptionSpec("dense_units", [16, 256], "[low, high] units of a hidden dense layer", int_range),
        OptionSpec("methods", list(METHODS), "compression methods allowed for dense layers", subset_of(METHODS)),
        OptionSpec("quantization", ["int8"], "deployment precisions searched", subset_of(("int8", "float32"))),
    )

    def distributions(self) -> dict[str, BaseDistribution]:
        o = self.options
        lo, hi = o["channels"]
        d: dict[str, BaseDistribution] = {"n_conv": IntDistribution(1, o["max_conv_blocks"])}
        for i in range(o["max_conv_blocks"]):
            d[f"conv{i}_channels"] = IntDistribution(max(4, lo - lo % 4), max(4, hi - hi % 4), step=4)
            d[f"conv{i}_kernel"] = CategoricalDistribution((3, 5))
            d[f"conv{i}_downsample"] = CategoricalDistribution(DOWNSAMPLE)
            d[f"conv{i}_separable"] = CategoricalDistribution((False, True))
            d[f"conv{i}_density"] = FloatDistribution(MIN_DENSITY, 1.0)
        d["n_dense"] = IntDistribution(0, o["max_dense_layers"])
        ulo, uhi = o["dense_units"]
        for j in range(o["max_dense_layers"]):
            d[f"dense{j}_units"] = IntDistribution(ulo, uhi, log=True)
            d[f"dense{j}_method"] = CategoricalDistribution(tuple(o["methods"]))
            d[f"dense{j}_level"] = IntDistribution(1, MAX_LEVEL)
        d["quantization"] = CategoricalDistribution(tuple(o["quantization"]))
        return d

    def smallest(self) -> dict[str, Any]:
        o = self.options
        quantization = "int8" if "int8" in o["quantization"] else "float32"
        p: dict[str, Any] = {"n_conv": 1, "n_dense": 0, "quantization": quantization}
        lo = max(4, o["channels"][0] - o["channels"][0] % 4)
        for i in range(o["max_conv_blocks"]):
            p |= {f"conv{i}_channels": lo, f"conv{i}_kernel": 3, f"conv{i}_downsample": "stride",
                  f"conv{i}_separable": False, f"conv{i}_density": MIN_DENSITY}
        cheapest = "kronecker" if "kronecker" in o["methods"] else o["methods"][0]
        for j in range(o["max_dense_layers"]):
            p |= {f"dense{j}_units": o["dense_units"][0], f"dense{j}_method": cheapest, f"dense{j}_level": MAX_LEVEL}
        return p

    def topology_key(self, params: Params) -> tuple[Any, ...]:
        """Depths, precision, and per active conv block its pooling and separable layout.

        Dense layers' methods are not in it: candidates that differ in them share a pass,
        each dense weight a `Mixed` of their structures.
        """
        key: list[Any] = [params["n_conv"], params["n_dense"], params["quantization"]]
        for i in range(params["n_conv"]):
            down = params[f"conv{i}_downsample"]
            key += [down if down in ("max", "avg") else "conv", params[f"conv{i}_separable"]]
        return tuple(key)

    def invalid_reason(self, params: Params) -> str | None:
        """A 2x2 pooling of a map smaller than 2x2 has no output: such a point cannot be built."""
        _, h, w = self.input_shape
        for i in range(params["n_conv"]):
            down = params[f"conv{i}_downsample"]
            stride = _stride(down)
            h, w = same_output_size(h, stride), same_output_size(w, stride)
            if down in ("max", "avg"):
                if min(h, w) < 2:
                    return (
                        f"conv{i}_downsample: {down} pooling of a {h}x{w} map has no output "
                        f"(input {self.input_shape[1]}x{self.input_shape[2]}); use fewer downsampling layers"
                    )
                h, w = h // 2, w // 2
        return None

    # --- torch ------------------------------------------------------------------------

    def build(self, params: Params) -> nn.Module:
        p = self.check_params(params)
        c_in, h, w = self.input_shape
        layers: dict[str, nn.Module] = {}
        for i in range(p["n_conv"]):
            c_out, k, down = p[f"conv{i}_channels"], p[f"conv{i}_kernel"], p[f"conv{i}_downsample"]
            stride = _stride(down)
            density = p[f"conv{i}_density"]
            pad, padding = same_conv_padding((h, w), k, stride)
            spatial = f"conv{i}_dw" if p[f"conv{i}_separable"] else f"conv{i}"
            if pad is not None:
                layers[f"{spatial}_pad"] = pad
            if p[f"conv{i}_separable"]:
                layers[f"conv{i}_dw"] = nn.Conv2d(c_in, c_in, k, stride, padding, groups=c_in, bias=False)
                layers[f"conv{i}_dw_bn"] = nn.BatchNorm2d(c_in)
                layers[f"conv{i}_dw_relu"] = nn.ReLU()
                layers[f"conv{i}"] = MaskedConv2d(c_in, c_out, 1, bias=False, density=density)
            else:
                layers[f"conv{i}"] = MaskedConv2d(c_in, c_out, k, stride, padding, bias=False, density=density)
            layers[f"conv{i}_bn"] = nn.BatchNorm2d(c_out)
            layers[f"conv{i}_relu"] = nn.ReLU()
            h, w = same_output_size(h, stride), same_output_size(w, stride)
            if down in ("max", "avg"):
                layers[f"conv{i}_pool"] = nn.MaxPool2d(2) if down == "max" else nn.AvgPool2d(2)
                h, w = h // 2, w // 2
            c_in = c_out
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        features = c_in
        for j in range(p["n_dense"]):
            units = p[f"dense{j}_units"]
            layers[f"dense{j}"] = make_compressed_linear(p[f"dense{j}_method"], features, units, p[f"dense{j}_level"])
            layers[f"dense{j}_relu"] = nn.ReLU()
            features = units
        layers["classifier"] = nn.Linear(features, self.num_classes)
        model = nn.Sequential(OrderedDict(layers))
        return self.quantize_if_int8(model, p)

    # --- hw_models --------------------------------------------------------------------

    def describe(self, b: NetworkBuilder, params: Params, structures: Mapping[str, Any] | None = None) -> str:
        p = params
        bits = self.activation_bits(p)
        x = b.input
        for i in range(p["n_conv"]):
            c_out, k, down = p[f"conv{i}_channels"], p[f"conv{i}_kernel"], p[f"conv{i}_downsample"]
            s = (structures or {}).get(f"conv{i}", Sparse(p[f"conv{i}_density"], "csr"))
            stride = np.where(np.asarray(down) == "stride", 2, 1) if isinstance(down, np.ndarray) else _stride(down)
            if p[f"conv{i}_separable"]:
                x = b.depthwise_conv2d(x, k, stride=stride, activation="relu", weight_bits=bits, name=f"conv{i}_dw")
                x = b.conv2d(x, c_out, 1, activation="relu", weight_bits=bits, structure=s, name=f"conv{i}")
            else:
                x = b.conv2d(x, c_out, k, stride=stride, activation="relu", weight_bits=bits, structure=s,
                             name=f"conv{i}")
            pool = down if isinstance(down, str) else str(down[0])
            if pool == "max":
                x = b.max_pool2d(x, 2, name=f"conv{i}_pool")
            elif pool == "avg":
                x = b.avg_pool2d(x, 2, name=f"conv{i}_pool")
        x = b.global_avg_pool(x, name="pool")
        for j in range(p["n_dense"]):
            features = b.shape(x)[-1]
            units = p[f"dense{j}_units"]
            planned = structure(p[f"dense{j}_method"], units, features, p[f"dense{j}_level"])
            s = (structures or {}).get(f"dense{j}", planned)
            x = b.linear(x, units, activation="relu", weight_bits=bits, structure=s, name=f"dense{j}")
        return b.linear(x, self.num_classes, weight_bits=bits, name="classifier")

    def network_from_model(self, model: nn.Module, params: Params) -> Any:
        """The network with every pruned or compressed layer's real structure."""
        p = self.check_params(params)
        names = [f"conv{i}" for i in range(p["n_conv"])] + [f"dense{j}" for j in range(p["n_dense"])]
        # QAT wraps layers (QuantizedLayer.module is the layer itself).
        layers = {n: getattr(model.get_submodule(n), "module", model.get_submodule(n)) for n in names}
        structures = {n: layer.weight_structure() for n, layer in layers.items()}
        b = NetworkBuilder(self.name, self.hw_input_shape(), bits=self.activation_bits(p))
        return b.build([self.describe(b, p, structures)])


def _stride(down: str) -> int:
    return 2 if down == "stride" else 1
