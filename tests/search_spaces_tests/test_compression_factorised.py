"""Factorised compression layers: low-rank, Kronecker, hybrid/doped Kronecker and HMD.

Oracles: dense reconstructions built independently of the module (torch.kron, explicit
loops for HMD's Algorithm 1), parameter and MAC counts worked out by hand in the
comments, torch's FLOP counter for what the forward really multiplies, and hw_models'
cost of the module's own weight_structure().
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hw_models import NetworkBuilder, estimate
from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.compression._hmd import HMDLinear, block_widths
from search_spaces.compression._kronecker import (
    DopedKroneckerLinear,
    HybridKroneckerLinear,
    KroneckerLinear,
    kronecker_factors,
    kronecker_macs,
    prime_factors,
)
from search_spaces.compression._lowrank import LowRankLinear
from search_spaces.compression._registry import compression_methods, make_linear
from search_spaces.errors import InvalidCompressionError


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def build(method: str, in_features: int, out_features: int, **knobs: Any) -> BaseCompressedLinear:
    """A module by registry name; doped ones get a random overlay pruned to their target."""
    module = make_linear(method, in_features, out_features, **knobs)
    if isinstance(module, DopedKroneckerLinear):
        with torch.no_grad():
            module.overlay.normal_()
        module.prune_to()
    return module


# (method, in_features n, out_features m, knobs, hand-counted stored params, hand-counted MACs)
CASES = [
    # r (m + n) = 3 * (8 + 12) = 60 values; x V^T then U^T: 3*12 + 8*3 = 60 MACs.
    ("low_rank", 12, 8, {"rank": 3}, 60, 60),
    # rank = min(m, n) = 5: 5 * (7 + 5) = 60 both.
    ("low_rank", 5, 7, {"rank": 5}, 60, 60),
    # auto 8x12 -> A 2x3, B 4x4: 6 + 16 = 22; A first 2*3*4 + 2*4*4 = 56 < B first 3*4*4 + 2*3*4 = 72.
    ("kronecker", 12, 8, {}, 22, 56),
    # A 4x4, B 2x3: 16 + 6 = 22; B first 4*3*2 + 4*4*2 = 56 < A first 4*4*3 + 4*3*2 = 72.
    ("kronecker", 12, 8, {"factors": ((4, 4), (2, 3))}, 22, 56),
    # A 1x1, B 5x7 (trivial): 1 + 35 = 36; B first 7*5 + 1*5 = 40 = A first 1*7 + 7*5 = 42 -> 40.
    ("kronecker", 7, 5, {"factors": ((1, 1), (5, 7))}, 36, 40),
    # 2 dense rows: 2*12 = 24; 6x12 block auto -> A 2x4, B 3x3: 8 + 9 = 17; total 41.
    # MACs 24 + min(4*3*(3+2) = 60, 2*3*(4+3) = 42) = 66.
    ("hybrid_kronecker", 12, 8, {"dense_rows": 2}, 41, 66),
    # 5 dense rows of 6: 30; 4x6 block given as A 2x2, B 2x3: 4 + 6 = 10; total 40.
    # MACs 30 + min(2*2*(3+2) = 20, 2*3*(2+2) = 24) = 50.
    ("hybrid_kronecker", 6, 9, {"dense_rows": 5, "factors": ((2, 2), (2, 3))}, 40, 50),
    # KP 22 as above + round(0.25 * 96) = 24 doping non-zeros = 46; MACs 56 + 24 = 80.
    ("doped_kronecker", 12, 8, {"doping_density": 0.25}, 46, 80),
    # density 0.1 of 96 -> floor(9.6 + 0.5) = 10 non-zeros: 22 + 10 = 32; MACs 56 + 10 = 66.
    ("doped_kronecker", 12, 8, {"doping_density": 0.1, "comatrix_dropout": 0.0}, 32, 66),
    # Eq. (1): r n + 2 (m - r) + n = 3*12 + 2*5 + 12 = 58; Eq. (2): 3*12 + 12 + 2*5 = 58.
    ("hmd", 12, 8, {"dense_rows": 3}, 58, 58),
    # no dense rows, 3 blocks of widths 4, 4, 3: 0 + 3*7 + 11 = 32 values; 0 + 11 + 3*7 = 32 MACs.
    ("hmd", 11, 7, {"dense_rows": 0, "rank1_blocks": 3}, 32, 32),
]
IDS = [f"{c[0]}-{c[2]}x{c[1]}-{'-'.join(f'{k}={v}' for k, v in c[3].items())}" for c in CASES]


def real_parameter_count(module: BaseCompressedLinear) -> int:
    """Values of W's parameters, counting the doping overlay by its kept entries."""
    count = 0
    for name, p in module.named_parameters():
        if name == "bias":
            continue
        count += int(module.mask.sum()) if name == "overlay" else p.numel()
    return count


