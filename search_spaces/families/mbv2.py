"""`mbv2`: MobileNetV2-like image networks, searched with per-stage compression of the 1x1 convs.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv
1801.04381: a 3x3 stem conv, then stages of inverted residual blocks (1x1 expansion,
depthwise k x k, linear 1x1 projection; an add when the block keeps its shape), global
average pooling and a classifier. For microcontrollers, MCUNet (Lin et al., arXiv
2007.10319) searches the width multiplier, input resolution, and per block the
expansion ratio, kernel and depth; MicroNets (Banbury et al., arXiv 2010.11267) search
width and depth. We search those, plus a compression method and level for each stage's
1x1 convs (the bulk of the weights), and int8 as a choice.

The stage plan is rows 2-6 of MobileNetV2's Table 2 (16, 24, 32, 64, 96 channels,
strides 1, 2, 2, 2, 1) after its 32-channel stem. Two deliberate differences:

- No final 1x1 conv to 1280 channels: on a small classification task it would be most
  of the model's flash, and the classifier reads the pooled last stage directly.
- The stem conv has stride 1 for datasets smaller than 64 pixels a side (CIFAR-sized
  images, as CIFAR ports of MobileNetV2 do) and stride 2 from 64 up, as in the original
  ImageNet network. It depends on the dataset, not on the searched resolution, so the
  resolution never changes the graph.

Input resolution: the model resizes its input (bilinear) to the searched resolution
first. The deployed network's input is the resized image (the MCU captures at that
resolution), so the resize is not costed and `to_network`'s input is the resized shape.
The resolution stays a numeric parameter: candidates of several resolutions are costed
in one vectorised pass (NetworkBuilder takes an input shape of arrays).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from torch import nn

from hw_models import NetworkBuilder, NetworkSpec
from search_spaces.compression import CompressedConv1x1
from search_spaces.families._base import (
    BaseSearchSpace,
    InvalidSearchSpaceError,
    OptionSpec,
    Params,
    register_search_space,
)
from search_spaces.families._knobs import MAX_LEVEL, METHODS, make_compressed_linear, structure
from search_spaces.families._padding import same_conv_padding, same_output_size

STEM_CHANNELS = 32
# (base output channels, stride of the stage's first block): MobileNetV2 Table 2, rows 2-6.
STAGES = ((16, 1), (24, 2), (32, 2), (64, 2), (96, 1))
CHANNEL_DIVISOR = 4  # CMSIS-NN's int8 convolutions take their fast paths at multiples of 4 (arXiv 1801.06601)
STEM_STRIDE2_MIN_SIDE = 64
EXPANSIONS = (1, 3, 6)  # 1 and 6: MobileNetV2 Table 2; 3: in MCUNet's space (arXiv 2007.10319)
KERNELS = (3, 5, 7)
# Flash and MACs do not depend on the device (latency and energy do), so any catalogue
# device ranks the 1x1-conv methods for `smallest`; TFLM is the runtime whose flash counts.
_FLASH_AND_MACS_DEVICE = "stm32f446re"


def _subset_of(valid: tuple[Any, ...]) -> Any:
    def check(value: Any) -> str | None:
        ok = isinstance(value, list | tuple) and bool(value)
        ok = ok and all(v in valid and type(v) is type(valid[0]) for v in value) and len(set(value)) == len(value)
        if not ok:
            return f"expected a non-empty list of distinct values drawn from {list(valid)}, got {value!r}"
        return None

    return check


def _floats_in(low: float, high: float) -> Any:
    def check(value: Any) -> str | None:
        ok = isinstance(value, list | tuple) and bool(value)
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and low < v <= high for v in value)
        if not ok or len(set(value)) != len(value):
            return f"expected a non-empty list of distinct numbers in ({low}, {high}], got {value!r}"
        return None

    return check


def _between(low: int, high: int) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"expected an integer in [{low}, {high}], got {value!r}"
        return None

    return check


def channels(base: int, width: Any) -> Any:
    """`base` x `width` rounded to a multiple of 4, at least 4, at most 10% below the product.

    The rounding of MobileNetV2's reference implementation (`_make_divisible` in the
    TensorFlow models repository, the source of arXiv 1801.04381's checkpoints). `width`
    may be a float or an array of floats (one per candidate).
    """
    v = base * np.asarray(width, dtype=np.float64)
    c = np.maximum(CHANNEL_DIVISOR, np.floor(v / CHANNEL_DIVISOR + 0.5).astype(np.int64) * CHANNEL_DIVISOR)
    c = np.where(c < 0.9 * v, c + CHANNEL_DIVISOR, c)
    return int(c) if c.ndim == 0 else c


@register_search_space
class MobileNetV2Space(BaseSearchSpace):
    """MobileNetV2-like CNN: stem -> stages of inverted residual blocks -> global average pool -> classifier.

    Parameters (names are stable; blocks at or beyond a stage's depth are absent):
        width_mult (multiplier of every conv's channels, rounded by `channels`),
        resolution (height in pixels the input is resized to; the width keeps the
        aspect ratio), stage{s}_depth (blocks in stage s; stage 0 has at least one),
        stage{s}_expansion (1, 3 or 6: the hidden channels are expansion x the block's
        input channels; 1 drops the expand conv), stage{s}_kernel (depthwise kernel),
        stage{s}_method and stage{s}_level (compression method and level 2^level of
        the stage's expand and project 1x1 convs), quantization (int8 | float32).

    A block is [1x1 expand + BN + ReLU6] + depthwise k x k (stride on the stage's first
    block) + BN + ReLU6 + 1x1 project + BN (the linear bottleneck), plus the block's
    input when it has stride 1 and equal input and output channels. BN is folded at
    deployment, so each conv is costed with a bias.
    """

    name = "mbv2"
    option_specs = (
        OptionSpec(
            "width_multipliers",
            [0.25, 0.35, 0.5, 0.75, 1.0],
            "channel width multipliers searched",
            _floats_in(0.0, 2.0),
        ),
        OptionSpec(
            "resolution_scales",
            [0.5, 0.75, 1.0],
            "input resolutions searched, as fractions of the dataset's image size",
            _floats_in(0.0, 1.0),
        ),
        OptionSpec("max_depth", 3, "maximum inverted residual blocks per stage (1-4)", _between(1, 4)),
        OptionSpec("expansions", list(EXPANSIONS), "expansion ratios searched", _subset_of(EXPANSIONS)),
        OptionSpec("kernels", [3, 5], "depthwise kernel sizes searched", _subset_of(KERNELS)),
        OptionSpec("methods", list(METHODS), "compression methods allowed for the 1x1 convs", _subset_of(METHODS)),
        OptionSpec("quantization", ["int8"], "deployment precisions searched", _subset_of(("int8", "float32"))),
    )

    def __init__(self, input_shape: Sequence[int], num_classes: int, options: Mapping[str, Any] | None = None):
        super().__init__(input_shape, num_classes, options)
        if len(self.input_shape) != 3:
            raise InvalidSearchSpaceError(
                f"input_shape: mbv2 needs an image (channels, height, width), got {list(self.input_shape)}"
            )

    # --- the space ------------------------------------------------------------------

    def resolutions(self) -> tuple[int, ...]:
        """The searched input heights in pixels, ascending."""
        h = self.input_shape[1]
        return tuple(sorted({max(1, int(np.floor(h * s + 0.5))) for s in self.options["resolution_scales"]}))

    def distributions(self) -> dict[str, BaseDistribution]:
        o = self.options
        d: dict[str, BaseDistribution] = {
            "width_mult": CategoricalDistribution(tuple(sorted(float(w) for w in o["width_multipliers"]))),
            "resolution": CategoricalDistribution(self.resolutions()),
        }
        for s in range(len(STAGES)):
            d[f"stage{s}_depth"] = IntDistribution(1 if s == 0 else 0, o["max_depth"])
            d[f"stage{s}_expansion"] = CategoricalDistribution(tuple(sorted(o["expansions"])))
            d[f"stage{s}_kernel"] = CategoricalDistribution(tuple(sorted(o["kernels"])))
            d[f"stage{s}_method"] = CategoricalDistribution(tuple(o["methods"]))
            d[f"stage{s}_level"] = IntDistribution(1, MAX_LEVEL)
        d["quantization"] = CategoricalDistribution(tuple(o["quantization"]))
        return d

    def smallest(self) -> dict[str, Any]:
        """One block of the narrowest width at the lowest resolution; the 1x1-conv method costed.

        Every searched choice at its cheapest (depth, expansion, kernel, level 5). Which
        method is cheapest for the remaining project conv depends on its size (at the
        default widths a pruned one has the least flash and MACs; at width 0.5 a rank-1
        one has less flash, the pruned one fewer MACs), so each allowed method is costed
        and the least flash, then MACs, wins. `minimum_costs()` bounds every point
        regardless: its corner candidates include every method.
        """
        o = self.options
        base: dict[str, Any] = {
            "width_mult": min(float(w) for w in o["width_multipliers"]),
            "resolution": self.resolutions()[0],
            "quantization": "int8" if "int8" in o["quantization"] else "float32",
        }
        for s in range(len(STAGES)):
            base |= {
                f"stage{s}_depth": 1 if s == 0 else 0,
                f"stage{s}_expansion": min(o["expansions"]),
                f"stage{s}_kernel": min(o["kernels"]),
                f"stage{s}_level": MAX_LEVEL,
            }
        candidates = [base | {f"stage{s}_method": m for s in range(len(STAGES))} for m in o["methods"]]
        report = self.cost_batch(candidates, _FLASH_AND_MACS_DEVICE)
        best = min(range(len(candidates)), key=lambda j: (report.flash_bytes[j], report.macs[j]))
        return candidates[best]

    def topology_key(self, params: Params) -> tuple[Any, ...]:
        """Precision, and per present block whether it expands and whether it adds.

        Stage methods are not in it: candidates that differ in them share a pass, each
        1x1 weight a `Mixed` of their structures.
        """
        key: list[Any] = [params["quantization"]]
        for blk in _blocks(params):
            key += [(blk.stage, blk.index), blk.expand, blk.residual]
        return tuple(key)

    def network_input_shape(self, params: Params) -> tuple[Any, ...]:
        """The resized image the network sees: resolution may be an array in a batch."""
        return self.hw_input_shape(params["resolution"])

    def hw_input_shape(self, resolution: Any = None) -> tuple[Any, ...]:
        """The network's (H, W, C) input at `resolution` (height; default the dataset's).

        `resolution` may be an array (one entry per candidate); so is the result's H, W.
        """
        c, h, w = self.input_shape
        if resolution is None:
            return (h, w, c)
        r = np.asarray(resolution)
        width = np.maximum(1, np.floor(r * w / h + 0.5).astype(np.int64))
        return (int(r), int(width), c) if r.ndim == 0 else (r, width, c)

    # --- torch ------------------------------------------------------------------------

    def build(self, params: Params) -> nn.Module:
        p = self.check_params(params)
        c_stem = channels(STEM_CHANNELS, p["width_mult"])
        height, width, _ = self.hw_input_shape(p["resolution"])
        layers: dict[str, nn.Module] = {"resize": Resize((height, width))}
        stem_stride = self._stem_stride()
        pad, padding = same_conv_padding((height, width), 3, stem_stride)
        if pad is not None:
            layers["stem_pad"] = pad
        layers |= {
            "stem": nn.Conv2d(self.input_shape[0], c_stem, 3, stem_stride, padding, bias=False),
            "stem_bn": nn.BatchNorm2d(c_stem),
            "stem_relu": nn.ReLU6(),
        }
        size = (same_output_size(height, stem_stride), same_output_size(width, stem_stride))
        c_last = c_stem
        for blk in _blocks(p):
            block = InvertedResidual(blk, p[f"stage{blk.stage}_method"], p[f"stage{blk.stage}_level"], size)
            layers[blk.name] = block
            size = (same_output_size(size[0], blk.stride), same_output_size(size[1], blk.stride))
            c_last = blk.c_out
        layers["pool"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["classifier"] = nn.Linear(c_last, self.num_classes)
        model = nn.Sequential(OrderedDict(layers))
        return self.quantize_if_int8(model, p)

    # --- hw_models --------------------------------------------------------------------

    def describe(self, b: NetworkBuilder, params: Params, structures: Mapping[str, Any] | None = None) -> str:
        """Write the network into `b`, whose input is already the resized image."""
        p = params
        bits = self.activation_bits(p)
        x = b.conv2d(
            b.input,
            channels(STEM_CHANNELS, p["width_mult"]),
            3,
            stride=self._stem_stride(),
            activation="relu6",
            weight_bits=bits,
            name="stem",
        )
        for blk in _blocks(p):
            method, level = p[f"stage{blk.stage}_method"], p[f"stage{blk.stage}_level"]
            y = x
            if blk.expand:
                planned = structure(method, blk.hidden, blk.c_in, level)
                s = (structures or {}).get(f"{blk.name}_expand", planned)
                y = b.conv2d(
                    y, blk.hidden, 1, activation="relu6", weight_bits=bits, structure=s, name=f"{blk.name}_expand"
                )
            y = b.depthwise_conv2d(
                y, blk.kernel, stride=blk.stride, activation="relu6", weight_bits=bits, name=f"{blk.name}_dw"
            )
            planned = structure(method, blk.c_out, blk.hidden, level)
            s = (structures or {}).get(f"{blk.name}_project", planned)
            y = b.conv2d(y, blk.c_out, 1, weight_bits=bits, structure=s, name=f"{blk.name}_project")
            x = b.add_tensors([x, y], name=f"{blk.name}_add") if blk.residual else y
        x = b.global_avg_pool(x, name="pool")
        return b.linear(x, self.num_classes, weight_bits=bits, name="classifier")

    def network_from_model(self, model: nn.Module, params: Params) -> NetworkSpec:
        """The network with every 1x1 conv's real structure (actual pruning density)."""
        p = self.check_params(params)
        structures = {}
        for blk in _blocks(p):
            for part in ("expand", "project") if blk.expand else ("project",):
                linear = model.get_submodule(f"{blk.name}.{part}").linear
                # QAT wraps the linear map inside each CompressedConv1x1 (QuantizedLayer.module).
                structures[f"{blk.name}_{part}"] = getattr(linear, "module", linear).weight_structure()
        b = NetworkBuilder(self.name, self.network_input_shape(p), bits=self.activation_bits(p))
        return b.build([self.describe(b, p, structures)])

    def _stem_stride(self) -> int:
        return 2 if min(self.input_shape[1:]) >= STEM_STRIDE2_MIN_SIDE else 1


class _Block:
    """One present inverted residual block; channel counts may be arrays (one per candidate)."""

    def __init__(self, stage: int, index: int, c_in: Any, c_out: Any, expansion: Any, kernel: Any) -> None:
        self.stage, self.index = stage, index
        self.name = f"s{stage}b{index}"
        self.c_in, self.c_out, self.kernel = c_in, c_out, kernel
        self.stride = STAGES[stage][1] if index == 0 else 1
        self.expand = bool(np.all(np.asarray(expansion) > 1))
        self.hidden = c_in * expansion if self.expand else c_in
        # Candidates costed together share a topology_key, so they agree on this.
        self.residual = self.stride == 1 and bool(np.all(np.asarray(c_in) == np.asarray(c_out)))


def _blocks(p: Params) -> list[_Block]:
    """The present blocks of `p` in order (stage s has `stage{s}_depth` of them)."""
    out = []
    c_in = channels(STEM_CHANNELS, p["width_mult"])
    for s, (base, _) in enumerate(STAGES):
        c_out = channels(base, p["width_mult"])
        for j in range(int(p[f"stage{s}_depth"])):
            out.append(_Block(s, j, c_in, c_out, p[f"stage{s}_expansion"], p[f"stage{s}_kernel"]))
            c_in = c_out
    return out


class Resize(nn.Module):
    """Bilinear resize of (N, C, H, W) to a fixed (height, width); identity at that size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class InvertedResidual(nn.Sequential):
    """MobileNetV2's block (arXiv 1801.04381, Table 1 and Fig. 4) with compressible 1x1 convs.

    Its layers are named children (`expand`, `dw`, `project`, their `_bn` and `_relu`),
    so a model's `s{stage}b{index}.project` is the block's project conv.
    """

    def __init__(self, blk: _Block, method: str, level: int, size_hw: tuple[int, int]) -> None:
        """``size_hw``: the block's input height and width, which set the depthwise conv's SAME padding."""
        layers: dict[str, nn.Module] = {}
        if blk.expand:
            layers["expand"] = _conv1x1(method, blk.c_in, blk.hidden, level)
            layers["expand_bn"] = nn.BatchNorm2d(blk.hidden)
            layers["expand_relu"] = nn.ReLU6()
        pad, padding = same_conv_padding(size_hw, blk.kernel, blk.stride)
        if pad is not None:
            layers["dw_pad"] = pad
        layers["dw"] = nn.Conv2d(blk.hidden, blk.hidden, blk.kernel, blk.stride, padding, groups=blk.hidden, bias=False)
        layers["dw_bn"] = nn.BatchNorm2d(blk.hidden)
        layers["dw_relu"] = nn.ReLU6()
        layers["project"] = _conv1x1(method, blk.hidden, blk.c_out, level)
        layers["project_bn"] = nn.BatchNorm2d(blk.c_out)
        super().__init__(OrderedDict(layers))
        self.residual = blk.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return x + y if self.residual else y


def _conv1x1(method: str, c_in: int, c_out: int, level: int) -> CompressedConv1x1:
    """A 1x1 conv whose (c_out x c_in) matrix is compressed by `method` at `level`; no bias (BN follows)."""
    return CompressedConv1x1(make_compressed_linear(method, c_in, c_out, level, bias=False))
