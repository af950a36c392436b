"""CompressedLSTM and CompressedGRU (search_spaces.compression._rnn).

Oracles: torch's nn.LSTM / nn.GRU on copied weights (outputs, states, gradients),
parameter and MAC counts worked out by hand in the comments, torch's FLOP counter for
what the forward multiplies, and hw_models' cost of each gate matrix on its own.
"""

from __future__ import annotations

import copy
import functools
import pickle
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# The method modules register their names on import.
from hw_models import NetworkBuilder, estimate
from search_spaces.compression import _hmd, _lowrank  # noqa: F401
from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.compression._kronecker import DopedKroneckerLinear, KroneckerLinear
from search_spaces.compression._pruning import MagnitudePrunedLinear
from search_spaces.compression._registry import compression_methods
from search_spaces.compression._rnn import BaseCompressedRNN, CompressedGRU, CompressedLSTM, InvalidRNNInputError
from search_spaces.errors import InvalidCompressionError
from search_spaces.quantization import prepare_qat

CELLS = [(nn.LSTM, CompressedLSTM), (nn.GRU, CompressedGRU)]
CELL_IDS = ["lstm", "gru"]
# Knobs for the gate matrices of CompressedX(6, 8, num_layers=2, bidirectional=True):
# W_ih is G*8 x 6 (layer 0) or G*8 x 16 (layer 1), W_hh is G*8 x 8, G = 4 or 3.
KNOBS: dict[str, dict[str, Any]] = {
    "low_rank": {"rank": 3},
    "hybrid_kronecker": {"dense_rows": 4},
    "doped_kronecker": {"doping_density": 0.25},
    "hmd": {"dense_rows": 2},
    "magnitude_pruning": {"density": 0.3},
}
# Methods whose forward is matmuls only, so torch's FLOP counter sees all their MACs.
MATMUL_ONLY = ("dense", "low_rank", "kronecker", "hybrid_kronecker")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _state(cell: type[BaseCompressedRNN], shape: tuple[int, ...]) -> Any:
    if cell is CompressedLSTM:
        return torch.randn(shape), torch.randn(shape)
    return torch.randn(shape)


def _flatten(result: tuple[torch.Tensor, Any]) -> list[torch.Tensor]:
    output, state = result
    return [output, *state] if isinstance(state, tuple) else [output, state]


def _compressed(cell: type[BaseCompressedRNN], method: str, **options: Any) -> BaseCompressedRNN:
    """A 2-layer bidirectional RNN (F 6, H 8) whose gate matrices all use `method`."""
    spec = (method, KNOBS.get(method, {}))
    return cell(6, 8, num_layers=2, bidirectional=True, w_ih=spec, w_hh=spec, **options)


def _set_real_masks(rnn: BaseCompressedRNN) -> None:
    """Give pruned matrices a mask below density 1, as after training."""
    for module in rnn.modules():
        if isinstance(module, DopedKroneckerLinear):
            with torch.no_grad():
                module.overlay.normal_()
            module.prune_to()
        elif isinstance(module, MagnitudePrunedLinear):
            module.prune_to()


def _matrix_macs(module: BaseCompressedLinear) -> int:
    """hw_models' MACs of the matrix alone, as one linear layer on one vector."""
    b = NetworkBuilder("one", input_shape=(module.in_features,))
    b.linear(
        b.input, module.out_features, bias=False, weight_bits=module.weight_bits, structure=module.weight_structure()
    )
    return estimate(b.build(), "stm32f446re", "ideal").macs


# --- drop-in for nn.LSTM / nn.GRU -------------------------------------------------


