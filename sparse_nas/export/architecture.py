"""The architecture JSON of a trial, and the function that rebuilds its PyTorch model.

An architecture is everything :mod:`search_spaces` needs to build the model again:
the family, its options, the dataset's input shape and classes, and the point. With the
trained ``state_dict`` it gives the model back (:func:`rebuild_model`), compression
layers, pruning masks and quantisation-aware wrappers included.

Example:
    >>> import json, torch
    >>> from sparse_nas.export import rebuild_model
    >>> architecture = json.load(open("bundle/architecture.json"))
    >>> state_dict = torch.load("bundle/state_dict.pt", weights_only=True)
    >>> model = rebuild_model(architecture, state_dict)  # eval mode, (N, 1, 8, 8) -> (N, 10)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sparse_nas.export.errors import ExportError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sparse_nas.spec import SearchJobSpec

ARCHITECTURE_VERSION = 1
_FIELDS = ("search_space", "options", "input_shape", "num_classes", "params")


def architecture_of(spec: SearchJobSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture JSON of point ``params`` of the job ``spec``."""
    space = spec.build_search_space()
    return {
        "architecture_version": ARCHITECTURE_VERSION,
        "search_space": space.name,
        "options": dict(space.options),
        "input_shape": list(space.input_shape),
        "num_classes": space.num_classes,
        "params": dict(params),
    }


def rebuild_model(architecture: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """The trained model of an exported trial, in eval mode.

    Args:
        architecture: The bundle's ``architecture.json`` (:func:`architecture_of`).
        state_dict: The bundle's ``state_dict.pt``, read with
            ``torch.load(path, weights_only=True)``.

    Returns:
        The model, taking normalised inputs ``(N, *input_shape)`` (the manifest's
        ``input.normalization``) and returning logits ``(N, num_classes)``.

    Raises:
        ExportError: The architecture misses a field or has another version.
        search_spaces.families.InvalidSearchSpaceError: Unknown family, options or point.
        RuntimeError: The state_dict does not fit the architecture (torch's message).
    """
    from search_spaces.families import get_search_space

    missing = [name for name in _FIELDS if name not in architecture]
    if missing:
        raise ExportError(f"architecture: missing field(s) {missing}; expected {list(_FIELDS)}")
    version = architecture.get("architecture_version")
    if version != ARCHITECTURE_VERSION:
        raise ExportError(f"architecture_version: expected {ARCHITECTURE_VERSION}, got {version!r}")
    space = get_search_space(
        architecture["search_space"],
        tuple(architecture["input_shape"]),
        int(architecture["num_classes"]),
        architecture["options"],
    )
    model = space.build(architecture["params"])
    model.load_state_dict(dict(state_dict))
    return model.eval()
