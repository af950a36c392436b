"""Reference networks from the literature, used by docs/hw_models.md, tests and bench/.

Each is also shipped as JSON in examples/ (`python -m hw_models.reference examples/`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hw_models.builder import NetworkBuilder
from hw_models.ir import NetworkSpec, Sparse


def ds_cnn_kws() -> NetworkSpec:
    """MLPerf Tiny keyword-spotting DS-CNN (Hello Edge DS-CNN-S, arXiv 1711.07128).

    49 x 10 MFCC input; a 10x4 stride-2 conv with 64 filters, four depthwise-separable
    blocks of 64 channels, average pooling, 12 classes. BN and ReLU are folded.
    """
    b = NetworkBuilder("ds_cnn_kws", (49, 10, 1))
    x = b.relu(b.batch_norm(b.conv2d(b.input, 64, (10, 4), stride=2, name="conv1"), name="bn1"), name="relu1")
    for i in range(1, 5):
        x = b.depthwise_conv2d(x, 3, name=f"dw{i}")
        x = b.relu(b.batch_norm(x, name=f"dw{i}_bn"), name=f"dw{i}_relu")
        x = b.conv2d(x, 64, 1, name=f"pw{i}")
        x = b.relu(b.batch_norm(x, name=f"pw{i}_bn"), name=f"pw{i}_relu")
    x = b.avg_pool2d(x, (25, 5), name="pool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, 12, name="fc")
    return b.build([b.softmax(x, name="softmax")])


def resnet8_cifar10() -> NetworkSpec:
    """MLPerf Tiny image-classification ResNet-8 (16/32/64 filters, CIFAR-10 32x32x3)."""
    b = NetworkBuilder("resnet8_cifar10", (32, 32, 3))
    x = b.conv2d(b.input, 16, 3, activation="relu", name="conv1")
    for stage, (filters, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        y = b.conv2d(x, filters, 3, stride=stride, activation="relu", name=f"s{stage}_conv1")
        y = b.conv2d(y, filters, 3, name=f"s{stage}_conv2")
        shortcut = x if stride == 1 else b.conv2d(x, filters, 1, stride=stride, name=f"s{stage}_proj")
        x = b.add_tensors([shortcut, y], activation="relu", name=f"s{stage}_add")
    x = b.avg_pool2d(x, 8, name="pool")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, 10, name="fc")
    return b.build([b.softmax(x, name="softmax")])


def sparse_cnn_mnist() -> NetworkSpec:
    """A SpArSe-style pruned MNIST CNN (arXiv 1905.12107 Fig. 4 shape: conv-pool x2, FC x2).

    Per-layer densities as SpArSe finds them: the big dense layer pruned hardest.
    """
    b = NetworkBuilder("sparse_cnn_mnist", (28, 28, 1))
    x = b.conv2d(b.input, 8, 5, padding="valid", activation="relu", name="conv1")
    x = b.max_pool2d(x, 2, name="pool1")
    x = b.conv2d(x, 16, 5, padding="valid", activation="relu", structure=Sparse(0.5, "csr"), name="conv2")
    x = b.max_pool2d(x, 2, name="pool2")
    x = b.flatten(x, name="flatten")
    x = b.linear(x, 64, activation="relu", structure=Sparse(0.1, "csr"), name="fc1")
    x = b.linear(x, 10, structure=Sparse(0.5, "bitmask"), name="fc2")
    return b.build([b.softmax(x, name="softmax")])


REFERENCE_NETWORKS: dict[str, Callable[[], NetworkSpec]] = {
    "ds_cnn_kws": ds_cnn_kws,
    "resnet8_cifar10": resnet8_cifar10,
    "sparse_cnn_mnist": sparse_cnn_mnist,
}


def write_examples(directory: Path) -> list[Path]:
    """Write every reference network as `<name>.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in REFERENCE_NETWORKS.items():
        path = directory / f"{name}.json"
        path.write_text(make().to_json() + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples")):
        print(p)
