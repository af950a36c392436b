"""Magnitude pruning and learned-threshold pruning (search_spaces.compression._pruning)."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from hw_models import NetworkBuilder, Sparse, estimate
from search_spaces.compression._pruning import LearnedThresholdLinear, MagnitudePrunedLinear, cubic_density
from search_spaces.compression._registry import make_linear
from search_spaces.errors import InvalidCompressionError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _nonzero_cost(layer, in_features: int, out_features: int) -> int:
    b = NetworkBuilder("one", input_shape=(in_features,))
    b.linear(b.input, out_features, bias=False, weight_bits=layer.weight_bits, structure=layer.weight_structure())
    return estimate(b.build(), "stm32f446re", "ideal").nonzero_params


# --- cubic schedule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),  # before t0: initial density
        (10, 1.0),  # t0
        (35, 0.2 + 0.8 * (1 - 25 / 100) ** 3),  # hand: 0.2 + 0.8 * 0.421875 = 0.5375
        (60, 0.2 + 0.8 * 0.5**3),  # half-way: 0.3
        (110, 0.2),  # end
        (500, 0.2),  # after
    ],
)
def test_cubic_density_matches_zhu_gupta_eq1(step: int, expected: float) -> None:
    assert cubic_density(step, start_step=10, end_step=110, final_density=0.2) == pytest.approx(expected)


def test_cubic_density_from_a_partial_initial_density() -> None:
    # d_i = 0.9, d_f = 0.1, a quarter of the way: 0.1 + 0.8 * 0.75^3 = 0.4375.
    assert cubic_density(25, 0, 100, 0.1, initial_density=0.9) == pytest.approx(0.4375)


def test_cubic_density_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidCompressionError, match="final_density"):
        cubic_density(0, 0, 10, -0.1)
    with pytest.raises(InvalidCompressionError, match="final_density"):
        cubic_density(0, 0, 10, 1.5)
    # Zero is a valid end point: a doped Kronecker layer searched with no doping.
    assert cubic_density(10, 0, 10, 0.0) == 0.0
    with pytest.raises(InvalidCompressionError, match="end_step"):
        cubic_density(0, 10, 5, 0.5)


# --- magnitude pruning ----------------------------------------------------------------


@pytest.mark.parametrize("density", [0.5, 0.1, 0.37, 1.0])
def test_mask_keeps_exactly_the_largest_weights(density: float) -> None:
    layer = MagnitudePrunedLinear(20, 12)
    magnitudes = layer.weight.detach().abs().flatten().clone()
    layer.prune_to(density)
    keep = math.floor(density * 240 + 0.5)
    assert int(layer.mask.sum()) == keep
    # Oracle: the kept set is the top-k magnitudes of the weights before pruning.
    expected = torch.zeros(240, dtype=torch.bool)
    expected[torch.topk(magnitudes, keep).indices] = True
    assert torch.equal(layer.mask.flatten().bool(), expected)
    assert layer.density == pytest.approx(keep / 240)


def test_mask_starts_dense_unless_pruned_at_init() -> None:
    assert MagnitudePrunedLinear(8, 4, density=0.25).density == 1.0
    assert MagnitudePrunedLinear(8, 4, density=0.25, prune_at_init=True).density == pytest.approx(0.25)


def test_density_is_read_from_the_mask() -> None:
    layer = MagnitudePrunedLinear(10, 10)
    with torch.no_grad():
        layer.mask.zero_()
        layer.mask[:3, :5] = 1
    assert layer.density == pytest.approx(0.15)
    assert layer.weight_structure() == Sparse(0.15, "csr")
    assert layer.stored_parameters() == 15


def test_forward_equals_masked_dense_matrix() -> None:
    layer = MagnitudePrunedLinear(16, 6, prune_at_init=True, density=0.3)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)
    assert int((layer.dense_weight() != 0).sum()) == int(layer.mask.sum())


def test_pruned_weights_stay_zero_after_optimiser_steps() -> None:
    layer = MagnitudePrunedLinear(16, 8)
    layer.prune_to(0.25)
    pruned = layer.mask == 0
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    for _ in range(20):
        opt.zero_grad()
        layer(torch.randn(32, 16)).pow(2).mean().backward()
        assert torch.all(layer.weight.grad[pruned] == 0)
        opt.step()
    layer.eval()
    assert torch.all(layer.dense_weight()[pruned] == 0)
    assert layer.density == pytest.approx(0.25)
    # A later, lower density prunes a superset: pruned weights rank last.
    layer.prune_to(0.1)
    assert torch.all(layer.mask[pruned] == 0)


@pytest.mark.parametrize("fmt", ["csr", "bitmask"])
def test_hw_models_counts_the_mask_nonzeros(fmt: str) -> None:
    layer = make_linear("magnitude_pruning", 48, 20, bias=False, density=0.3, format=fmt, prune_at_init=True)
    spec = layer.weight_spec()
    assert spec.shape == (20, 48) and spec.bits == 32
    assert spec.structure == Sparse(int(layer.mask.sum()) / 960, fmt)
    assert _nonzero_cost(layer, 48, 20) == int(layer.mask.sum()) == layer.stored_parameters() == 288


def test_block_format_prunes_whole_blocks() -> None:
    layer = MagnitudePrunedLinear(10, 6, bias=False, format="block", block_shape=(2, 4))
    layer.prune_to(0.5)  # 3 x 3 = 9 blocks (edge blocks padded) -> keep round(4.5) = 5
    blocks = layer.mask.new_zeros(6, 12)
    blocks[:, :10] = layer.mask
    per_block = blocks.reshape(3, 2, 3, 4).sum(dim=(1, 3))
    assert int((per_block > 0).sum()) == 5
    full = torch.tensor([[min(2, 6 - 2 * r) * min(4, 10 - 4 * c) for c in range(3)] for r in range(3)])
    assert torch.equal(per_block[per_block > 0], full[per_block > 0].float())  # kept blocks are whole
    assert layer.weight_structure() == Sparse(5 / 9, "block", (2, 4))
    assert layer.stored_parameters() == 5 * 8 == _nonzero_cost(layer, 10, 6)


def test_magnitude_knobs_are_validated() -> None:
    with pytest.raises(InvalidCompressionError, match="density"):
        make_linear("magnitude_pruning", 4, 4, density=0.0)
    with pytest.raises(InvalidCompressionError, match="format"):
        make_linear("magnitude_pruning", 4, 4, format="coo")
    with pytest.raises(InvalidCompressionError, match="density"):
        MagnitudePrunedLinear(4, 4).prune_to(1.5)


def test_pruned_layers_pickle_and_deepcopy() -> None:
    for layer in (MagnitudePrunedLinear(6, 3, prune_at_init=True), LearnedThresholdLinear(6, 3)):
        x = torch.randn(2, 6)
        layer.eval()
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(clone(x), layer(x))


# --- learned threshold ----------------------------------------------------------------


def test_gradient_reaches_the_threshold_and_weights() -> None:
    layer = LearnedThresholdLinear(12, 5)
    layer.train()
    layer(torch.randn(8, 12)).sum().backward()
    assert layer.threshold.grad is not None and layer.threshold.grad != 0
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_training_uses_the_sigmoid_mask_and_eval_the_hard_mask() -> None:
    layer = LearnedThresholdLinear(12, 5, temperature=0.2)
    with torch.no_grad():
        layer.threshold.fill_(0.1)
    x = torch.randn(3, 12)
    w = layer.weight.detach()
    tau = 0.2 * w.abs().mean()
    layer.train()
    torch.testing.assert_close(layer(x), x @ (w * torch.sigmoid((w.abs() - 0.1) / tau)).T + layer.bias)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ (w * (w.abs() > 0.1)).T + layer.bias)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


def test_hard_density_follows_the_threshold() -> None:
    layer = LearnedThresholdLinear(30, 10, bias=False)
    assert layer.density == 1.0
    magnitudes = layer.weight.detach().abs().flatten()
    for t in (0.02, 0.08, 0.15):
        with torch.no_grad():
            layer.threshold.fill_(t)
        kept = int((magnitudes > t).sum())
        assert layer.density == pytest.approx(kept / 300)
        assert layer.weight_structure() == Sparse(kept / 300, "csr")
        assert layer.stored_parameters() == kept == _nonzero_cost(layer, 30, 10)
    densities = []
    for t in (0.0, 0.05, 0.1, 0.15):
        with torch.no_grad():
            layer.threshold.fill_(t)
        densities.append(layer.density)
    assert densities == sorted(densities, reverse=True) and densities[0] > densities[-1]


def test_density_penalty_drives_density_down() -> None:
    layer = LearnedThresholdLinear(32, 16, density=0.3)
    teacher = torch.randn(16, 32) * 0.2
    opt = torch.optim.Adam(layer.parameters(), lr=5e-3)
    layer.train()
    for _ in range(150):
        x = torch.randn(64, 32)
        loss = (layer(x) - x @ teacher.T).pow(2).mean() + 10.0 * layer.density_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layer.threshold.item() > 0
    assert layer.density < 0.45
    assert layer.density_penalty(1.0).item() == 0.0  # only pushes density down


def test_learned_threshold_knobs_are_validated() -> None:
    with pytest.raises(InvalidCompressionError, match="temperature"):
        make_linear("learned_threshold", 4, 4, temperature=0.0)
    with pytest.raises(InvalidCompressionError, match="format"):
        make_linear("learned_threshold", 4, 4, format="block")
    with pytest.raises(InvalidCompressionError, match="target_density"):
        LearnedThresholdLinear(4, 4).density_penalty(0.0)
