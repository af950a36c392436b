"""Compressed LSTMs on the Free Spoken Digit Dataset at matched compression factors.

Issue 4's benchmark. A one-layer LSTM (hidden size 128 by default) reads the 49 x 10
MFCC frames of a clip and a dense linear layer classifies its last hidden state. Both
gate matrices (W_ih 512 x 10 and W_hh 512 x 128) are compressed with each method at
about 2x, 5x, 15x and 30x (the factor counts the gate matrices' stored values, biases
excluded); a smaller dense LSTM with as many parameters as the compressed models at
each factor is the "equal size" baseline. Methods and sources:

* ``magnitude_pruning``: Zhu & Gupta 2017 (arXiv 1710.01878), cubic schedule from 10%
  to 70% of training, per-matrix magnitude masks (`LayerwisePruningSchedulePhase`).
* ``low_rank``: LMF, as compared against in Thakker et al. (arXiv 1906.02876).
* ``kronecker``, ``hybrid_kronecker``: Thakker et al., arXiv 1906.02876.
* ``doped_kronecker``: arXiv 2001.08896; the overlay is annealed on the same cubic
  schedule, with co-matrix dropout 0.5.
* ``hmd``: Thakker et al., arXiv 1906.04886 (D1 variant, two rank-1 blocks).

Each matrix's knobs come from the method's ``for_compression``: W_ih gets the target
factor, W_hh the factor that brings the pair to the target (W_ih is 512 x 10, so some
methods cap it, e.g. HMD at 4.95x); a cell whose reached factor is more than 25% off
the target is skipped and listed. Every model trains with the same budget
(`TRAIN_CONFIG`: 20 epochs of batch 64, AdamW one-cycle at lr 5e-3, label smoothing
0.1, gradient clipping 1.0) on the official split (takes 0-4 are the test set, 10% of the rest is validation, seed 0).

Reported per model: test accuracy, deployed parameters (what hw_models counts: gate
matrices as stored plus 4 H biases and the classifier), model bytes (hw_models,
TFLM, int8 weights), MACs per clip, CPU time per clip (batch 1, 1 thread, median of
`--timing-runs` runs of this repository's Python time loop, measured after all
training), predicted latency on the STM32F446RE (hw_models, TFLM, int8).

Training runs in `--workers` spawned processes of one intra-op thread each (default
2, for a 2-core machine): the time loop is many small ops, so one thread per process
loses little, and two OpenMP threads per process spin-wait for each other when the
machine is shared. Results do not depend on the number of workers (each run is seeded).

Usage: ``.venv/bin/python bench/compression_rnn.py [--quick] [--workers 2]``
Writes ``bench/results/compression_rnn.json`` (``compression_rnn_quick.json`` with
``--quick``, a smoke run: 2 epochs on 300 clips, hidden 32, factors 5x and 15x).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hw_models import NetworkBuilder, estimate
from search_spaces.compression._base import BaseCompressedLinear
from search_spaces.compression._hmd import HMDLinear
from search_spaces.compression._kronecker import DopedKroneckerLinear, HybridKroneckerLinear, KroneckerLinear
from search_spaces.compression._lowrank import LowRankLinear
from search_spaces.compression._pruning import MagnitudePrunedLinear
from search_spaces.compression._rnn import CompressedLSTM, GateMatrixFactory
from sparse_nas.datasets import DatasetConfig, DatasetSplits, load_dataset
from sparse_nas.training import LayerwisePruningSchedulePhase, TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEVICE = "stm32f446re"
NUM_CLASSES = 10
FRAMES, FEATURES = 49, 10
FACTORS = (2.0, 5.0, 15.0, 30.0)
# A reached factor further than this ratio from the target does not count as matched.
FACTOR_TOLERANCE = 1.25
FACTORISED: dict[str, Any] = {
    "low_rank": LowRankLinear,
    "kronecker": KroneckerLinear,
    "hybrid_kronecker": HybridKroneckerLinear,
    "doped_kronecker": DopedKroneckerLinear,
    "hmd": HMDLinear,
}
METHODS = ("magnitude_pruning", *FACTORISED)
TRAIN_CONFIG = TrainConfig(
    epochs=20,
    batch_size=64,
    lr=5e-3,
    weight_decay=1e-2,
    schedule="onecycle",
    label_smoothing=0.1,
    grad_clip_norm=1.0,
    memory_format="contiguous",
    seed=0,
)


class SpokenDigitLSTM(nn.Module):
    """CompressedLSTM over (N, 49, 10) MFCCs, then a dense classifier on h_T: (N, 10) logits."""

    def __init__(self, hidden: int, w_ih: GateMatrixFactory | str, w_hh: GateMatrixFactory | str) -> None:
        super().__init__()
        self.rnn = CompressedLSTM(FEATURES, hidden, batch_first=True, w_ih=w_ih, w_hh=w_hh)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n[-1])

    def deployed_parameters(self) -> int:
        """Values a deployment stores: the LSTM's (merged biases) plus the classifier's."""
        return self.rnn.stored_parameters() + sum(p.numel() for p in self.head.parameters())

    def gate_factor(self) -> float:
        """Dense gate-matrix values over stored gate-matrix values (biases excluded)."""
        matrices = [*self.rnn.w_ih, *self.rnn.w_hh]
        dense = sum(m.in_features * m.out_features for m in matrices)
        return dense / sum(m.stored_parameters() for m in matrices)

    def network(self, weight_bits: int = 8) -> Any:
        """The hw_models network of the deployed model with `weight_bits` weights."""
        builder = NetworkBuilder("fsdd_lstm", input_shape=(FRAMES, FEATURES))
        x = self.rnn.to_network(builder, builder.input, weight_bits=weight_bits, name="lstm")
        builder.linear(x, NUM_CLASSES, weight_bits=weight_bits, name="classifier")
        return builder.build()


def final_stored(module: BaseCompressedLinear) -> int:
    """Stored values of a gate matrix once its pruning schedule (if any) has finished."""
    dense = module.in_features * module.out_features
    if isinstance(module, MagnitudePrunedLinear):
        return max(1, math.floor(module.target_density * dense + 0.5))
    if isinstance(module, DopedKroneckerLinear):
        return module.a.numel() + module.b.numel() + math.floor(module.doping_density * dense + 0.5)
    return module.stored_parameters()


@dataclass(frozen=True)
class CellPlan:
    """The gate-matrix factories of one (method, target factor) cell."""

    w_ih: GateMatrixFactory
    w_hh: GateMatrixFactory
    planned_factor: float


def plan_cell(method: str, target: float, hidden: int) -> CellPlan:
    """Factories for W_ih (4 H x F) and W_hh (4 H x H) whose pair compresses about `target`.

    Pruning reaches any factor (density 1 / target for both). A factorised method gives
    W_ih the target; W_hh gets the factor that fills the rest of the pair's budget
    (dense pair / target stored values).
    """
    rows = 4 * hidden
    dense_ih, dense_hh = rows * FEATURES, rows * hidden
    if method == "magnitude_pruning":
        ih_factory = hh_factory = functools.partial(MagnitudePrunedLinear, density=1.0 / target)
    else:
        cls = FACTORISED[method]
        ih_factory = functools.partial(cls.for_compression, factor=target)
        left = (dense_ih + dense_hh) / target - final_stored(ih_factory(FEATURES, rows, bias=True))
        hh_factory = functools.partial(cls.for_compression, factor=dense_hh / max(left, 1.0))
    stored = final_stored(ih_factory(FEATURES, rows, bias=True)) + final_stored(hh_factory(hidden, rows, bias=False))
    return CellPlan(ih_factory, hh_factory, (dense_ih + dense_hh) / stored)


def matched_hidden(parameters: int) -> int:
    """Hidden size of a dense SpokenDigitLSTM whose deployed parameters are closest to `parameters`.

    A dense model stores 4 h (F + h) gate values, 4 h biases and 10 h + 10 classifier values.
    """
    return min(range(1, 512), key=lambda h: abs(4 * h * (FEATURES + h) + 4 * h + 11 * h + NUM_CLASSES - parameters))


def cpu_ms_per_clip(model: nn.Module, clip: torch.Tensor, runs: int) -> float:
    """Median wall time of one (1, 49, 10) forward pass, 1 thread, inference mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(clip)
        for _ in range(runs):
            start = time.perf_counter()
            model(clip)
            times.append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return statistics.median(times) * 1000.0


