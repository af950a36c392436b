"""Oracle tests: hand-counted params, non-zeros, bytes, MACs, arena and latency.

Every expected number below is worked out by hand in the comment next to it, from the
op's definition (not from the code under test).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from hw_models import (
    HMD,
    TFLM,
    HybridKronecker,
    Kronecker,
    LowRank,
    NetworkBuilder,
    Sparse,
    estimate,
)
from hw_models.errors import UnsupportedLayerError


def single_layer(build, input_shape, bits=8):
    b = NetworkBuilder("t", input_shape, bits=bits)
    out = build(b, b.input)
    return b.build([out])


def layer(report, index=0):
    return report.layers[index]


# --- op kinds: params and MACs --------------------------------------------------------


def test_conv2d_same_padding(device):
    net = single_layer(lambda b, x: b.conv2d(x, 4, 3), (8, 8, 3))
    r = layer(estimate(net, device))
    assert r.output_shape == (8, 8, 4)
    assert r.params == 3 * 3 * 3 * 4 + 4  # weights + biases = 112
    assert r.macs == 8 * 8 * 4 * 27  # out pixels x out channels x (3x3x3) = 6912
    assert r.output_bytes == 256


def test_conv2d_valid_stride_dilation():
    # 8x8, k3, s2, VALID: (8 - 3) // 2 + 1 = 3. Dilation 2: effective k 5 -> (8 - 5) // 1 + 1 = 4.
    net = single_layer(lambda b, x: b.conv2d(x, 2, 3, stride=2, padding="valid"), (8, 8, 1))
    assert net.layers[0].output == net.tensors[0].name and net.tensors[0].shape == (3, 3, 2)
    net = single_layer(lambda b, x: b.conv2d(x, 2, 3, dilation=2, padding="valid"), (8, 8, 1))
    assert net.tensors[0].shape == (4, 4, 2)
    # SAME with stride 2 on 7: ceil(7 / 2) = 4.
    net = single_layer(lambda b, x: b.conv2d(x, 2, 3, stride=2), (7, 7, 1))
    assert net.tensors[0].shape == (4, 4, 2)


def test_grouped_conv(device):
    net = single_layer(lambda b, x: b.conv2d(x, 4, 3, groups=2), (4, 4, 4))
    r = layer(estimate(net, device))
    assert r.params == 4 * 3 * 3 * 2 + 4  # each filter sees C/groups = 2 channels: 76
    assert r.macs == 4 * 4 * 4 * 18  # 1152


def test_depthwise_with_multiplier(device):
    net = single_layer(lambda b, x: b.depthwise_conv2d(x, 3, multiplier=2), (5, 5, 2))
    r = layer(estimate(net, device))
    assert r.output_shape == (5, 5, 4)
    assert r.params == 4 * 9 + 4  # 40
    assert r.macs == 25 * 4 * 9  # 900


def test_linear_on_vector_and_sequence(device):
    r = layer(estimate(single_layer(lambda b, x: b.linear(x, 5), (10,)), device))
    assert (r.params, r.macs) == (55, 50)
    # Applied to each of 7 steps of a (7, 10) sequence: 7 x 50 MACs, same params.
    r = layer(estimate(single_layer(lambda b, x: b.linear(x, 5), (7, 10)), device))
    assert (r.params, r.macs, r.output_shape) == (55, 350, (7, 5))


def test_pools_and_shape_ops(device):
    b = NetworkBuilder("t", (4, 4, 2))
    a = b.avg_pool2d(b.input, 2)
    m = b.max_pool2d(b.input, 3, stride=1, padding="same")
    g = b.global_avg_pool(b.input)
    c = b.concat([a, a], axis=-1)
    f = b.flatten(c)
    rs = b.reshape(f, (2, -1))
    s = b.softmax(rs)
    net = b.build([m, g, s])
    shapes = {t.name: t.shape for t in net.tensors}
    assert shapes[a] == (2, 2, 2) and shapes[m] == (4, 4, 2) and shapes[g] == (2,)
    assert shapes[c] == (2, 2, 4) and shapes[f] == (16,) and shapes[rs] == (2, 8) and shapes[s] == (2, 8)
    report = estimate(net, device)
    assert report.params == 0 and report.macs == 0
    # Latency: per-element work (1 cycle each at 1 MHz) + 100 cycles per op.
    work = {
        a: 2 * 2 * 2 * 4,  # output elements x pool area
        m: 4 * 4 * 2 * 9,
        g: 4 * 4 * 2,  # every input element is summed
        c: 16, f: 16, rs: 16, s: 16,
    }
    assert report.latency_ms == pytest.approx((sum(work.values()) + 100 * len(work)) / 1000)


def test_lstm_and_gru(device):
    # T=5, F=3, H=4. LSTM: w_ih 16x3, w_hh 16x4, bias 4H = 16 -> 128 params;
    # per step 48 + 64 MACs + 3H element-wise products = 124 -> 620.
    r = layer(estimate(single_layer(lambda b, x: b.lstm(x, 4), (5, 3)), device))
    assert (r.params, r.macs, r.output_shape) == (128, 620, (4,))
    # GRU: w_ih 12x3, w_hh 12x4, bias 4H = 16 -> 100; per step 36 + 48 + 12 = 96 -> 480.
    r = layer(estimate(single_layer(lambda b, x: b.gru(x, 4, return_sequences=True), (5, 3)), device))
    assert (r.params, r.macs, r.output_shape) == (100, 480, (5, 4))


def test_embedding(device):
    r = layer(estimate(single_layer(lambda b, x: b.embedding(x, 10, 4), (6,), bits=32), device))
    assert (r.params, r.macs, r.output_shape) == (40, 0, (6, 4))


def test_batch_norm_and_relu_fold_into_conv(device):
    b = NetworkBuilder("t", (4, 4, 1))
    x = b.conv2d(b.input, 2, 1, bias=False, name="conv")
    x = b.relu(b.batch_norm(x, name="bn"), name="act")
    report = estimate(b.build([x]), device)
    assert len(report.layers) == 1
    conv = report.layers[0]
    assert conv.fused == ("bn", "act")
    assert conv.params == 2 + 2  # the folded batch norm becomes a bias


def test_unfoldable_batch_norm_is_rejected(device):
    b = NetworkBuilder("t", (4, 4, 1))
    x = b.batch_norm(b.max_pool2d(b.input, 2))
    with pytest.raises(UnsupportedLayerError, match="batch_norm"):
        estimate(b.build([x]), device)


def test_standalone_relu_is_costed_when_not_foldable(device):
    b = NetworkBuilder("t", (4, 4, 1))
    p = b.max_pool2d(b.input, 2)
    x = b.relu(p)
    report = estimate(b.build([x]), device)
    assert [lay.op for lay in report.layers] == ["max_pool2d", "relu"]


# --- weight structures on a 12 x 8 linear layer ------------------------------------------


STRUCTURES_12x8 = [
    # (structure, bits, nonzero weights, stored weight bytes, matvec MACs)
    # dense int8: 96 values
    (None, 8, 96, 96, 96),
    # 4-bit and 2-bit (ternary) dense: packed 2 and 4 per byte
    (None, 4, 96, 48, 96),
    (None, 2, 96, 24, 96),
    # CSR 25%: 24 values + 24 uint8 column indices (8 columns) + 13 uint8 row pointers
    (Sparse(0.25, "csr"), 8, 24, 24 + 24 + 13, 24),
    # bitmask 50%: 48 values + 96 / 8 mask bytes
    (Sparse(0.5, "bitmask"), 8, 48, 48 + 12, 48),
    # block 4x1 at 50% of the 3 x 8 block grid: 12 blocks = 48 values,
    # 12 block-column indices + 4 block-row pointers
    (Sparse(0.5, "block", (4, 1)), 8, 48, 48 + 12 + 4, 48),
    # low rank 2: U 12x2 + V 2x8 = 40, MACs r(m + n) = 40
    (LowRank(2), 8, 40, 40, 40),
    # KP (3x2) kron (4x4): 6 + 16 params; vec trick min(n1 m2 (n2 + m1), m1 n2 (n1 + m2))
    # = min(2*4*7, 3*4*6) = 56
    (Kronecker(((3, 2), (4, 4))), 8, 22, 22, 56),
    # doped KP, 5 extra non-zeros stored CSR: 5 values + 5 col idx + 13 row ptrs
    (Kronecker(((3, 2), (4, 4)), doping_nonzeros=5), 8, 27, 22 + 5 + 5 + 13, 61),
    # hybrid KP: 4 dense rows (32) + (2x2) kron (4x4) for the 8x8 rest (20); MACs 32 + 48
    (HybridKronecker(4, ((2, 2), (4, 4))), 8, 52, 52, 80),
    # HMD, 4 dense rows, 2 rank-1 blocks: 32 + 2*(12-4) + 8 = 56; MACs 32 + 8 + 2*8 = 56
    (HMD(4, 2), 8, 56, 56, 56),
]


@pytest.mark.parametrize(
    ("structure", "bits", "nonzero", "weight_bytes", "macs"),
    STRUCTURES_12x8,
    ids=lambda v: getattr(v, "kind", None) if not isinstance(v, int) else None,
)
def test_structure_counts(device, structure, bits, nonzero, weight_bytes, macs):
    net = single_layer(lambda b, x: b.linear(x, 12, bias=False, weight_bits=bits, structure=structure), (8,))
    r = layer(estimate(net, device, "ideal"))
    assert r.nonzero_params == nonzero
    assert r.macs == macs
    # ideal: non-zeros at their bits, nothing else
    assert r.model_bytes == math.ceil(nonzero * bits / 8)
    # tflm: each stored array is a 2-d tensor with a buffer (data aligned to 16 B) and a
    # quantisation table; a dense or sparse matrix has a scale and zero point per output
    # row (12), factorised ones one per array. Then the op's output (1, 12) and its Operator.
    t = layer(estimate(net, device, "tflm"))
    kind = getattr(structure, "kind", None)
    arrays = {None: 1, "sparse": 1, "low_rank": 2, "kronecker": 2 + (getattr(structure, "doping_nonzeros", 0) > 0),
              "hybrid_kronecker": 3, "hmd": 3}[kind]
    channels = 12 if kind in (None, "sparse") else arrays
    entry = TFLM.metadata_bytes_per_tensor + 2 * TFLM.shape_bytes_per_dim + TFLM.quantization_bytes_per_tensor
    stored = weight_bytes + (-weight_bytes) % 16 + arrays * (entry + TFLM.buffer_bytes_per_array) + 12 * channels
    output = entry + 12
    operator = TFLM.metadata_bytes_per_op + (1 + arrays + 1) * TFLM.tensor_index_bytes
    assert t.model_bytes == stored + output + operator


def test_model_bytes_of_a_quantised_conv(device):
    # conv 3x3, 3 -> 4 channels, int8 with bias, as the tflite export writes it:
    # - weight (4, 3, 3, 3): 108 B padded to 112, 4 shape entries, 4 channels' scale + zero point;
    # - bias (4,): 4 int32 = 16 B, 1 shape entry, the same 4 channels;
    # - output (1, 8, 8, 4): 4 shape entries, one scale + zero point;
    # - the Operator with 4 indices (input, weight, bias, output).
    net = single_layer(lambda b, x: b.conv2d(x, 4, 3), (8, 8, 3))
    r = estimate(net, device)
    t, q, d = TFLM.metadata_bytes_per_tensor, TFLM.quantization_bytes_per_tensor, TFLM.shape_bytes_per_dim
    weight = t + 4 * d + q + 4 * 12 + TFLM.buffer_bytes_per_array + 112
    bias = t + 1 * d + q + 4 * 12 + TFLM.buffer_bytes_per_array + 16
    output = t + 4 * d + q + 12
    operator = TFLM.metadata_bytes_per_op + 4 * TFLM.tensor_index_bytes
    assert r.layers[0].model_bytes == weight + bias + output + operator
    # + header, the input (1, 8, 8, 3) and one OperatorCode
    fixed = TFLM.model_header_bytes + (t + 4 * d + q + 12) + TFLM.metadata_bytes_per_op_kind
    assert r.model_bytes == r.layers[0].model_bytes + fixed
    assert r.flash_bytes == r.model_bytes + TFLM.code_base_bytes + TFLM.code_bytes_per_op_kind["conv2d"]


def test_float_weights_have_no_quantisation_parameters(device):
    net = single_layer(lambda b, x: b.linear(x, 5, weight_bits=32), (10,), bits=32)
    r = layer(estimate(net, device))
    t, d, buffer = TFLM.metadata_bytes_per_tensor, TFLM.shape_bytes_per_dim, TFLM.buffer_bytes_per_array
    weight = t + 2 * d + buffer + 200 + 8  # 50 float32, padded to 208
    bias = t + 1 * d + buffer + 20 + 12  # 5 float32, padded to 32
    output = t + 2 * d  # (1, 5), no quantisation table
    assert r.model_bytes == weight + bias + output + TFLM.metadata_bytes_per_op + 4 * TFLM.tensor_index_bytes


# --- latency, scratch, SRAM -------------------------------------------------------------


def test_latency_and_energy(device):
    # linear 10 -> 5 at 2 cycles/MAC, 3 cycles/output, 100 cycles/op, 1 MHz: 100 + 15 + 100 = 215 cycles.
    r = estimate(single_layer(lambda b, x: b.linear(x, 5), (10,)), device)
    assert r.latency_ms == pytest.approx(0.215)
    assert r.energy_mj == pytest.approx(50.0 * 0.215 / 1000)  # mW x ms / 1000


def test_cmsis_nn_scratch_sizes(device, device_no_dsp):
    # arm_convolve_s8 with DSP: 2 * C_in * KH * KW * int16 = 2*3*9*2 = 108 bytes.
    net = single_layer(lambda b, x: b.conv2d(x, 4, 3), (8, 8, 3))
    assert layer(estimate(net, device)).scratch_bytes == 108
    assert layer(estimate(net, device_no_dsp)).scratch_bytes == 0
    # 1x1, stride 1, C_in % 4 == 0: the fast path needs none; C_in = 3 does (2*3*2).
    assert layer(estimate(single_layer(lambda b, x: b.conv2d(x, 4, 1), (8, 8, 8)), device)).scratch_bytes == 0
    assert layer(estimate(single_layer(lambda b, x: b.conv2d(x, 4, 1), (8, 8, 3)), device)).scratch_bytes == 12
    # depthwise, multiplier 1: C * KH * KW * int16 = 8*9*2; multiplier 2: none.
    assert layer(estimate(single_layer(lambda b, x: b.depthwise_conv2d(x, 3), (8, 8, 8)), device)).scratch_bytes == 144
    dw2 = single_layer(lambda b, x: b.depthwise_conv2d(x, 3, multiplier=2), (8, 8, 8))
    assert layer(estimate(dw2, device)).scratch_bytes == 0
    # avg pool: C int32 accumulators.
    assert layer(estimate(single_layer(lambda b, x: b.avg_pool2d(x, 2), (8, 8, 8)), device)).scratch_bytes == 32


def test_residual_network_arena_differs_from_naive_sum(device_no_dsp):
    # input (4,4,4) int8 = 64 B; x1, x2, x3, x4 = (4,4,8) = 128 B each; no DSP -> no scratch.
    b = NetworkBuilder("res", (4, 4, 4))
    x1 = b.conv2d(b.input, 8, 3, name="x1")
    x2 = b.conv2d(x1, 8, 3, name="x2")
    x3 = b.conv2d(x2, 8, 3, name="x3")
    x4 = b.add_tensors([x1, x3], name="x4")
    r = estimate(b.build([x4]), device_no_dsp)
    # Lifetimes (op steps): input [0,0], x1 [0,3], x2 [1,2], x3 [2,3], x4 [3,3].
    # Greedy, largest first, ties last added first (as TFLM): x4@0, x3@128 (overlaps x4),
    # x2@0 (overlaps only x3), x1@256 (overlaps all three), input@0 (overlaps only x1).
    offsets = {p.name: p.offset_bytes for p in r.buffers if p.size_bytes}
    assert offsets == {"x1": 256, "x2": 0, "x3": 128, "x4": 0, "input": 0}
    assert r.arena_bytes == 384
    naive = 64 + 4 * 128
    assert r.arena_bytes < naive
    # Live bytes peak at steps 2 and 3 (x1 + x2 + x3, x1 + x3 + x4): the plan is optimal here.
    assert r.peak_live_bytes == 384
    # SpArSe working memory: the add reads x1, x3 and writes x4.
    assert r.working_memory_bytes == 384
    # Persistent tail (hw_models/persistent.py): eval tensors of 5 activations and 3 x
    # (weight, bias); 4 nodes; the kernels' data of 3 convs and an add; per conv two int32
    # arrays of 8 channels (32 B each, a multiple of 16); the allocator's objects; a full
    # tensor for the model's input and for its output.
    kinds = TFLM.persistent_bytes_per_op_kind
    persistent = (
        11 * TFLM.persistent_bytes_per_tensor
        + 4 * TFLM.persistent_bytes_per_op
        + 3 * kinds["conv2d"]
        + kinds["add"]
        + 3 * 2 * 32
        + TFLM.persistent_fixed_bytes
        + 2 * TFLM.persistent_bytes_per_io_tensor
    )
    assert r.persistent_bytes == persistent
    assert r.sram_bytes == 384 + persistent + device_no_dsp.sram_overhead_bytes


def test_arena_alignment_is_16_bytes(device_no_dsp):
    # A 10-byte input and a 5-byte output take 16 bytes each in the arena.
    r = estimate(single_layer(lambda b, x: b.linear(x, 5), (10,)), device_no_dsp)
    assert {p.name: p.size_bytes for p in r.buffers if p.size_bytes} == {"input": 16, "linear_1": 16}
    assert r.arena_bytes == 32
    assert r.working_memory_bytes == 15


def test_ideal_runtime_is_the_papers_accounting(device):
    net = single_layer(lambda b, x: b.linear(x, 5, structure=Sparse(0.5)), (10,))
    r = estimate(net, device, "ideal")
    assert r.sram_bytes == r.working_memory_bytes == 15
    assert r.model_bytes == r.flash_bytes == 25 + 5  # 25 non-zero weights + 5 biases, one byte each
    assert r.runtime_code_bytes == 0


def test_compressed_structures_keep_their_intermediate_buffers(device_no_dsp):
    # Low-rank linear 8 -> 12 with rank 2: the 2-element intermediate lives during the op.
    r = layer(estimate(single_layer(lambda b, x: b.linear(x, 12, structure=LowRank(2)), (8,)), device_no_dsp))
    assert r.scratch_bytes == 2
    # KP (3x2) kron (4x4): the vec trick's int32 (m2 x n1) = 4 x 2 product.
    kp = single_layer(lambda b, x: b.linear(x, 12, structure=Kronecker(((3, 2), (4, 4)))), (8,))
    assert layer(estimate(kp, device_no_dsp)).scratch_bytes == 4 * 2 * 4


def test_fits_flags(device):
    tiny = dataclasses.replace(device, sram_bytes=2000)
    r = estimate(single_layer(lambda b, x: b.conv2d(x, 64, 3), (32, 32, 3)), tiny)
    assert r.fits_flash and not r.fits_sram
    assert r.to_dict()["fits_sram"] is False


def test_sparse_weights_denser_than_their_break_even_are_stored_dense(device):
    # CSR at 90% of a 12 x 8 matrix: 86 values + 86 indices + 13 pointers > 96 dense bytes,
    # so a deployment stores (and multiplies) it dense; at 100% it is exactly Dense.
    def linear(structure):
        net = single_layer(lambda b, x: b.linear(x, 12, bias=False, structure=structure), (8,))
        return layer(estimate(net, device, "tflm"))

    dense, nearly, full = linear(None), linear(Sparse(0.9)), linear(Sparse(1.0))
    assert nearly.model_bytes == full.model_bytes == dense.model_bytes
    assert nearly.macs == full.macs == dense.macs == 96
    assert nearly.nonzero_params == 86
