"""The ``pytorch`` format: the trained ``state_dict``, the architecture JSON and the hw_models network.

The model is the search space's own module (compression layers, masks and
quantisation-aware wrappers as trained): :func:`sparse_nas.export.rebuild_model`
builds it from ``architecture.json`` and ``state_dict.pt``. ``network.json`` is its
hw_models network with the trained structures (``sparse-nas cost network.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from sparse_nas.export.architecture import architecture_of, rebuild_model
from sparse_nas.export.formats import BaseExportFormat, FormatReport, register_format, torch_accuracy

if TYPE_CHECKING:
    from torch import nn

    from sparse_nas.datasets import DatasetSplits
    from sparse_nas.export.trial import TrainedTrial

STATE_DICT_FILE = "state_dict.pt"
ARCHITECTURE_FILE = "architecture.json"
NETWORK_FILE = "network.json"
README_FILE = "README.md"

_README = """\
# Trial {number} of {study}: PyTorch bundle

- `state_dict.pt`: the trained weights (`torch.save` of the model's `state_dict`).
- `architecture.json`: search space, options, input shape, classes and the point.
- `network.json`: the hw_models network of the trained model (`sparse-nas cost network.json --device NAME`).
- `manifest.json`: dataset, labels, input normalisation, per-layer compression,
  accuracy and the predicted costs on {device}.

Rebuild the model (needs the `sparse-nas` package, which defines the compression layers):

```python
import json, torch
from sparse_nas.export import rebuild_model

model = rebuild_model(json.load(open("architecture.json")), torch.load("state_dict.pt", weights_only=True))
logits = model(x)  # x: (N, {shape}), normalised as manifest.json's input.normalization says
```
"""


@register_format
class PyTorchExportFormat(BaseExportFormat):
    """``state_dict.pt`` + ``architecture.json`` (+ ``network.json``, ``README.md``)."""

    name = "pytorch"
    description = "PyTorch state_dict with the architecture JSON; rebuild with sparse_nas.export.rebuild_model"
    tolerance_pp = 0.0

    def write(self, trial: TrainedTrial, model: nn.Module, splits: DatasetSplits, directory: Path) -> FormatReport:
        import torch

        architecture = architecture_of(trial.spec, trial.params)
        state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        torch.save(state_dict, directory / STATE_DICT_FILE)
        (directory / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2))
        network = trial.spec.build_search_space().network_from_model(model, trial.params)
        (directory / NETWORK_FILE).write_text(network.to_json())
        (directory / README_FILE).write_text(
            _README.format(
                number=trial.number,
                study=trial.study_name,
                device=trial.spec.device_spec().name,
                shape=", ".join(str(d) for d in architecture["input_shape"]),
            )
        )
        reloaded = rebuild_model(
            json.loads((directory / ARCHITECTURE_FILE).read_text()),
            torch.load(directory / STATE_DICT_FILE, weights_only=True),
        )
        return FormatReport(
            model_file=STATE_DICT_FILE,
            files=(STATE_DICT_FILE, ARCHITECTURE_FILE, NETWORK_FILE, README_FILE),
            test_accuracy=torch_accuracy(reloaded, splits.test),
            runtime=f"pytorch {torch.__version__}",
            details={"torch_version": torch.__version__, "rebuild": "sparse_nas.export.rebuild_model"},
        )
