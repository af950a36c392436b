"""The extension point for export formats: :class:`BaseExportFormat`, its registry, and accuracy checks.

A format writes the model files of a bundle; :mod:`sparse_nas.export.bundle` adds the
manifest and zips it. Formats register themselves by name with :func:`register_format`
(at the bottom of their module); the names are the API's ``?format=`` values.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sparse_nas.errors import SparseNASError
from sparse_nas.export.errors import UnknownExportFormatError

if TYPE_CHECKING:
    from torch import nn

    from sparse_nas.datasets import DatasetSplits, TensorSplit
    from sparse_nas.export.trial import TrainedTrial

EVAL_BATCH_SIZE = 512
"""Samples per forward pass when an exported model is checked on the test split."""


@dataclass(frozen=True)
class FormatReport:
    """What a format wrote, and how the written model scores when loaded back.

    Attributes:
        model_file: The bundle's main file (``model.onnx``, ``state_dict.pt``, ...).
        files: Every file written, the model file included, relative to the bundle.
        test_accuracy: Test-split accuracy of the model read back from ``files`` and
            run the way a user would run it (PyTorch, onnxruntime).
        runtime: What ran the check (``"pytorch"``, ``"onnxruntime 1.x"``).
        details: Format-specific facts for the manifest (opset, quantisation settings).
    """

    model_file: str
    files: tuple[str, ...]
    test_accuracy: float
    runtime: str
    details: dict[str, Any] = field(default_factory=dict)


class BaseExportFormat(abc.ABC):
    """One export format.

    Contract:
    - ``name`` is stable (it is the API's ``?format=`` value and part of file names)
      and registered once; ``tolerance_pp`` is the largest test-accuracy drop, in
      percentage points, the exported model may show against the PyTorch model.
    - :meth:`write` writes only into ``directory`` (which exists and is empty), under
      file names the format chooses (never derived from user input), and does not
      modify ``model``.
    - The check in the returned report reads the model back from the written files.
    - Deterministic for the trial (calibration samples are drawn with the job's seed).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    tolerance_pp: ClassVar[float]

    @abc.abstractmethod
    def write(self, trial: TrainedTrial, model: nn.Module, splits: DatasetSplits, directory: Path) -> FormatReport:
        """Write the format's files for ``trial`` (whose trained model is ``model``) into ``directory``.

        Args:
            trial: The trial and the weights being exported.
            model: ``trial.build_model()``: the trained model in eval mode.
            splits: The job's dataset (calibration uses ``train``, the check ``test``).
            directory: An existing, empty directory.
        """


_REGISTRY: dict[str, BaseExportFormat] = {}


def register_format(cls: type[BaseExportFormat]) -> type[BaseExportFormat]:
    """Class decorator; a name registered twice raises."""
    if cls.name in _REGISTRY:
        raise SparseNASError(f"export format {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def format_names() -> list[str]:
    """Registered format names, in registration order."""
    return list(_REGISTRY)


def get_format(name: str) -> BaseExportFormat:
    """The format called ``name``.

    Raises:
        UnknownExportFormatError: No format has that name; the message lists them.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownExportFormatError(f"format: unknown export format {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def torch_accuracy(model: nn.Module, split: TensorSplit) -> float:
    """Top-1 accuracy of a PyTorch model on a split, in eval mode without autograd."""
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(split), EVAL_BATCH_SIZE):
            logits = model(split.x[start : start + EVAL_BATCH_SIZE])
            correct += int((logits.argmax(dim=1) == split.y[start : start + EVAL_BATCH_SIZE]).sum())
    return correct / len(split)
