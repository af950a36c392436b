"""Errors of :mod:`sparse_nas.export`; ``api`` maps each to an HTTP status (in brackets).

- :class:`UnknownExportFormatError` (422): a format outside :func:`~sparse_nas.export.formats.format_names`.
- :class:`TrialNotFoundError` (404): the study has no trial with that number.
- :class:`NoTrainedWeightsError` (409): the trial exists but has no weights of the kind asked for.
- :class:`ExportPathError` (422): a path built for an export would leave the export directory.
"""

from __future__ import annotations

from sparse_nas.errors import SparseNASError


class ExportError(SparseNASError):
    """Root error of :mod:`sparse_nas.export`."""


class UnknownExportFormatError(ExportError, ValueError):
    """The format asked for is not one of the export formats; the message lists them."""


class TrialNotFoundError(ExportError, LookupError):
    """The study has no trial with the number asked for."""


class NoTrainedWeightsError(ExportError, ValueError):
    """The trial has no trained weights (of the kind asked for); the message says why."""


class ExportPathError(ExportError, ValueError):
    """An export path would resolve outside the export directory."""