@dataclass(frozen=True)
class Cell:
    """One row of the table: a model trained once per seed."""

    name: str
    method: str
    target: float | None
    hidden: int
    w_ih: GateMatrixFactory | str
    w_hh: GateMatrixFactory | str
    seeds: tuple[int, ...]

    def build(self, seed: int) -> SpokenDigitLSTM:
        torch.manual_seed(seed)
        return SpokenDigitLSTM(self.hidden, self.w_ih, self.w_hh)


@dataclass(frozen=True)
class SeedResult:
    """What a worker returns for one (cell, seed)."""

    cell: int
    seed: int
    test_accuracy: float
    train_seconds: float
    aborted_reason: str | None
    state_dict: dict[str, torch.Tensor]


_WORKER: dict[str, Any] = {}


def _init_worker(splits: DatasetSplits, config: TrainConfig, cells: list[Cell]) -> None:
    # One intra-op thread per worker: the time loop is many small ops, and two OpenMP
    # threads per process spin-wait for each other on a loaded 2-core machine.
    torch.set_num_threads(1)
    _WORKER.update(splits=splits, config=config, cells=cells)


def train_seed(task: tuple[int, int]) -> SeedResult:
    """Train cell `task[0]` with seed `task[1]` in a worker; test accuracy and trained state."""
    index, seed = task
    cell: Cell = _WORKER["cells"][index]
    model = cell.build(seed)
    phases = (
        [LayerwisePruningSchedulePhase(start_fraction=0.1, end_fraction=0.7, update_every_steps=10)]
        if cell.method in ("magnitude_pruning", "doped_kronecker")
        else []
    )
    result = train(model, _WORKER["splits"], replace(_WORKER["config"], seed=seed), phases=phases, evaluate_test=True)
    if result.test_accuracy is None:
        raise RuntimeError(f"{cell.name}: the trainer returned no test accuracy")
    return SeedResult(index, seed, result.test_accuracy, result.train_seconds, result.aborted_reason, result.state_dict)


