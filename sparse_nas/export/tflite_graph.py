"""A trained model lowered to TFLite's op set, channels-last (NHWC), with a float numpy forward.

:func:`lower_model` traces :func:`~sparse_nas.export.inference.to_inference_module`'s
standard-layer copy of a model (so Kronecker, HMD, low-rank and pruned layers arrive as
their dense equivalents) with ``torch.fx`` and rewrites it as a :class:`LoweredGraph`:

- ``Conv2d`` becomes ``conv2d`` (groups 1) or ``depthwise_conv2d`` (groups = input
  channels); other groupings raise :class:`UnsupportedTFLiteLayerError`;
- ``BatchNorm2d`` after a conv is folded into its weights and bias, and ``ReLU`` /
  ``ReLU6`` after a conv, linear layer or add is fused, as the TFLite converter does;
- padding: TFLite convolutions know only SAME and VALID. Torch's symmetric ``k // 2``
  padding equals SAME wherever SAME would pad the same rows (stride 1, or an odd input
  with stride 2); elsewhere (an even input with stride 2, where SAME pads after and torch
  before) an explicit ``pad`` op precedes a VALID convolution, so the graph computes
  exactly what the model computes;
- ``MaxPool2d`` / ``AvgPool2d`` become pools, ``AdaptiveAvgPool2d(1)`` a ``mean`` over
  H and W, ``Flatten`` a ``reshape`` (or nothing after ``mean``), ``Linear``
  ``fully_connected``, ``Softmax`` ``softmax``, a tensor sum ``add``.

Every other layer raises :class:`UnsupportedTFLiteLayerError` naming it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sparse_nas.export.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

OP_KINDS = (
    "conv2d",
    "depthwise_conv2d",
    "fully_connected",
    "avg_pool2d",
    "max_pool2d",
    "mean",
    "add",
    "reshape",
    "softmax",
    "pad",
)


class UnsupportedTFLiteLayerError(ExportError, ValueError):
    """A layer of the model has no TFLite Micro int8 kernel and no expansion to one."""


@dataclass
class LoweredOp:
    """One TFLite op on float weights.

    Attributes:
        kind: One of :data:`OP_KINDS`.
        inputs: Tensor ids read; ``output`` the tensor id written.
        source: The torch module (or function) it came from, for messages and the manifest.
        weight: ``conv2d`` ``(O, KH, KW, I)``, ``depthwise_conv2d`` ``(1, KH, KW, C)``,
            ``fully_connected`` ``(O, I)``; float32.
        bias: ``(O,)`` float32 (zeros when the layer had none).
        stride: ``(sh, sw)`` of convs and pools; ``kernel`` ``(kh, kw)`` of pools.
        padding: ``"SAME"`` or ``"VALID"``; ``pads`` ``((top, bottom), (left, right))`` of ``pad``.
        activation: ``"none"``, ``"relu"`` or ``"relu6"`` (fused).
    """

    kind: str
    inputs: list[int]
    output: int
    source: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    kernel: tuple[int, int] = (1, 1)
    padding: str = "VALID"
    pads: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    activation: str = "none"


@dataclass
class LoweredGraph:
    """Ops in execution order over tensors ``0..len(shapes)-1``; shapes exclude the batch (NHWC).

    ``input_resize`` is the ``(H, W)`` that the model's leading resize (mbv2's searched
    resolution) scales its input to: the deployed model takes the resized image, as the
    search costed it, so the graph's input has that size and :func:`prepare_inputs`
    resizes dataset images the way the model did.
    """

    shapes: list[tuple[int, ...]]
    ops: list[LoweredOp]
    input: int = 0
    output: int = 0
    notes: list[str] = field(default_factory=list)
    input_resize: tuple[int, int] | None = None

    def new_tensor(self, shape: tuple[int, ...]) -> int:
        self.shapes.append(tuple(int(s) for s in shape))
        return len(self.shapes) - 1


def prepare_inputs(g: LoweredGraph, x_nchw: np.ndarray) -> np.ndarray:
    """Dataset inputs ``(N, C, H, W)`` as the graph takes them: resized (bilinear) if the model resizes first."""
    if g.input_resize is None or tuple(x_nchw.shape[2:]) == g.input_resize:
        return x_nchw
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        resized = F.interpolate(torch.from_numpy(x_nchw), size=g.input_resize, mode="bilinear", align_corners=False)
    return resized.numpy()


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def lower_model(model: nn.Module, input_shape: tuple[int, ...]) -> LoweredGraph:
    """Lower a trained search-space model taking ``(C, H, W)`` images to TFLite ops.

    Raises:
        UnsupportedTFLiteLayerError: A layer has no TFLite Micro equivalent (the message names it).
    """
    import torch
    from torch import fx, nn

    from sparse_nas.export.inference import to_inference_module

    if len(input_shape) != 3:
        raise UnsupportedTFLiteLayerError(
            f"input_shape: the tflite export takes (C, H, W) images, got {list(input_shape)}; "
            "recurrent families have no int8 TFLite Micro kernels here"
        )
    module = to_inference_module(model)

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return type(m).__name__ == "Resize" or super().is_leaf_module(m, qualname)

    graph_module = fx.GraphModule(module, _Tracer().trace(module))
    c, h, w = input_shape
    g = LoweredGraph(shapes=[(h, w, c)], ops=[])
    value: dict[str, int] = {}
    pending_pad: dict[int, tuple[tuple[int, int], tuple[int, int], int]] = {}
    flattened_chw: dict[int, tuple[int, int, int]] = {}

    def producer(t: int) -> LoweredOp | None:
        return next((op for op in g.ops if op.output == t), None)

    with torch.no_grad():
        for node in graph_module.graph.nodes:
            if node.op == "placeholder":
                value[node.name] = g.input
                continue
            if node.op == "output":
                g.output = value[node.args[0].name]
                continue
            if node.op == "call_function" and node.target in (operator.add, torch.add):
                a, b = (value[arg.name] for arg in node.args[:2])
                if g.shapes[a] != g.shapes[b]:
                    raise UnsupportedTFLiteLayerError(f"{node.name}: add of shapes {g.shapes[a]} and {g.shapes[b]}")
                out = g.new_tensor(g.shapes[a])
                g.ops.append(LoweredOp("add", [a, b], out, node.name))
                value[node.name] = out
                continue
            if node.op != "call_module":
                raise UnsupportedTFLiteLayerError(f"{node.name}: {node.op} {node.target} has no TFLite Micro kernel")
            m = graph_module.get_submodule(node.target)
            x = value[node.args[0].name]
            name = str(node.target)
            if x < 0 and not isinstance(m, nn.Conv2d):
                raise UnsupportedTFLiteLayerError(f"{name}: a ZeroPad2d must be followed by a convolution")
            shape = g.shapes[x]
            if isinstance(m, nn.ZeroPad2d):
                left, right, top, bottom = (int(p) for p in m.padding)
                # Not a tensor of its own: the conv that reads it takes the padding (negative ids).
                pad_id = -1 - len(pending_pad)
                pending_pad[pad_id] = ((top, bottom), (left, right), x)
                value[node.name] = pad_id
            elif isinstance(m, nn.Conv2d):
                value[node.name] = _lower_conv(g, m, x, name, pending_pad)
            elif isinstance(m, nn.BatchNorm2d):
                op = producer(x)
                if op is None or op.kind not in ("conv2d", "depthwise_conv2d") or op.activation != "none":
                    raise UnsupportedTFLiteLayerError(f"{name}: a batch norm must follow a conv to be folded")
                scale = (m.weight / torch.sqrt(m.running_var + m.eps)).numpy().astype(np.float64)
                shift = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)).numpy()
                axis = 3 if op.kind == "depthwise_conv2d" else 0
                shape_b = [1, 1, 1, 1]
                shape_b[axis] = -1
                op.weight = (op.weight * scale.reshape(shape_b)).astype(np.float32)
                op.bias = (op.bias * scale + shift).astype(np.float32)
                value[node.name] = x
            elif isinstance(m, nn.ReLU | nn.ReLU6):
                op = producer(x)
                if op is None or op.kind not in ("conv2d", "depthwise_conv2d", "fully_connected", "add"):
                    raise UnsupportedTFLiteLayerError(f"{name}: a ReLU must follow a conv, linear layer or add")
                if op.activation != "none" or len(node.args[0].users) > 1:
                    raise UnsupportedTFLiteLayerError(f"{name}: cannot fuse this ReLU into {op.source}")
                op.activation = "relu6" if isinstance(m, nn.ReLU6) else "relu"
                value[node.name] = x
            elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
                k, s = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
                if _pair(m.padding) != (0, 0) or m.ceil_mode:
                    raise UnsupportedTFLiteLayerError(f"{name}: pooling with padding or ceil_mode")
                if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != (1, 1):
                    raise UnsupportedTFLiteLayerError(f"{name}: dilated max pooling")
                out_hw = [(shape[i] - k[i]) // s[i] + 1 for i in (0, 1)]
                out = g.new_tensor((*out_hw, shape[2]))
                kind = "max_pool2d" if isinstance(m, nn.MaxPool2d) else "avg_pool2d"
                g.ops.append(LoweredOp(kind, [x], out, name, stride=s, kernel=k))
                value[node.name] = out
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                if _pair(m.output_size) != (1, 1):
                    raise UnsupportedTFLiteLayerError(f"{name}: adaptive pooling to {m.output_size}, not 1")
                out = g.new_tensor((shape[2],))
                g.ops.append(LoweredOp("mean", [x], out, name))
                value[node.name] = out
            elif isinstance(m, nn.Flatten):
                if len(shape) == 1:
                    value[node.name] = x
                else:
                    out = g.new_tensor((int(np.prod(shape)),))
                    g.ops.append(LoweredOp("reshape", [x], out, name))
                    flattened_chw[out] = shape
                    value[node.name] = out
            elif isinstance(m, nn.Linear):
                if len(shape) != 1:
                    raise UnsupportedTFLiteLayerError(f"{name}: linear layer on a {len(shape)}-d tensor")
                weight = m.weight.numpy().astype(np.float32)
                if x in flattened_chw:
                    # torch flattened (C, H, W); the NHWC tensor flattens (H, W, C).
                    hh, ww, cc = flattened_chw[x]
                    weight = weight.reshape(-1, cc, hh, ww).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
                bias = m.bias.numpy() if m.bias is not None else np.zeros(m.out_features)
                out = g.new_tensor((m.out_features,))
                g.ops.append(LoweredOp("fully_connected", [x], out, name, weight=weight, bias=bias.astype(np.float32)))
                value[node.name] = out
            elif isinstance(m, nn.Softmax):
                if m.dim not in (-1, len(shape)):
                    raise UnsupportedTFLiteLayerError(f"{name}: softmax over dim {m.dim}, not the last")
                out = g.new_tensor(shape)
                g.ops.append(LoweredOp("softmax", [x], out, name))
                value[node.name] = out
            elif isinstance(m, nn.Identity | nn.Dropout):
                value[node.name] = x
            elif type(m).__name__ == "Resize":
                size = (int(m.size[0]), int(m.size[1]))
                if size != tuple(shape[:2]):
                    if x != g.input or g.ops:
                        raise UnsupportedTFLiteLayerError(f"{name}: a resize that is not the model's first layer")
                    g.shapes[g.input] = (*size, shape[2])
                    g.input_resize = size
                    g.notes.append(f"{name}: the model takes the image resized to {size} (bilinear), not the dataset's")
                value[node.name] = x
            else:
                raise UnsupportedTFLiteLayerError(
                    f"{name}: {type(m).__name__} has no TFLite Micro int8 kernel and no expansion"
                )
    if g.output < 0:
        raise UnsupportedTFLiteLayerError("a ZeroPad2d must be followed by a convolution")
    return g


def _lower_conv(
    g: LoweredGraph,
    m: Any,
    x: int,
    name: str,
    pending_pad: dict[int, tuple[tuple[int, int], tuple[int, int], int]],
) -> int:
    """Append a conv (after a ``pad`` if SAME cannot express its padding); returns its output tensor."""
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedTFLiteLayerError(f"{name}: padding {m.padding!r} / {m.padding_mode!r}")
    if _pair(m.dilation) != (1, 1):
        raise UnsupportedTFLiteLayerError(f"{name}: dilated convolution")
    ph, pw = _pair(m.padding)
    pads = [[ph, ph], [pw, pw]]
    if x in pending_pad:
        (t, b), (left, r), x = pending_pad[x]
        pads = [[pads[0][0] + t, pads[0][1] + b], [pads[1][0] + left, pads[1][1] + r]]
    h, w, c = g.shapes[x]
    kh, kw = _pair(m.kernel_size)
    sh, sw = _pair(m.stride)
    # Rows that padding adds but no window reads do not change the result.
    used = []
    for size, k, s, (before, after) in ((h, kh, sh, pads[0]), (w, kw, sw, pads[1])):
        out = (size + before + after - k) // s + 1
        used.append((out, before, max((out - 1) * s + k - size - before, 0)))
    same = [_same_pads(h, kh, sh), _same_pads(w, kw, sw)]
    if all(u[1:] == (0, 0) for u in used):
        padding = "VALID"
    elif [u[1:] for u in used] == same and [u[0] for u in used] == [-(-h // sh), -(-w // sw)]:
        padding = "SAME"
    else:
        padding = "VALID"
        pad_out = g.new_tensor((h + used[0][1] + used[0][2], w + used[1][1] + used[1][2], c))
        pad_spec = ((used[0][1], used[0][2]), (used[1][1], used[1][2]))
        g.ops.append(LoweredOp("pad", [x], pad_out, f"{name}.padding", pads=pad_spec))
        g.notes.append(f"{name}: torch pads {pad_spec} where TFLite SAME would pad {tuple(same)}; a PAD op is added")
        x = pad_out
        h, w = g.shapes[x][:2]
    out_h, out_w = used[0][0], used[1][0]
    weight = m.weight.numpy().astype(np.float32)  # (O, I/groups, KH, KW)
    bias = m.bias.numpy().astype(np.float32) if m.bias is not None else np.zeros(m.out_channels, np.float32)
    if m.groups == 1:
        op = LoweredOp("conv2d", [x], 0, name, weight=weight.transpose(0, 2, 3, 1), bias=bias)
    elif m.groups == m.in_channels:
        # (C*mult, 1, KH, KW) -> (1, KH, KW, C*mult)
        op = LoweredOp("depthwise_conv2d", [x], 0, name, weight=weight.transpose(1, 2, 3, 0), bias=bias)
    else:
        raise UnsupportedTFLiteLayerError(f"{name}: grouped convolution ({m.groups} groups) has no TFLite Micro kernel")
    op.stride, op.kernel, op.padding = (sh, sw), (kh, kw), padding
    op.output = g.new_tensor((out_h, out_w, m.out_channels))
    g.ops.append(op)
    return op.output


# --- float reference --------------------------------------------------------------------


def _patches(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, padding: str, fill: float) -> np.ndarray:
    """``(N, OH, OW, KH, KW, C)`` windows of ``x`` ``(N, H, W, C)`` with TFLite padding."""
    h, w = x.shape[1:3]
    if padding == "SAME":
        (t, b), (left, r) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
        x = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), constant_values=fill)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H', W', C, KH, KW)
    return windows[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)


def _activate(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "relu6":
        return np.clip(y, 0, 6)
    return y


def float_forward(g: LoweredGraph, x_nchw: np.ndarray, *, keep: bool = False) -> list[np.ndarray | None]:
    """Every tensor of ``g`` for a float dataset batch ``(N, C, H, W)`` (inputs NCHW, tensors NHWC).

    Without ``keep``, only the output tensor is kept (index ``g.output``), the rest freed.
    """
    values: list[np.ndarray | None] = [None] * len(g.shapes)
    values[g.input] = np.ascontiguousarray(prepare_inputs(g, x_nchw).transpose(0, 2, 3, 1), dtype=np.float32)
    for op in g.ops:
        values[op.output] = float_op(op, [values[i] for i in op.inputs])
    if not keep:
        values = [v if i == g.output else None for i, v in enumerate(values)]
    return values


def float_op(op: LoweredOp, xs: list[Any]) -> np.ndarray:
    """One op on float NHWC tensors (batch first)."""
    x = xs[0]
    if op.kind in ("conv2d", "depthwise_conv2d"):
        p = _patches(x, *op.kernel, *op.stride, op.padding, 0.0)
        if op.kind == "conv2d":
            y = np.einsum("nhwijc,oijc->nhwo", p, op.weight, optimize=True)
        else:
            mult = op.weight.shape[3] // x.shape[3]
            p = np.repeat(p, mult, axis=-1)
            y = np.einsum("nhwijc,ijc->nhwc", p, op.weight[0], optimize=True)
        return _activate(y + op.bias, op.activation).astype(np.float32)
    if op.kind == "fully_connected":
        return _activate(x @ op.weight.T + op.bias, op.activation).astype(np.float32)
    if op.kind == "max_pool2d":
        return _patches(x, *op.kernel, *op.stride, "VALID", 0.0).max(axis=(3, 4))
    if op.kind == "avg_pool2d":
        return _patches(x, *op.kernel, *op.stride, "VALID", 0.0).mean(axis=(3, 4))
    if op.kind == "mean":
        return x.mean(axis=(1, 2))
    if op.kind == "add":
        return _activate(xs[0] + xs[1], op.activation)
    if op.kind == "reshape":
        return x.reshape(len(x), -1)
    if op.kind == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if op.kind == "pad":
        return np.pad(x, ((0, 0), *op.pads, (0, 0)))
    raise UnsupportedTFLiteLayerError(f"{op.source}: unknown op kind {op.kind!r}")
