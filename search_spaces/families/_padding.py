"""Convolution padding that computes exactly what the networks' hw_models description says: TFLite SAME.

The families describe every convolution as ``padding="same"``, and TFLite's SAME pads
``total = max((ceil(size / stride) - 1) * stride + kernel - size, 0)`` rows, ``total // 2``
before and the rest after. Torch's symmetric ``kernel // 2`` padding gives the same rows
at stride 1 and on odd sizes, but at stride 2 on an even size it pads one row before
where SAME pads one after. Such a model cannot be written as a SAME convolution: the
exported .tflite would need an explicit PAD op, whose padded copy of the input is live
beside the input and costs arena the search never saw (measured in issue 11). So where
the two differ, the families put a ``ZeroPad2d`` with SAME's rows before an unpadded
conv, and the exporters fold it back into a SAME convolution.
"""

from __future__ import annotations

from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one axis; the output has ``ceil(size / stride)`` rows."""
    total = max((same_output_size(size, stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_output_size(size: int, stride: int) -> int:
    """Rows of a SAME-padded convolution's output: ``ceil(size / stride)``."""
    return -(-size // stride)


def same_conv_padding(
    size_hw: tuple[int, int], kernel: int | tuple[int, int], stride: int | tuple[int, int]
) -> tuple[nn.ZeroPad2d | None, tuple[int, int]]:
    """How a torch conv computes TFLite SAME on a ``size_hw`` input: (explicit pad or None, the conv's own padding).

    Symmetric SAME padding stays the conv's ``padding`` (the module is what it always
    was); asymmetric SAME padding becomes a ``ZeroPad2d`` to put before a conv with
    padding 0.
    """
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    top, bottom = same_padding(size_hw[0], kh, sh)
    left, right = same_padding(size_hw[1], kw, sw)
    if top == bottom and left == right:
        return None, (top, left)
    return nn.ZeroPad2d((left, right, top, bottom)), (0, 0)