def cost_cell(cell: Cell, results: Sequence[SeedResult], clip: torch.Tensor, timing_runs: int) -> dict[str, Any]:
    """The table row of a trained cell: accuracy over seeds, hw_models costs and CPU time of the first seed."""
    results = sorted(results, key=lambda r: r.seed)
    model = cell.build(results[0].seed)
    model.load_state_dict(results[0].state_dict)
    net = model.network(weight_bits=8)
    tflm = estimate(net, DEVICE, "tflm")
    ideal = estimate(net, DEVICE, "ideal")
    if ideal.nonzero_params != model.deployed_parameters():
        raise RuntimeError(
            f"{cell.name}: hw_models counts {ideal.nonzero_params} parameters, the module stores "
            f"{model.deployed_parameters()}"
        )
    accuracies = [r.test_accuracy for r in results]
    return {
        "name": cell.name,
        "method": cell.method,
        "target_factor": cell.target,
        "reached_factor": round(model.gate_factor(), 3),
        "hidden": cell.hidden,
        "seeds": [r.seed for r in results],
        "test_accuracy": statistics.mean(accuracies),
        "test_accuracy_per_seed": accuracies,
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "params": model.deployed_parameters(),
        "model_bytes": tflm.model_bytes,
        "macs": tflm.macs,
        "cpu_ms_per_clip": round(cpu_ms_per_clip(model, clip, timing_runs), 3),
        "stm32f446re_latency_ms": round(tflm.latency_ms, 3),
        "train_seconds": [round(r.train_seconds, 1) for r in results],
        "aborted": [r.aborted_reason for r in results if r.aborted_reason],
        "gates": f"w_ih={model.rnn.w_ih[0].extra_repr()}; w_hh={model.rnn.w_hh[0].extra_repr()}",
    }


