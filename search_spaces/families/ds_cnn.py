"""`ds_cnn`: depthwise-separable CNNs for keyword spotting, searched with per-layer compression.

Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers", arXiv 1711.07128
(DS-CNN: a strided first conv over the MFCC map, depthwise-separable blocks, average
pooling, a linear classifier), the MLPerf Tiny KWS benchmark built on its DS-CNN-S,
and Banbury et al., "MicroNets", arXiv 2010.11267, who search DS-CNN depth and widths
for MCUs. We search the first conv's width, kernel and stride, the depth, each
block's width, depthwise kernel, stride and an optional skip connection, and each
pointwise conv's compression method and level; int8 is a choice.

Widths are multiples of 4: CMSIS-NN's int8 kernels work on four channels per 32-bit
load, and its fast q7 convolutions (arm_convolve_HWC_q7_fast) require input channels in
multiples of 4 (Lai et al., "CMSIS-NN", arXiv 1801.06601). Every conv is followed by
batch norm (folded at deployment, so its bias is costed) and ReLU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from hw_models import NetworkBuilder, NetworkSpec
from search_spaces.compression import CompressedConv1x1, MaskedConv2d
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
from search_spaces.families._padding import same_conv_padding, same_output_size, same_padding

DW_KERNELS = (3, 5)
STEM_KERNELS = ("10x4", "5x3", "3x3")
# Flash and MACs do not depend on the device (latency and energy do), so any catalogue
# device ranks the pointwise methods for `smallest`; TFLM is the runtime whose flash counts.
_FLASH_AND_MACS_DEVICE = "stm32f446re"


def _kernel_strings(value: Any) -> str | None:
    ok = isinstance(value, list | tuple) and value and len(set(value)) == len(value)
    if ok:
        for v in value:
            parts = v.split("x") if isinstance(v, str) else []
            ok = ok and len(parts) == 2 and all(p.isdigit() and int(p) >= 1 for p in parts)
    if not ok:
        return f"expected a non-empty list of distinct 'HxW' kernel sizes such as '10x4', got {value!r}"
    return None


def _kernel_hw(kernel: Any) -> tuple[Any, Any]:
    """('10x4' or an array of such strings) -> (height, width), ints or int arrays."""
    if isinstance(kernel, str):
        h, w = kernel.split("x")
        return int(h), int(w)
    pairs = np.asarray([k.split("x") for k in np.asarray(kernel).ravel()], dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def skip_effective(skip: Any, stride: Any, in_channels: Any, out_channels: Any) -> Any:
    """Whether a block's skip connection is built: requested, stride 1 and the same width.

    A block that changes the shape has no identity to add, and a projection would be a
    new layer the point did not ask for, so the add is dropped (the flag stays in the
    parameters: names are unconditional). Elementwise on arrays.
    """
    return np.asarray(skip, dtype=bool) & (np.asarray(stride) == 1) & (np.asarray(in_channels) == out_channels)


class SeparableResidualBlock(nn.Module):
    """A depthwise-separable block plus its input: x + relu(bn(pw(relu(bn(dw(x)))))).

    Its children carry the same names as the plain block's nn.Sequential (dw, dw_bn,
    dw_relu, pw, pw_bn, pw_relu), so every block's layers are found the same way.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.children():
            y = layer(y)
        return x + y


