"""A trained model rewritten with standard layers only, for exporters that know no custom modules.

:func:`to_inference_module` returns a copy of a trained search-space model in which

- every ``QuantizedLayer`` (quantisation-aware training) is replaced by the layer it
  wraps, holding the quantised weights its forward used (the per-row int8 grid, or
  ternary values); its input fake-quantiser is dropped, so activations stay float;
- every ``BaseCompressedLinear`` (pruned, low-rank, Kronecker, hybrid and doped
  Kronecker, HMD) is replaced by an ``nn.Linear`` holding ``dense_weight()``; inside a
  ``CompressedConv1x1`` the pair becomes a 1x1 ``nn.Conv2d``;
- every ``MaskedConv2d`` is replaced by an ``nn.Conv2d`` holding ``weight * mask``.

Every replacement computes what the original computed (up to float rounding; the
compression modules' contract guarantees ``forward(x) == x @ dense_weight().T + b``),
so ONNX's Gemm/MatMul/Conv express the whole model, and int8 quantisers see plain
weight tensors. The structured forms stay in the PyTorch export, where they are the
deployed storage format.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from search_spaces.compression import BaseCompressedLinear, CompressedConv1x1, MaskedConv2d
from search_spaces.quantization import QuantizedLayer


@torch.no_grad()
def to_inference_module(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` made of standard torch layers only (``model`` is untouched)."""
    out = _convert(copy.deepcopy(model))
    out.eval()
    for parameter in out.parameters():
        parameter.requires_grad_(False)
    return out


def _convert(module: nn.Module) -> nn.Module:
    """``module`` or its standard replacement, children converted first."""
    if isinstance(module, QuantizedLayer):
        return _convert(_with_quantized_weights(module))
    if isinstance(module, CompressedConv1x1):
        return _conv1x1(_convert(module.linear))
    if isinstance(module, BaseCompressedLinear):
        return _linear(module.dense_weight(), module.bias)
    if isinstance(module, MaskedConv2d):
        return _plain_conv(module)
    for name, child in list(module.named_children()):
        replacement = _convert(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _with_quantized_weights(layer: QuantizedLayer) -> nn.Module:
    """The wrapped layer, its stored weights overwritten with what the forward used."""
    inner = layer.module
    if layer.weight_quant_enabled:
        for name, value in layer.quantized_weights().items():
            inner.get_parameter(name).copy_(value.detach())
    return inner


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None)
    linear.weight.copy_(weight.detach())
    if bias is not None:
        linear.bias.copy_(bias.detach())
    return linear


def _conv1x1(linear: nn.Module) -> nn.Conv2d:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"CompressedConv1x1 must convert to an nn.Linear, got {type(linear).__name__}")
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    conv.weight.copy_(linear.weight.reshape(linear.out_features, linear.in_features, 1, 1))
    if linear.bias is not None:
        conv.bias.copy_(linear.bias)
    return conv


def _plain_conv(masked: MaskedConv2d) -> nn.Conv2d:
    conv = nn.Conv2d(
        masked.in_channels,
        masked.out_channels,
        masked.kernel_size,
        masked.stride,
        masked.padding,
        masked.dilation,
        masked.groups,
        bias=masked.bias is not None,
        padding_mode=masked.padding_mode,
    )
    conv.weight.copy_(masked.weight * masked.mask)
    if masked.bias is not None:
        conv.bias.copy_(masked.bias)
    return conv