@pytest.mark.parametrize(("torch_cell", "cell"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_equals_torch_on_copied_weights(
    torch_cell: type[nn.RNNBase],
    cell: type[BaseCompressedRNN],
    batch_first: bool,
    bidirectional: bool,
    with_state: bool,
) -> None:
    reference = torch_cell(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional, dropout=0.3)
    reference.eval()
    ours = cell.from_torch(reference).eval()
    x = torch.randn((3, 6, 5) if batch_first else (6, 3, 5))
    state = _state(cell, ((2 if bidirectional else 1) * 2, 3, 7)) if with_state else None
    expected, got = _flatten(reference(x, state)), _flatten(ours(x, state))
    assert [t.shape for t in got] == [t.shape for t in expected]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("torch_cell", "cell"), CELLS, ids=CELL_IDS)
def test_equals_torch_unbatched_and_without_bias(torch_cell: type[nn.RNNBase], cell: type[BaseCompressedRNN]) -> None:
    reference = torch_cell(4, 5, bias=False, bidirectional=True).eval()
    ours = cell.from_torch(reference).eval()
    x = torch.randn(7, 4)  # (T, F): no batch dimension
    state = _state(cell, (2, 5))
    for a, b in zip(_flatten(ours(x, state)), _flatten(reference(x, state)), strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("torch_cell", "cell"), CELLS, ids=CELL_IDS)
def test_gradients_equal_torch(torch_cell: type[nn.RNNBase], cell: type[BaseCompressedRNN]) -> None:
    reference = torch_cell(5, 6, num_layers=2, batch_first=True)
    ours = cell.from_torch(reference)
    x = torch.randn(2, 4, 5)
    for module in (reference, ours):
        output, _ = module(x)
        (output**2).sum().backward()
    for layer in range(2):
        torch.testing.assert_close(ours.w_ih[layer].weight.grad, getattr(reference, f"weight_ih_l{layer}").grad)
        torch.testing.assert_close(ours.w_hh[layer].weight.grad, getattr(reference, f"weight_hh_l{layer}").grad)
        # b = b_ih + b_hh, so dL/db = dL/db_ih (= dL/db_hh for the merged gates).
        torch.testing.assert_close(ours.w_ih[layer].bias.grad, getattr(reference, f"bias_ih_l{layer}").grad)


@pytest.mark.parametrize("cell", [CompressedLSTM, CompressedGRU], ids=CELL_IDS)
def test_dropout_only_between_layers_and_in_training(cell: type[BaseCompressedRNN]) -> None:
    x = torch.randn(6, 2, 4)
    for layers, changes in ((1, False), (2, True)):
        rnn = cell(4, 5, num_layers=layers, dropout=0.5)
        trained = rnn.train()(x)[0]
        assert torch.allclose(trained, rnn.eval()(x)[0]) is not changes


# --- every compression method as gate matrices -------------------------------------


@pytest.mark.parametrize("method", compression_methods())
@pytest.mark.parametrize("cell", [CompressedLSTM, CompressedGRU], ids=CELL_IDS)
def test_every_method_runs_and_trains(method: str, cell: type[BaseCompressedRNN]) -> None:
    rnn = _compressed(cell, method, batch_first=True)
    x = torch.randn(2, 5, 6)
    outputs = _flatten(rnn(x))
    assert outputs[0].shape == (2, 5, 16)  # (N, T, D H)
    assert all(s.shape == (4, 2, 8) for s in outputs[1:])  # (num_layers D, N, H)
    sum(t.square().sum() for t in outputs).backward()
    for name, parameter in rnn.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name


def test_factory_spec_builds_by_for_compression() -> None:
    rnn = CompressedLSTM(10, 16, w_hh=functools.partial(KroneckerLinear.for_compression, factor=4.0))
    # W_hh is 64 x 16; 4x means 1024 / 4 = 256 values. No factor pair stores exactly 256
    # (m1 n1 + m2 n2 with m1 m2 = 64, n1 n2 = 16); the closest is 260, e.g. A 4x1 and
    # B 16x16; the next are 136 (A 2x4, B 32x4) and 514 (A 2x1, B 32x16).
    assert rnn.w_hh[0].stored_parameters() == 260
    assert rnn(torch.randn(3, 2, 10))[0].shape == (3, 2, 16)


# --- hw_models accounting -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "torch_cell", "params", "torch_params", "macs_per_step"),
    [
        # F 10, H 16, 2 layers, bidirectional. LSTM per direction: layer 0 64*10 + 64*16
        # + 64 (merged bias) = 1728, layer 1 64*32 + 64*16 + 64 = 3136; x2 = 9728.
        # PyTorch adds b_hh (64) per layer and direction: 9728 + 4*64 = 9984. MACs per
        # step: layer 0 640 + 1024 + 3*16 = 1712, layer 1 2048 + 1024 + 48 = 3120; x2 = 9664.
        (CompressedLSTM, nn.LSTM, 9728, 9984, 9664),
        # GRU: layer 0 48*10 + 48*16 + 4*16 (b_r, b_z, b_in, b_hn) = 1312, layer 1 48*32 +
        # 768 + 64 = 2368; x2 = 7360. PyTorch stores 6H biases: +2*16 per layer and
        # direction = 7488. MACs: 480 + 768 + 48 = 1296 and 1536 + 768 + 48 = 2352; x2 = 7296.
        (CompressedGRU, nn.GRU, 7360, 7488, 7296),
    ],
    ids=CELL_IDS,
)
def test_dense_counts_by_hand(
    cell: type[BaseCompressedRNN], torch_cell: type[nn.RNNBase], params: int, torch_params: int, macs_per_step: int
) -> None:
    rnn = cell(10, 16, num_layers=2, bidirectional=True)
    assert rnn.stored_parameters() == sum(p.numel() for p in rnn.parameters()) == params
    assert sum(p.numel() for p in torch_cell(10, 16, num_layers=2, bidirectional=True).parameters()) == torch_params
    b = NetworkBuilder("rnn", input_shape=(49, 10))
    rnn.to_network(b, b.input)
    report = estimate(b.build(), "stm32f446re", "ideal")
    assert report.params == params
    assert report.macs == 49 * macs_per_step


