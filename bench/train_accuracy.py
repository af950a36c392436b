"""End-to-end accuracy goals of the trainer on real data, with their wall time.

Subcommands:

* ``mnist``: a CNN of at most 20k parameters trained on the MNIST training split
  (10% carved out for validation, seed 0) must reach at least 99.0% accuracy on the
  official 10k test set within 5 minutes of wall time on 2 threads.
* ``fsdd``: a small CNN on Free Spoken Digit Dataset MFCCs ((1, 49, 10) per clip)
  must reach at least 95% on the official test split (recordings 0-4 of every
  speaker and digit).

Both use :func:`sparse_nas.training.train` with one-cycle AdamW, label smoothing 0.1
and BN + ReLU convolutions; MNIST adds random shifts of up to 2 pixels.

Usage: ``.venv/bin/python bench/train_accuracy.py {mnist,fsdd} [--threads 2]``
Writes ``bench/results/mnist_20k.json`` or ``bench/results/fsdd_small.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from sparse_nas.datasets import DatasetConfig, load_dataset
from sparse_nas.training import RandomShiftAugment, TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def mnist_cnn() -> nn.Module:
    """Three 3x3 conv-BN-ReLU layers (16/32/48), two max pools, global average pool."""
    return nn.Sequential(
        *_conv_bn_relu(1, 16), nn.MaxPool2d(2),
        *_conv_bn_relu(16, 32), nn.MaxPool2d(2),
        *_conv_bn_relu(32, 48),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10),
    )  # fmt: skip


def fsdd_cnn() -> nn.Module:
    """Four 3x3 conv-BN-ReLU layers (8/16/16/24) on (1, 49, 10) MFCCs, two strided."""
    return nn.Sequential(
        *_conv_bn_relu(1, 8),
        *_conv_bn_relu(8, 16, stride=2),
        *_conv_bn_relu(16, 16),
        *_conv_bn_relu(16, 24, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )  # fmt: skip


GOALS = {
    "mnist": {
        "result_file": "mnist_20k.json",
        "build": mnist_cnn,
        "max_params": 20_000,
        "min_test_accuracy": 0.99,
        "max_wall_seconds": 300.0,
        "config": TrainConfig(
            epochs=16,
            batch_size=128,
            lr=5e-3,
            weight_decay=1e-2,
            schedule="onecycle",
            label_smoothing=0.1,
            memory_format="channels_last",
            seed=0,
        ),
        "augment_shift_px": 2,
    },
    "fsdd": {
        "result_file": "fsdd_small.json",
        "build": fsdd_cnn,
        "max_params": None,
        "min_test_accuracy": 0.95,
        "max_wall_seconds": None,
        "config": TrainConfig(
            epochs=40,
            batch_size=64,
            lr=5e-3,
            weight_decay=1e-2,
            schedule="onecycle",
            label_smoothing=0.1,
            memory_format="channels_last",
            seed=0,
        ),
        "augment_shift_px": None,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(GOALS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = parser.parse_args()
    goal = GOALS[args.dataset]
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()
    splits = load_dataset(DatasetConfig(name=args.dataset, seed=0, val_fraction=0.1), data_dir=args.data_dir)
    load_seconds = time.perf_counter() - wall_start
    torch.manual_seed(0)
    model = goal["build"]()
    params = sum(p.numel() for p in model.parameters())
    shift = goal["augment_shift_px"]
    config: TrainConfig = goal["config"]
    result = train(
        model,
        splits,
        config,
        augment=RandomShiftAugment(shift) if shift else None,
        on_epoch_end=lambda r: print(
            f"epoch {r.epoch:2d} loss {r.train_loss:.4f} val {r.val_accuracy:.4f} {r.epoch_seconds:.1f}s",
            flush=True,
        ),
        evaluate_test=True,
    )
    wall_seconds = time.perf_counter() - wall_start
    assert result.test_accuracy is not None
    met = result.test_accuracy >= goal["min_test_accuracy"]
    if goal["max_params"] is not None:
        met = met and params <= goal["max_params"]
    if goal["max_wall_seconds"] is not None:
        met = met and wall_seconds <= goal["max_wall_seconds"]
    out = {
        "benchmark": goal["result_file"].removesuffix(".json"),
        "dataset": args.dataset,
        "params": params,
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "train_seconds": round(result.train_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "threads": args.threads,
        "goal": {
            "min_test_accuracy": goal["min_test_accuracy"],
            "max_params": goal["max_params"],
            "max_wall_seconds": goal["max_wall_seconds"],
        },
        "goal_met": met,
        "config": asdict(config),
        "augment_shift_px": shift,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    print(
        f"{args.dataset}: params={params} test_accuracy={result.test_accuracy:.4f} "
        f"train_seconds={result.train_seconds:.1f} wall_seconds={wall_seconds:.1f} "
        f"goal {'met' if met else 'NOT met'}"
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / goal["result_file"]
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