@register_search_space
class DSCNNSpace(BaseSearchSpace):
    """DS-CNN: first conv -> depthwise-separable blocks -> global average pool -> classifier.

    Parameters (names are stable; blocks beyond `n_blocks` are ignored):
        stem_channels, stem_kernel ('HxW'), stem_stride_h, stem_stride_w (1 or 2),
        n_blocks, block{i}_channels, block{i}_dw_kernel (3 or 5), block{i}_stride (1 or
        2, of the depthwise conv, both axes), block{i}_skip (identity add, built only
        when the block keeps the shape), block{i}_pw_method (compression method of the
        pointwise conv), block{i}_pw_level (compression factor 2^level; for
        magnitude_pruning the density is 1 / 2^level), quantization (int8 | float32).

    The stem's kernel may be even (10x4); TFLite SAME padding is then asymmetric, and
    the torch model pads explicitly so that its shapes equal the costed network's.
    """

    name = "ds_cnn"
    option_specs = (
        OptionSpec("max_blocks", 6, "maximum number of depthwise-separable blocks (1-8)", between(1, 8)),
        OptionSpec(
            "channels", [4, 128], "[low, high] channels of the first conv and of a block, in steps of 4", int_range
        ),
        OptionSpec("stem_kernels", list(STEM_KERNELS), "first-conv kernel sizes searched, as 'HxW'", _kernel_strings),
        OptionSpec("methods", list(METHODS), "compression methods allowed for pointwise convs", subset_of(METHODS)),
        OptionSpec("quantization", ["int8"], "deployment precisions searched", subset_of(("int8", "float32"))),
    )

    def __init__(self, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(input_shape, num_classes, options)
        if len(self.input_shape) != 3:
            raise InvalidSearchSpaceError(
                f"input_shape: ds_cnn needs (channels, height, width), e.g. (1, 49, 10) MFCCs; got {list(input_shape)}"
            )

    def _channel_range(self) -> tuple[int, int]:
        lo, hi = self.options["channels"]
        return max(4, lo - lo % 4), max(4, hi - hi % 4)

    def distributions(self) -> dict[str, BaseDistribution]:
        o = self.options
        lo, hi = self._channel_range()
        d: dict[str, BaseDistribution] = {
            "stem_channels": IntDistribution(lo, hi, step=4),
            "stem_kernel": CategoricalDistribution(tuple(o["stem_kernels"])),
            "stem_stride_h": IntDistribution(1, 2),
            "stem_stride_w": IntDistribution(1, 2),
            "n_blocks": IntDistribution(1, o["max_blocks"]),
        }
        for i in range(o["max_blocks"]):
            d[f"block{i}_channels"] = IntDistribution(lo, hi, step=4)
            d[f"block{i}_dw_kernel"] = CategoricalDistribution(DW_KERNELS)
            d[f"block{i}_stride"] = IntDistribution(1, 2)
            d[f"block{i}_skip"] = CategoricalDistribution((False, True))
            d[f"block{i}_pw_method"] = CategoricalDistribution(tuple(o["methods"]))
            d[f"block{i}_pw_level"] = IntDistribution(1, MAX_LEVEL)
        d["quantization"] = CategoricalDistribution(tuple(o["quantization"]))
        return d

    def smallest(self) -> dict[str, Any]:
        """Every width, kernel, stride and depth at its cheapest; the pointwise method costed.

        Which compression method is cheapest at the smallest widths depends on them (at
        4 channels a pruned 1x1 conv beats a rank-1 one in flash and MACs; at 16 the
        rank-1 one is smaller in flash, the pruned one in MACs), so each allowed method
        is costed at the maximum level and the least flash, then MACs, wins.
        """
        o = self.options
        lo, _ = self._channel_range()
        area = {k: np.prod(_kernel_hw(k)) for k in o["stem_kernels"]}
        base: dict[str, Any] = {
            "stem_channels": lo,
            "stem_kernel": min(o["stem_kernels"], key=area.__getitem__),
            "stem_stride_h": 2,
            "stem_stride_w": 2,
            "n_blocks": 1,
            "quantization": "int8" if "int8" in o["quantization"] else "float32",
        }
        for i in range(o["max_blocks"]):
            base |= {
                f"block{i}_channels": lo,
                f"block{i}_dw_kernel": 3,
                f"block{i}_stride": 2,
                f"block{i}_skip": False,
                f"block{i}_pw_level": MAX_LEVEL,
            }
        candidates = [base | {f"block{i}_pw_method": m for i in range(o["max_blocks"])} for m in o["methods"]]
        report = self.cost_batch(candidates, _FLASH_AND_MACS_DEVICE)
        best = min(range(len(candidates)), key=lambda j: (report.flash_bytes[j], report.macs[j]))
        return candidates[best]

    def topology_key(self, params: Params) -> tuple[Any, ...]:
        """Depth, precision, and per active block whether it adds its input.

        Pointwise methods are not in it: candidates that differ in them share a pass, each
        pointwise weight a `Mixed` of their structures.
        """
        key: list[Any] = [params["n_blocks"], params["quantization"]]
        c_in = params["stem_channels"]
        for i in range(params["n_blocks"]):
            c_out = params[f"block{i}_channels"]
            skip = skip_effective(params[f"block{i}_skip"], params[f"block{i}_stride"], c_in, c_out)
            key.append(bool(skip))
            c_in = c_out
        return tuple(key)

    # --- torch ------------------------------------------------------------------------

    def build(self, params: Params) -> nn.Module:
        p = self.check_params(params)
        c_in, h, w = self.input_shape
        c = p["stem_channels"]
        kh, kw = _kernel_hw(p["stem_kernel"])
        sh, sw = p["stem_stride_h"], p["stem_stride_w"]
        top, bottom = same_padding(h, kh, sh)
        left, right = same_padding(w, kw, sw)
        layers: dict[str, nn.Module] = {
            "stem_pad": nn.ZeroPad2d((left, right, top, bottom)),
            "stem": nn.Conv2d(c_in, c, (kh, kw), (sh, sw), bias=False),
            "stem_bn": nn.BatchNorm2d(c),
            "stem_relu": nn.ReLU(),
        }
        c_in = c
        h, w = same_output_size(h, sh), same_output_size(w, sw)
        for i in range(p["n_blocks"]):
            c_out, k, s = p[f"block{i}_channels"], p[f"block{i}_dw_kernel"], p[f"block{i}_stride"]
            pad, padding = same_conv_padding((h, w), k, s)
            block = OrderedDict(
                [("dw_pad", pad)] if pad is not None else [],
                dw=nn.Conv2d(c_in, c_in, k, s, padding, groups=c_in, bias=False),
                dw_bn=nn.BatchNorm2d(c_in),
                dw_relu=nn.ReLU(),
                pw=_pointwise(p[f"block{i}_pw_method"], c_in, c_out, p[f"block{i}_pw_level"]),
                pw_bn=nn.BatchNorm2d(c_out),
                pw_relu=nn.ReLU(),
            )
            residual = bool(skip_effective(p[f"block{i}_skip"], s, c_in, c_out))
            layers[f"block{i}"] = SeparableResidualBlock(block) if residual else nn.Sequential(block)
            c_in = c_out
            h, w = same_output_size(h, s), same_output_size(w, s)
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["classifier"] = nn.Linear(c_in, self.num_classes)
        model = nn.Sequential(OrderedDict(layers))
        return self.quantize_if_int8(model, p)

    # --- hw_models --------------------------------------------------------------------

    def describe(self, b: NetworkBuilder, params: Params, structures: Mapping[str, Any] | None = None) -> str:
        """Write the network; `structures` maps `block{i}_pw` to a real (trained) structure."""
        p = params
        bits = self.activation_bits(p)
        c_in = p["stem_channels"]
        stride = (p["stem_stride_h"], p["stem_stride_w"])
        x = b.conv2d(
            b.input, c_in, _kernel_hw(p["stem_kernel"]), stride=stride, activation="relu", weight_bits=bits, name="stem"
        )
        for i in range(p["n_blocks"]):
            c_out, s, method = p[f"block{i}_channels"], p[f"block{i}_stride"], p[f"block{i}_pw_method"]
            skip = skip_effective(p[f"block{i}_skip"], s, c_in, c_out)
            if skip.any() != skip.all():
                raise InvalidSearchSpaceError(
                    f"params.block{i}_skip: candidates costed together disagree on whether block {i} adds "
                    "its input; group them by topology_key"
                )
            planned = structure(method, c_out, c_in, p[f"block{i}_pw_level"])
            pw_structure = (structures or {}).get(f"block{i}_pw", planned)
            y = b.depthwise_conv2d(
                x, p[f"block{i}_dw_kernel"], stride=s, activation="relu", weight_bits=bits, name=f"block{i}_dw"
            )
            y = b.conv2d(y, c_out, 1, activation="relu", weight_bits=bits, structure=pw_structure, name=f"block{i}_pw")
            x = b.add_tensors([x, y], name=f"block{i}_add") if skip.all() else y
            c_in = c_out
        x = b.global_avg_pool(x, name="pool")
        return b.linear(x, self.num_classes, weight_bits=bits, name="classifier")

    def network_from_model(self, model: nn.Module, params: Params) -> NetworkSpec:
        """The network with every compressed pointwise conv's real structure (actual density)."""
        p = self.check_params(params)
        structures = {}
        for i in range(p["n_blocks"]):
            if p[f"block{i}_pw_method"] == "dense":
                continue
            layer = model.get_submodule(f"block{i}.pw")
            # QAT wraps the masked conv, or the linear map inside a CompressedConv1x1; the
            # wrapper forwards `weight_structure` to the layer it wraps.
            structures[f"block{i}_pw"] = getattr(layer, "linear", layer).weight_structure()
        b = NetworkBuilder(self.name, self.hw_input_shape(), bits=self.activation_bits(p))
        return b.build([self.describe(b, p, structures)])


def _pointwise(method: str, c_in: int, c_out: int, level: int) -> nn.Module:
    """The 1x1 conv of a block: plain, magnitude-masked, or any compressed linear map.

    Pruning is a conv with a mask (as sparse_cnn's convs), so the deployed layer stays
    an ordinary conv; the factorised methods apply their linear map per pixel.
    """
    if method == "dense":
        return nn.Conv2d(c_in, c_out, 1, bias=False)
    if method == "magnitude_pruning":
        return MaskedConv2d(c_in, c_out, 1, bias=False, density=knobs(method, c_out, c_in, level)["density"])
    return CompressedConv1x1(make_compressed_linear(method, c_in, c_out, level, bias=False))