def markdown_table(rows: Sequence[dict[str, Any]], baseline_accuracy: float) -> str:
    """The results as a markdown table, accuracy differences against the baseline."""
    lines = [
        "| model | target | reached | H | test acc. (%) | vs. base (pt) | params | model bytes | MACs "
        "| CPU ms/clip | STM32F446RE ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = 100 * r["test_accuracy"]
        spread = f" ± {100 * r['test_accuracy_std']:.1f}" if r["test_accuracy_std"] is not None else ""
        seeds = f" ({len(r['seeds'])} seeds)" if len(r["seeds"]) > 1 else ""
        target = "-" if r["target_factor"] is None else f"{r['target_factor']:g}x"
        lines.append(
            f"| {r['name']}{seeds} | {target} | {r['reached_factor']:.2f}x | {r['hidden']} | {acc:.1f}{spread} "
            f"| {acc - 100 * baseline_accuracy:+.1f} | {r['params']} | {r['model_bytes']} | {r['macs']} "
            f"| {r['cpu_ms_per_clip']:.2f} | {r['stm32f446re_latency_ms']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 epochs, 300 clips")
    parser.add_argument("--workers", type=int, default=2, help="training processes, 1 thread each")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=TRAIN_CONFIG.epochs)
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the baseline and of Kronecker at 15x")
    parser.add_argument("--timing-runs", type=int, default=50)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden, factors, seeds, timing_runs = args.hidden, FACTORS, tuple(range(args.seeds)), args.timing_runs
    config = replace(TRAIN_CONFIG, epochs=args.epochs)
    subset = None
    if args.quick:
        hidden, factors, seeds, timing_runs, subset = 32, (5.0, 15.0), (0, 1), 5, 300
        config = replace(config, epochs=2)
    wall_start = time.perf_counter()
    load_before = os.getloadavg()
    splits = load_dataset(
        DatasetConfig("fsdd", seed=0, val_fraction=0.1, train_subset=subset, options={"layout": "sequence"}),
        data_dir=args.data_dir,
    )
    cells = [Cell("baseline LSTM", "dense", None, hidden, "dense", "dense", seeds)]
    skipped: list[dict[str, Any]] = []
    dense_gates = 4 * hidden * (FEATURES + hidden)
    for target in factors:
        compressed_params = round(dense_gates / target) + 4 * hidden + (hidden + 1) * NUM_CLASSES
        small = matched_hidden(compressed_params)
        cells.append(Cell(f"small LSTM ~{target:g}x", "dense_small", target, small, "dense", "dense", (0,)))
        for method in METHODS:
            plan = plan_cell(method, target, hidden)
            if not 1 / FACTOR_TOLERANCE <= plan.planned_factor / target <= FACTOR_TOLERANCE:
                reason = f"reaches {plan.planned_factor:.2f}x, more than {FACTOR_TOLERANCE}x off the target"
                print(f"skip {method} at {target:g}x: {reason}", flush=True)
                skipped.append({"method": method, "target_factor": target, "reason": reason})
                continue
            cell_seeds = seeds if (method == "kronecker" and target == 15.0) else (0,)
            cells.append(Cell(f"{method} {target:g}x", method, target, hidden, plan.w_ih, plan.w_hh, cell_seeds))
    tasks = [(i, seed) for i, cell in enumerate(cells) for seed in cell.seeds]
    by_cell: dict[int, list[SeedResult]] = {i: [] for i in range(len(cells))}
    # Spawned, not forked: forking a process whose OpenMP runtime is initialised can hang.
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_init_worker, initargs=(splits, config, cells)) as pool:
        for result in pool.imap_unordered(train_seed, tasks):
            by_cell[result.cell].append(result)
            note = f" ({result.aborted_reason})" if result.aborted_reason else ""
            print(
                f"{cells[result.cell].name:<28} seed {result.seed} test {100 * result.test_accuracy:5.1f}% "
                f"train {result.train_seconds:5.0f}s{note}",
                flush=True,
            )
    train_wall_seconds = time.perf_counter() - wall_start
    clip = splits.test.x[:1]
    rows = [cost_cell(cell, by_cell[i], clip, timing_runs) for i, cell in enumerate(cells)]
    wall_seconds = time.perf_counter() - wall_start
    baseline_accuracy = rows[0]["test_accuracy"]
    table = markdown_table(rows, baseline_accuracy)
    print(table)
    kp15 = [r for r in rows if r["method"] == "kronecker" and r["target_factor"] == 15.0]
    out = {
        "benchmark": "compression_rnn" + ("_quick" if args.quick else ""),
        "dataset": "fsdd (MFCC 49 x 10, official split, 10% validation, seed 0)",
        "hidden": hidden,
        "factors": list(factors),
        "train_config": asdict(config),
        "train_subset": subset,
        "rows": rows,
        "skipped": skipped,
        "kronecker_15x_minus_baseline_points": (
            round(100 * (kp15[0]["test_accuracy"] - baseline_accuracy), 2) if kp15 else None
        ),
        "markdown_table": table,
        "wall_seconds": round(wall_seconds, 1),
        "train_wall_seconds": round(train_wall_seconds, 1),
        "workers": args.workers,
        "threads_per_worker": 1,
        "timing": "batch 1, 1 thread, median of timing_runs forward passes after 3 warm-up, after all training",
        "timing_runs": timing_runs,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_before,
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{out['benchmark']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wall {wall_seconds:.0f}s (training {train_wall_seconds:.0f}s); wrote {path}")


if __name__ == "__main__":
    main()
