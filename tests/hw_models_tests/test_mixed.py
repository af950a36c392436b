"""A batch whose weights mix structure kinds (`Mixed`) costs each row as its own kind does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from hw_models import (
    HMD,
    Dense,
    HybridKronecker,
    InvalidNetworkError,
    Kronecker,
    LayerSpec,
    LowRank,
    Mixed,
    NetworkBuilder,
    NetworkSpec,
    Sparse,
    WeightSpec,
    WeightStructure,
    estimate,
    estimate_batch,
)

TOTALS = (
    "params", "nonzero_params", "model_bytes", "runtime_code_bytes", "flash_bytes", "arena_bytes",
    "persistent_bytes", "scratch_bytes", "sram_bytes", "working_memory_bytes", "peak_live_bytes", "macs",
    "latency_ms", "energy_mj",
)
# (rows, cols) of the matrices below: conv 1x1 (32 x 16), LSTM W_ih (4*8 x 16) and
# W_hh (4*8 x 8), linear (32 x 8). Kronecker factors use (8 x 4) second factors.
CONV, W_IH, W_HH, LINEAR = (32, 16), (32, 16), (32, 8), (32, 8)


def kinds_of(m: int, n: int) -> list[WeightStructure]:
    """Every structure kind (and both sides of its branches) for an m x n matrix."""
    return [
        Dense(),
        Sparse(0.3),
        Sparse(0.95),  # past the break-even density: stored and multiplied dense
        LowRank(3),
        Kronecker(((m // 8, n // 4), (8, 4))),
        Kronecker(((m // 8, n // 4), (8, 4)), doping_nonzeros=20),
        HybridKronecker(8, (((m - 8) // 8, n // 4), (8, 4))),
        HMD(2, 2),
        HMD(5, 3),
    ]


def rows_of(m: int, n: int, shift: int, size: int) -> list[WeightStructure]:
    """`size` structures cycling through every kind, starting at `shift`."""
    all_kinds = kinds_of(m, n)
    return [all_kinds[(i + shift) % len(all_kinds)] for i in range(size)]


def _stack(values: Sequence[Any]) -> Any:
    if isinstance(values[0], tuple):
        return tuple(_stack([v[i] for v in values]) for i in range(len(values[0])))
    if isinstance(values[0], str):
        return values[0]
    return np.asarray(values)


def stack_plain(structures: Sequence[WeightStructure]) -> WeightStructure:
    """One structure of a single kind whose fields are arrays over `structures`."""
    cls = type(structures[0])
    return cls(**{f.name: _stack([getattr(s, f.name) for s in structures]) for f in fields(cls)})


def mixed_of(structures: Sequence[WeightStructure]) -> Mixed:
    """A Mixed built row by row, independently of search_spaces' construction."""
    defaults = {f.name: f.default for f in fields(Mixed) if f.name != "kind"}
    union: dict[str, list[Any]] = {}
    for i, s in enumerate(structures):
        for f in fields(s):
            union.setdefault(f.name, [defaults[f.name]] * len(structures))[i] = getattr(s, f.name)
    return Mixed(np.asarray([s.kind for s in structures]), **{k: _stack(v) for k, v in union.items()})


def network(conv: Any, w_ih: Any, w_hh: Any, linear: Any, bits: Any) -> NetworkBuilder:
    """conv 1x1 -> pool -> 2 steps of 16 -> LSTM -> linear -> classifier, with the given structures."""
    b = NetworkBuilder("mixed", (6, 6, CONV[1]))
    x = b.conv2d(b.input, CONV[0], 1, activation="relu", weight_bits=bits, structure=conv, name="conv")
    x = b.reshape(b.global_avg_pool(x, name="pool"), (2, W_IH[1]), name="steps")
    x = b.lstm(x, W_HH[1], weight_bits=bits, w_ih=w_ih, w_hh=w_hh, name="lstm")
    x = b.linear(x, LINEAR[0], activation="relu", weight_bits=bits, structure=linear, name="fc")
    b.linear(x, 10, weight_bits=bits, name="classifier")
    return b


SIZE = 18


@pytest.fixture(scope="module")
def rows() -> dict[str, Any]:
    return {
        "conv": rows_of(*CONV, 0, SIZE),
        "w_ih": rows_of(*W_IH, 3, SIZE),
        "w_hh": rows_of(*W_HH, 5, SIZE),
        "linear": rows_of(*LINEAR, 7, SIZE),
        "bits": np.where(np.arange(SIZE) % 4 == 3, 4, 8),
    }


@pytest.mark.parametrize("runtime", ["tflm", "ideal"])
def test_mixed_batch_equals_single_kind_batches_row_by_row(rows, runtime):
    names = ("conv", "w_ih", "w_hh", "linear")
    mixed = estimate_batch(
        network(*(mixed_of(rows[k]) for k in names), rows["bits"]).build_batch(), "stm32f446re", runtime
    )
    assert mixed.size == SIZE
    # Rows grouped by their tuple of kinds form single-kind batches.
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in range(SIZE):
        groups.setdefault(tuple(rows[k][i].kind for k in names), []).append(i)
    assert len(groups) > 1
    for members in groups.values():
        plain = [stack_plain([rows[k][i] for i in members]) for k in names]
        report = estimate_batch(
            network(*plain, rows["bits"][members]).build_batch(), "stm32f446re", runtime
        )
        for key in TOTALS:
            np.testing.assert_allclose(
                getattr(mixed, key)[members], np.broadcast_to(getattr(report, key), (len(members),)),
                rtol=1e-12, err_msg=key,
            )


def test_mixed_batch_equals_single_estimates(rows):
    names = ("conv", "w_ih", "w_hh", "linear")
    mixed = estimate_batch(network(*(mixed_of(rows[k]) for k in names), rows["bits"]).build_batch(), "rp2040")
    for i in range(SIZE):
        single = estimate(network(*(rows[k][i] for k in names), int(rows["bits"][i])).build(), "rp2040")
        for key in TOTALS:
            assert getattr(mixed, key)[i] == pytest.approx(getattr(single, key)), (i, key)


def test_build_turns_a_one_kind_mixed_into_that_structure():
    s = Mixed(np.asarray(["low_rank"]), rank=np.asarray([3]))
    net = network(Dense(), Dense(), Dense(), s, 8).build()
    assert net.layers[-2].weights["weight"].structure == LowRank(3)


def test_build_refuses_a_mixed_of_several_kinds():
    s = Mixed(np.asarray(["low_rank", "dense"]), rank=np.asarray([3, 1]))
    with pytest.raises(InvalidNetworkError, match="one structure kind"):
        network(Dense(), Dense(), Dense(), s, 8).build()


def test_mixed_is_not_a_network_structure():
    with pytest.raises(InvalidNetworkError, match="kind"):
        Mixed(np.asarray(["dense", "pruned"]))
    b = NetworkBuilder("one", (4,))
    b.linear(b.input, 4)
    net = b.build()
    layer = net.layers[0]
    weights = {"weight": WeightSpec((4, 4), structure=Mixed(np.asarray(["dense"])))}
    bad = LayerSpec(layer.name, layer.op, layer.inputs, layer.output, layer.attrs, weights)
    with pytest.raises(InvalidNetworkError, match="only in batches"):
        NetworkSpec("bad", net.inputs, (bad,), net.tensors, net.outputs)