@pytest.mark.parametrize("method", compression_methods())
@pytest.mark.parametrize("cell", [CompressedLSTM, CompressedGRU], ids=CELL_IDS)
def test_hw_models_counts_equal_the_module(method: str, cell: type[BaseCompressedRNN]) -> None:
    rnn = _compressed(cell, method).eval()
    _set_real_masks(rnn)
    steps = 5
    b = NetworkBuilder("rnn", input_shape=(steps, 6))
    rnn.to_network(b, b.input)
    report = estimate(b.build(), "stm32f446re", "ideal")
    matrices = [*rnn.w_ih, *rnn.w_hh]
    # Deployed values: the matrices as stored plus 4 H = 32 biases per layer and direction.
    assert report.nonzero_params == rnn.stored_parameters() == sum(m.stored_parameters() for m in matrices) + 4 * 32
    # Per step: each matrix once plus 3 H element-wise products, per layer and direction.
    assert report.macs == steps * (sum(_matrix_macs(m) for m in matrices) + 4 * 3 * 8)
    if method in MATMUL_ONLY:
        with FlopCounterMode(display=False) as counter:
            rnn(torch.randn(steps, 1, 6))
        assert counter.get_total_flops() == 2 * steps * sum(_matrix_macs(m) for m in matrices)


@pytest.mark.parametrize("cell", [CompressedLSTM, CompressedGRU], ids=CELL_IDS)
def test_network_shapes_and_bits(cell: type[BaseCompressedRNN]) -> None:
    rnn = cell(6, 8, num_layers=2, bidirectional=True, w_hh=("kronecker", {}))
    rnn.w_hh[1].weight_bits = 4
    b = NetworkBuilder("rnn", input_shape=(7, 6))
    assert b.shape(rnn.to_network(b, b.input, name="enc")) == (16,)  # final h of both directions
    assert b.shape(rnn.to_network(b, b.input, return_sequences=True)) == (7, 16)
    net = b.build()
    layers = {layer.name: layer for layer in net.layers}
    assert {"enc_l0", "enc_l0_reverse", "enc_l1", "enc_l1_reverse"} <= set(layers)
    assert layers["enc_l0_reverse"].weights["w_hh"].bits == 4
    assert layers["enc_l0"].weights["w_hh"].bits == 32
    assert layers["enc_l1"].weights["w_hh"].structure == rnn.w_hh[2].weight_structure()
    b8 = NetworkBuilder("rnn8", input_shape=(7, 6))
    rnn.to_network(b8, b8.input, weight_bits=8)
    assert {w.bits for layer in b8.build().layers for w in layer.weights.values()} == {8}


@pytest.mark.parametrize("cell", [CompressedLSTM, CompressedGRU], ids=CELL_IDS)
def test_int8_qat_wraps_the_gate_matrices(cell: type[BaseCompressedRNN]) -> None:
    rnn = prepare_qat(cell(6, 8, num_layers=2, w_hh=("kronecker", {})), bits=8)
    output = rnn(torch.randn(5, 2, 6))[0]
    output.square().sum().backward()
    assert rnn.w_hh[1].weight_structure() == KroneckerLinear(8, cell.GATES * 8).weight_structure()
    b = NetworkBuilder("rnn", input_shape=(5, 6))
    rnn.to_network(b, b.input)
    net = b.build()
    assert {w.bits for layer in net.layers for w in layer.weights.values()} == {8}
    assert estimate(net, "stm32f446re", "ideal").nonzero_params == rnn.stored_parameters()


# --- errors and plumbing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"proj_size": 4}, "proj_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"dropout": 1.5}, "dropout"),
        ({"w_ih": ("no_such_method", {})}, "no_such_method"),
        ({"w_hh": 42}, "w_hh"),
        ({"w_hh": ("low_rank",)}, "w_hh"),
        ({"w_hh": lambda n, m, *, bias: KroneckerLinear(n + 1, m, bias)}, "w_hh"),
    ],
)
def test_invalid_options_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    options = {"input_size": 4, "hidden_size": 6, **kwargs}
    with pytest.raises(InvalidCompressionError, match=field):
        CompressedLSTM(**options)


def test_invalid_inputs_are_rejected() -> None:
    lstm = CompressedLSTM(4, 6)
    with pytest.raises(InvalidRNNInputError, match="input_size=4"):
        lstm(torch.randn(5, 2, 3))
    with pytest.raises(InvalidRNNInputError, match=r"hx\[0\]"):
        lstm(torch.randn(5, 2, 4), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6)))
    with pytest.raises(InvalidRNNInputError, match="tuple"):
        lstm(torch.randn(5, 2, 4), torch.zeros(1, 2, 6))
    b = NetworkBuilder("rnn", input_shape=(5, 3))
    with pytest.raises(InvalidRNNInputError, match="x"):
        lstm.to_network(b, b.input)


def test_pickle_and_deepcopy_keep_outputs() -> None:
    gru = CompressedGRU(4, 6, w_ih="kronecker", w_hh=functools.partial(KroneckerLinear.for_compression, factor=3))
    gru.eval()
    x = torch.randn(5, 2, 4)
    expected = gru(x)[0]
    for clone in (pickle.loads(pickle.dumps(gru)), copy.deepcopy(gru)):
        torch.testing.assert_close(clone(x)[0], expected)
