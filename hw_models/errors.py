"""Errors of the hardware-model package.

Every error raised on purpose by hw_models derives from `HardwareModelError`; the
specific ones also derive from the matching built-in so callers may catch either.
"""

from __future__ import annotations


class HardwareModelError(Exception):
    """Root of all errors raised by hw_models."""


class InvalidNetworkError(HardwareModelError, ValueError):
    """A network description is malformed; the message names the offending field."""


class UnsupportedLayerError(HardwareModelError, ValueError):
    """An op kind (or op/structure combination) the cost model does not know.

    Raised instead of costing the layer as zero, so a search never sees a network
    as cheaper than it is.
    """


class InvalidDeviceError(HardwareModelError, ValueError):
    """A device description is malformed; the message names the offending field."""


class UnknownDeviceError(HardwareModelError, KeyError):
    """A device name that is not in the catalogue."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])
