"""hw_models: the network IR, MCU device catalogue, runtime profiles and cost model.

Pure Python + numpy (no torch): a network can be costed on any machine in well under
a second. Layering: nothing here imports search_spaces, sparse_nas or api.
"""

from hw_models.batch import BatchCostReport, estimate_batch, stack_networks
from hw_models.builder import NetworkBatch, NetworkBuilder
from hw_models.cost import BufferPlacement, CostReport, LayerCostReport, estimate
from hw_models.devices import (
    DeviceCatalogue,
    DeviceSpec,
    device_from_dict,
    get_device,
    list_devices,
    load_device,
    register_device,
)
from hw_models.errors import (
    HardwareModelError,
    InvalidDeviceError,
    InvalidNetworkError,
    UnknownDeviceError,
    UnsupportedLayerError,
)
from hw_models.ir import (
    HMD,
    Dense,
    HybridKronecker,
    Kronecker,
    LayerSpec,
    LowRank,
    Mixed,
    NetworkSpec,
    OpKind,
    Sparse,
    TensorSpec,
    WeightSpec,
    WeightStructure,
)
from hw_models.planner import BaseArenaPlanner, GreedyArenaPlanner
from hw_models.runtimes import IDEAL, TFLM, RuntimeProfile, UnknownRuntimeError, get_runtime

__all__ = [
    "HMD",
    "IDEAL",
    "TFLM",
    "BaseArenaPlanner",
    "BatchCostReport",
    "BufferPlacement",
    "CostReport",
    "Dense",
    "DeviceCatalogue",
    "DeviceSpec",
    "GreedyArenaPlanner",
    "HardwareModelError",
    "HybridKronecker",
    "InvalidDeviceError",
    "InvalidNetworkError",
    "Kronecker",
    "LayerCostReport",
    "LayerSpec",
    "LowRank",
    "Mixed",
    "NetworkBatch",
    "NetworkBuilder",
    "NetworkSpec",
    "OpKind",
    "RuntimeProfile",
    "Sparse",
    "TensorSpec",
    "UnknownDeviceError",
    "UnknownRuntimeError",
    "UnsupportedLayerError",
    "WeightSpec",
    "WeightStructure",
    "device_from_dict",
    "estimate",
    "estimate_batch",
    "get_device",
    "get_runtime",
    "list_devices",
    "load_device",
    "register_device",
    "stack_networks",
]