@pytest.mark.parametrize(("method", "n", "m", "knobs", "params", "macs"), CASES, ids=IDS)
def test_forward_equals_dense_weight(method: str, n: int, m: int, knobs: dict, params: int, macs: int) -> None:
    module = build(method, n, m, **knobs).double().eval()
    with torch.no_grad():
        module.bias.uniform_(-1, 1)
        w = module.dense_weight()
        assert w.shape == (m, n)
        for x in (torch.randn(n, dtype=torch.float64), torch.randn(4, 3, n, dtype=torch.float64)):
            torch.testing.assert_close(module(x), x @ w.T + module.bias, atol=1e-5, rtol=0)
    no_bias = make_linear(method, n, m, bias=False, **knobs).eval()
    x = torch.randn(5, n)
    with torch.no_grad():
        torch.testing.assert_close(no_bias(x), x @ no_bias.dense_weight().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("method", "n", "m", "knobs", "params", "macs"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(method: str, n: int, m: int, knobs: dict, params: int, macs: int) -> None:
    module = build(method, n, m, **knobs).train()
    module(torch.randn(16, n)).pow(2).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("method", "n", "m", "knobs", "params", "macs"), CASES, ids=IDS)
def test_params_and_macs_match_hw_models_and_hand_count(
    method: str, n: int, m: int, knobs: dict, params: int, macs: int
) -> None:
    module = build(method, n, m, **knobs)
    builder = NetworkBuilder("one_layer", (n,), bits=8)
    out = builder.linear(
        builder.input, m, bias=False, weight_bits=module.weight_bits, structure=module.weight_structure()
    )
    report = estimate(builder.build([out]), "stm32f446re", "ideal")
    assert module.stored_parameters() == real_parameter_count(module) == params
    assert report.layers[0].params == params
    assert report.layers[0].macs == macs
    spec = module.weight_spec()
    assert spec.shape == (m, n)
    assert spec.structure == module.weight_structure()


@pytest.mark.parametrize(
    ("method", "knobs", "hand_macs"),
    [
        # x V^T (3 x 12) then U^T (8 x 3): 36 + 24.
        ("low_rank", {"rank": 3}, 60),
        # A 2x3, B 4x4, A first: A X (2x3 @ 3x4) = 24, then (2x4) B^T (4x4) = 32.
        ("kronecker", {}, 56),
        # A 4x4, B 2x3, B first: X B^T (4x3 @ 3x2) = 24, then A (4x4 @ 4x2) = 32.
        ("kronecker", {"factors": ((4, 4), (2, 3))}, 56),
        # A 8x12, B 1x1: B first 12*1*(1+8) = 108 > A first 8*1*(12+1) = 104.
        ("kronecker", {"factors": ((8, 12), (1, 1))}, 104),
        # 2x12 dense rows = 24 + 6x12 block A 2x4, B 3x3 A first: 2*4*3 + 2*3*3 = 42.
        ("hybrid_kronecker", {"dense_rows": 2}, 66),
    ],
)
def test_forward_multiplies_as_many_times_as_hw_models_counts(method: str, knobs: dict, hand_macs: int) -> None:
    module = make_linear(method, 12, 8, bias=False, **knobs)
    with FlopCounterMode(display=False) as counter:
        module(torch.randn(1, 12))
    builder = NetworkBuilder("one_layer", (12,))
    out = builder.linear(builder.input, 8, bias=False, structure=module.weight_structure())
    hw_macs = estimate(builder.build([out]), "stm32f446re", "ideal").macs
    assert counter.get_total_flops() // 2 == hand_macs == hw_macs


def test_kronecker_dense_weight_is_torch_kron() -> None:
    module = KroneckerLinear(12, 8)
    torch.testing.assert_close(module.dense_weight(), torch.kron(module.a, module.b))
    hybrid = HybridKroneckerLinear(12, 8, dense_rows=2)
    torch.testing.assert_close(hybrid.dense_weight()[:2], hybrid.dense)
    torch.testing.assert_close(hybrid.dense_weight()[2:], torch.kron(hybrid.a, hybrid.b))
    doped = build("doped_kronecker", 12, 8, doping_density=0.25)
    expected = torch.kron(doped.a, doped.b) + doped.overlay * doped.mask
    torch.testing.assert_close(doped.dense_weight(), expected)


@pytest.mark.parametrize(("n", "m", "r", "k"), [(12, 8, 3, 2), (11, 7, 0, 3), (6, 5, 4, 6)])
def test_hmd_dense_weight_is_algorithm_1(n: int, m: int, r: int, k: int) -> None:
    module = HMDLinear(n, m, dense_rows=r, rank1_blocks=k)
    widths = block_widths(n, k)
    assert sum(widths) == n and max(widths) - min(widths) <= 1
    expected = torch.empty(m, n)
    for i in range(m):
        for j in range(n):
            if i < r:
                expected[i, j] = module.upper[i, j]
            else:
                block = next(b for b in range(k) if j < sum(widths[: b + 1]))
                expected[i, j] = module.u[block, i - r] * module.v[j]
    torch.testing.assert_close(module.dense_weight(), expected)


def test_factor_selection_rule() -> None:
    # Worked by hand from the rule of arXiv 1906.02876 (largest achievable rank
    # min(m1, n1) min(m2, n2), then fewest parameters m1 n1 + m2 n2, then fewest MACs,
    # then the lexicographically smallest shapes).
    assert prime_factors(360) == [2, 2, 2, 3, 3, 5]
    assert prime_factors(1) == []
    # 256 x 256: full rank 256 needs A and B square; d^2 + (256/d)^2 is least at d = 16: 512.
    assert kronecker_factors(256, 256) == ((16, 16), (16, 16))
    # 512 x 128: rank 128 with 256 + 256 = 512 values (the bound 2 sqrt(m n) = 512); the
    # swap ((32, 8), (16, 16)) ties on values and MACs (6144) and loses lexicographically.
    assert kronecker_factors(512, 128) == ((16, 16), (32, 8))
    # 6 x 4: rank 4 by 2x2 kron 3x2 or 3x2 kron 2x2 (10 values, 20 MACs each).
    assert kronecker_factors(6, 4) == ((2, 2), (3, 2))
    # 6 x 12: 2x4 kron 3x3 and its swap have 17 values and rank 2 * 3 = 6.
    assert kronecker_factors(6, 12) == ((2, 4), (3, 3))
    # A prime square matrix only keeps full rank with a 1x1 factor.
    assert kronecker_factors(7, 7) == ((1, 1), (7, 7))
    assert KroneckerLinear(128, 512).factors == ((16, 16), (32, 8))
    assert HybridKroneckerLinear(12, 8, dense_rows=2).factors == ((2, 4), (3, 3))


def test_kronecker_for_compression_hand_examples() -> None:
    # 256 x 256: m1 n1 = 2^k gives 2^k + 2^(16 - k) values. 15x -> k = 4 (4112 values,
    # 15.94x); of the k = 4 and k = 12 shapes only 4x4 kron 64x64 (and its swap) keeps rank 256.
    module = KroneckerLinear.for_compression(256, 256, 15)
    assert module.factors == ((4, 4), (64, 64))
    assert module.stored_parameters() == 4112
    # 30x -> k = 5 (2080 values, 31.5x); the best rank there is 4 * 32 = 128 (A 4x8, B 64x32).
    module = KroneckerLinear.for_compression(256, 256, 30)
    assert module.stored_parameters() == 2080
    assert min(module.factors[0]) * min(module.factors[1]) == 128


LSTM_GATES = (128, 512)  # (in, out) of a 128-unit LSTM's stacked recurrent gate matrix


@pytest.mark.parametrize("target", [2, 5, 15, 30])
def test_for_compression_low_rank_within_one_rank_step(target: float) -> None:
    n, m = LSTM_GATES
    rank = LowRankLinear.for_compression(n, m, target).rank

    def factor(r: int) -> float:
        return m * n / (r * (m + n))

    assert factor(rank + 1) <= target <= factor(rank - 1)


@pytest.mark.parametrize("target", [2, 5, 15, 30])
def test_for_compression_hmd_within_one_row_step(target: float) -> None:
    n, m = LSTM_GATES
    module = HMDLinear.for_compression(n, m, target)
    assert abs(module.stored_parameters() - m * n / target) <= n - module.rank1_blocks


@pytest.mark.parametrize("target", [2, 5, 15, 30])
def test_for_compression_doped_within_one_parameter_after_pruning(target: float) -> None:
    n, m = LSTM_GATES
    module = DopedKroneckerLinear.for_compression(n, m, target)
    assert module.doping_nonzeros == m * n  # the schedule starts dense
    module.prune_to()
    assert abs(module.stored_parameters() - m * n / target) <= 1


@pytest.mark.parametrize("target", [2, 5, 15, 30])
def test_for_compression_hybrid_kronecker_within_7_percent(target: float) -> None:
    n, m = LSTM_GATES
    module = HybridKroneckerLinear.for_compression(n, m, target)
    assert abs(math.log(m * n / module.stored_parameters() / target)) <= math.log(1.07)


def test_for_compression_range_limits() -> None:
    # HMD cannot beat m n / (2 m + n) = 20480 / 1064 = 19.25x on a 512 x 40 matrix.
    assert HMDLinear.for_compression(40, 512, 30).dense_rows == 0
    # Low-rank at rank 1 is m n / (m + n) = 65536 / 512 = 128x at most.
    assert LowRankLinear.for_compression(256, 256, 1000).rank == 1
    # Doping cannot go below the bare KP (density 0).
    assert DopedKroneckerLinear.for_compression(256, 256, 1000).doping_density == 0


@pytest.mark.parametrize(
    ("method", "knobs", "knob"),
    [
        ("low_rank", {"rank": 0}, "rank"),
        ("low_rank", {"rank": 9}, "rank"),
        ("low_rank", {"rank": 2.0}, "rank"),
        ("kronecker", {"factors": ((2, 3), (4, 5))}, "factors"),
        ("kronecker", {"factors": ((0, 3), (4, 4))}, "factors"),
        ("kronecker", {"factors": "2x3"}, "factors"),
        ("hybrid_kronecker", {"dense_rows": 8}, "dense_rows"),
        ("hybrid_kronecker", {"dense_rows": 0}, "dense_rows"),
        ("hybrid_kronecker", {"dense_rows": 2, "factors": ((2, 3), (4, 4))}, "factors"),
        ("doped_kronecker", {"doping_density": 1.5}, "doping_density"),
        ("doped_kronecker", {"doping_density": 0.1, "comatrix_dropout": 1.0}, "comatrix_dropout"),
        ("doped_kronecker", {"doping_density": 0.1, "factors": ((3, 3), (3, 4))}, "factors"),
        ("hmd", {"dense_rows": 8}, "dense_rows"),
        ("hmd", {"dense_rows": -1}, "dense_rows"),
        ("hmd", {"dense_rows": 2, "rank1_blocks": 0}, "rank1_blocks"),
        ("hmd", {"dense_rows": 2, "rank1_blocks": 13}, "rank1_blocks"),
        ("low_rank", {}, "rank"),  # a required knob missing
    ],
)
def test_bad_knobs_raise_naming_the_knob(method: str, knobs: dict, knob: str) -> None:
    with pytest.raises(InvalidCompressionError, match=knob):
        make_linear(method, 12, 8, **knobs)


@pytest.mark.parametrize(
    ("cls", "fixed", "knob"),
    [
        (LowRankLinear, {"rank": 2}, "rank"),
        (KroneckerLinear, {"factors": ((2, 3), (4, 4))}, "factors"),
        (HybridKroneckerLinear, {"dense_rows": 2}, "dense_rows"),
        (DopedKroneckerLinear, {"doping_density": 0.1}, "doping_density"),
        (HMDLinear, {"dense_rows": 2}, "dense_rows"),
        (HMDLinear, {"rank1_blocks": 0}, "rank1_blocks"),
    ],
)
def test_for_compression_rejects_bad_requests(cls: type, fixed: dict, knob: str) -> None:
    with pytest.raises(InvalidCompressionError, match=knob):
        cls.for_compression(12, 8, 2, **fixed)
    with pytest.raises(InvalidCompressionError, match="factor"):
        cls.for_compression(12, 8, 0)


def test_doped_pruning_keeps_largest_magnitudes_and_never_regrows() -> None:
    module = DopedKroneckerLinear(12, 8, doping_density=0.1)
    with torch.no_grad():
        module.overlay.copy_(torch.randperm(96).reshape(8, 12).float() - 48)  # distinct magnitudes except +-k
    assert module.weight_structure().doping_nonzeros == 96
    assert module.prune_to(0.5) == 48
    kept = module.overlay[module.mask].abs()
    assert kept.min() >= module.overlay.detach()[~module.mask].abs().max()
    assert (module.overlay[~module.mask] == 0).all()
    before = module.mask.clone()
    assert module.prune_to() == 10  # floor(0.1 * 96 + 0.5)
    assert (before | module.mask).equal(before)  # a subset of what was kept
    assert module.weight_structure().doping_nonzeros == module.stored_parameters() - 22 == 10
    with pytest.raises(InvalidCompressionError, match="density"):
        module.prune_to(0.5)
    with pytest.raises(InvalidCompressionError, match="density"):
        module.prune_to(-0.1)


def test_comatrix_dropout_drops_overlay_rows_in_training_only() -> None:
    module = build("doped_kronecker", 12, 8, doping_density=0.5, comatrix_dropout=0.5).double()
    x = torch.randn(64, 12, dtype=torch.float64)
    with torch.no_grad():
        kp = x @ torch.kron(module.a, module.b).T + module.bias
        overlay = x @ module.sparse_overlay().T
        module.eval()
        torch.testing.assert_close(module(x), kp + overlay)
        module.train()
        extra = module(x) - kp
    dropped = torch.isclose(extra, torch.zeros_like(extra), atol=1e-9)
    kept = torch.isclose(extra, overlay / 0.5, atol=1e-9)
    assert (dropped | kept).all()
    assert dropped.any() and kept.any()


@pytest.mark.parametrize(
    ("method", "knobs"),
    [
        ("low_rank", {"rank": 2}),
        ("kronecker", {}),
        ("hybrid_kronecker", {"dense_rows": 2}),
        ("doped_kronecker", {"doping_density": 0.2, "comatrix_dropout": 0.2}),
        ("hmd", {"dense_rows": 2}),
    ],
)
def test_training_reduces_loss_on_a_tiny_regression(method: str, knobs: dict) -> None:
    target = torch.nn.Linear(12, 8)
    x = torch.randn(256, 12)
    with torch.no_grad():
        y = target(x)
    module = make_linear(method, 12, 8, **knobs)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.02)

    def eval_loss() -> float:
        module.eval()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(module(x), y).item()

    before = eval_loss()
    module.train()
    for step in range(150):
        if isinstance(module, DopedKroneckerLinear) and step % 30 == 29:
            # Gradual schedule: 1 -> 0.2 over four steps (Zhu & Gupta 2017 cubic ramp).
            module.prune_to(0.2 + 0.8 * (1 - min((step + 1) / 120, 1.0)) ** 3)
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(module(x), y).backward()
        optimiser.step()
    after = eval_loss()
    assert after < 0.5 * before
    if isinstance(module, DopedKroneckerLinear):
        assert module.doping_nonzeros == round(0.2 * 96)


def test_registered_and_picklable() -> None:
    assert {"low_rank", "kronecker", "hybrid_kronecker", "doped_kronecker", "hmd"} <= set(compression_methods())
    for method, n, m, knobs, _, _ in CASES:
        module = build(method, n, m, **knobs).eval()
        x = torch.randn(3, n)
        for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
            with torch.no_grad():
                torch.testing.assert_close(clone(x), module(x))
            assert clone.weight_structure() == module.weight_structure()


def test_kronecker_macs_is_the_cheaper_order() -> None:
    # A 8x12, B 1x1 from the table above: 104 (A first) beats 108 (B first).
    assert kronecker_macs(((8, 12), (1, 1))) == 104
