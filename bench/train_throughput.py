"""Training throughput (images/s) of our trainer against a plain DataLoader loop.

Three MCU-sized CNNs on MNIST, 28x28x1, batch 128, AdamW (lr 3e-3, weight decay
1e-2), float32 unless stated:

* ``tiny5k``: three 3x3 conv-BN-ReLU layers (8/16/24 channels) with max pooling and
  global average pooling, about 5k parameters.
* ``sparse20k``: the same shape at 16/32/40 channels, about 17k parameters, close to
  the SpArSe MNIST models (Fedorov et al. 2019, arXiv 1905.12107).
* ``dscnn60k``: a DS-CNN (Zhang et al. 2017, "Hello Edge", arXiv 1711.07128): a
  strided 3x3 conv then five depthwise-separable blocks at 100 channels, about 59k
  parameters.

The baseline is the loop most tutorials write: ``TensorDataset`` + ``DataLoader(
shuffle=True)``, ``zero_grad``/``backward``/``step`` and ``loss.item()`` per step. Ours
is :func:`sparse_nas.training.train` in float32 (contiguous and channels-last) and
with bf16 mixed precision. Each figure is the best of ``--repeats`` runs of
``--steps`` optimiser steps after a warm-up, measured in one process at the same
thread count.

Usage: ``.venv/bin/python bench/train_throughput.py [--threads 2 1] [--repeats 3]``
Writes ``bench/results/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparse_nas.datasets import DatasetConfig, DatasetSplits, TensorSplit, load_dataset
from sparse_nas.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZE = 128
LR = 3e-3
WEIGHT_DECAY = 1e-2


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _plain_cnn(widths: tuple[int, int, int]) -> nn.Module:
    a, b, c = widths
    return nn.Sequential(
        *_conv_bn_relu(1, a), nn.MaxPool2d(2),
        *_conv_bn_relu(a, b), nn.MaxPool2d(2),
        *_conv_bn_relu(b, c),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )  # fmt: skip


def tiny5k() -> nn.Module:
    """About 5k parameters."""
    return _plain_cnn((8, 16, 24))


def sparse20k() -> nn.Module:
    """About 17k parameters, SpArSe-sized."""
    return _plain_cnn((16, 32, 40))


def dscnn60k() -> nn.Module:
    """DS-CNN with five depthwise-separable blocks at 100 channels, about 59k parameters."""
    width = 100
    layers = _conv_bn_relu(1, width, 3, 2)
    for stride in (1, 2, 1, 1, 1):
        layers += _conv_bn_relu(width, width, 3, stride, groups=width)
        layers += _conv_bn_relu(width, width, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    # name: (builder, optimiser steps per timed run)
    "tiny5k": (tiny5k, 120),
    "sparse20k": (sparse20k, 80),
    "dscnn60k": (dscnn60k, 30),
}

TRAINER_VARIANTS: dict[str, dict[str, str]] = {
    "trainer_fp32": {"memory_format": "contiguous", "precision": "fp32"},
    "trainer_fp32_channels_last": {"memory_format": "channels_last", "precision": "fp32"},
    "trainer_bf16_channels_last": {"memory_format": "channels_last", "precision": "bf16-mixed"},
}


def dataloader_loop_images_per_second(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """The straightforward loop: DataLoader over a TensorDataset, AdamW, loss.item()."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True, drop_last=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    criterion = nn.CrossEntropyLoss()
    model.train()
    running_loss = 0.0
    start = time.perf_counter()
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    seconds = time.perf_counter() - start
    assert len(loader) == steps
    return steps * BATCH_SIZE / seconds


def trainer_images_per_second(model: nn.Module, splits: DatasetSplits, steps: int, variant: dict[str, str]) -> float:
    """One epoch of our trainer over ``steps`` batches (its small validation included)."""
    config = TrainConfig(
        epochs=1,
        batch_size=BATCH_SIZE,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        memory_format=variant["memory_format"],  # type: ignore[arg-type]
        precision=variant["precision"],  # type: ignore[arg-type]
    )
    result = train(model, splits, config)
    assert result.steps_completed == steps
    return steps * BATCH_SIZE / result.train_seconds


def _subset(splits: DatasetSplits, n_train: int, n_val: int) -> DatasetSplits:
    return DatasetSplits(
        name=splits.name,
        train=TensorSplit(splits.train.x[:n_train], splits.train.y[:n_train]),
        val=TensorSplit(splits.val.x[:n_val], splits.val.y[:n_val]),
        test=splits.test,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        class_names=splits.class_names,
        normalization=splits.normalization,
    )


def measure(name: str, splits: DatasetSplits, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` images/s of the baseline and each trainer variant for one model."""
    build, steps = MODELS[name]
    timed = _subset(splits, steps * BATCH_SIZE, 256)
    warmup = _subset(splits, 20 * BATCH_SIZE, 256)
    x, y = timed.train.x, timed.train.y
    torch.manual_seed(0)
    dataloader_loop_images_per_second(build(), warmup.train.x, warmup.train.y, 20)
    for variant in TRAINER_VARIANTS.values():
        trainer_images_per_second(build(), warmup, 20, variant)
    best: dict[str, float] = {"dataloader_loop": 0.0, **dict.fromkeys(TRAINER_VARIANTS, 0.0)}
    # Interleave the contenders so that a noisy neighbour hurts them alike.
    for _ in range(repeats):
        torch.manual_seed(0)
        rate = dataloader_loop_images_per_second(build(), x, y, steps)
        best["dataloader_loop"] = max(best["dataloader_loop"], rate)
        for key, variant in TRAINER_VARIANTS.items():
            torch.manual_seed(0)
            best[key] = max(best[key], trainer_images_per_second(build(), timed, steps, variant))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    args = parser.parse_args()
    splits = load_dataset(DatasetConfig(name="mnist", seed=0, val_fraction=0.1), data_dir=args.data_dir)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (build, _) in MODELS.items():
            rates = measure(name, splits, args.repeats)
            base = rates["dataloader_loop"]
            row = {
                "model": name,
                "params": sum(p.numel() for p in build().parameters()),
                "threads": threads,
                "images_per_second": {k: round(v, 1) for k, v in rates.items()},
                "speedup_vs_dataloader_loop": {
                    k: round(v / base, 3) for k, v in rates.items() if k != "dataloader_loop"
                },
            }
            rows.append(row)
            print(
                f"threads={threads} {name:10s} params={row['params']:6d} "
                + " ".join(f"{k}={v:8.0f}" for k, v in rates.items())
                + "  speedup "
                + " ".join(
                    f"{k.removeprefix('trainer_')}={v:.2f}x" for k, v in row["speedup_vs_dataloader_loop"].items()
                ),
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "train_throughput",
        "goal": "our trainer >= 2x the images/s of a plain DataLoader loop",
        "batch_size": BATCH_SIZE,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "results": rows,
    }
    (RESULTS / "train_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'train_throughput.json'}")


if __name__ == "__main__":
    main()
