"""The networks of MicroNets' results table, rebuilt layer by layer for latency calibration.

Source: Banbury et al., "MicroNets: Neural Network Architectures for Deploying TinyML
Applications on Commodity Microcontrollers", MLSys 2021, arXiv 2010.11267v6.
Table 5 (Appendix A) gives the MicroNet KWS and AD architectures; Table 4 (Appendix B)
gives their Mops (a MAC counts as two ops, Sec. 3.2 footnote 2) and latencies measured
with TFLM + CMSIS-NN on Mbed OS: STM32F446RE (S column), STM32F746ZG (M), STM32F767ZI (L).

Conventions shared by every model here (what the deployed TFLite graphs do):
- SAME padding; batch norm folded and ReLU/ReLU6 fused into the conv that precedes it
  (cost 0), so each conv carries `activation="relu"`;
- a depthwise separable block is a 3x3 depthwise conv (the block's stride, depth
  multiplier 1) followed by a 1x1 pointwise conv to the block's channel count;
- the "FC" of the KWS/AD models is, in the real graph, a 1x1 CONV_2D on the pooled
  1x1xC tensor followed by a RESHAPE (ML-zoo `micronet_*` definition.yaml list no
  FULLY_CONNECTED). We build it as `linear` on the (1, 1, C) tensor plus the RESHAPE:
  the MACs are identical, only the per-MAC constant differs (linear's, not conv2d's).

docs/devices.md#calibration records what is confirmed and what is assumed; each
model's `confirmed` field says it in one line. MBNETV2-S/M and MicroNet-VWW-1..4 are
not rebuilt: their layer tables are only in Fig. 6 (an image) or not published.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hw_models.builder import NetworkBuilder
from hw_models.ir import FrozenMap, NetworkSpec

# Table 4 columns -> catalogue device names.
S_BOARD, M_BOARD, L_BOARD = "stm32f446re", "stm32f746zg", "stm32f767zi"
KWS_INPUT = (49, 10, 1)  # 49 frames x 10 MFCC (MicroNets Sec. 4.2)
AD_INPUT = (32, 32, 1)  # 64x64 log-Mel patch resized to 32x32 (MicroNets Sec. 4.3)


@dataclass(frozen=True)
class MicroNetsModel:
    """A network of MicroNets Table 4 with its published figures.

    Attributes:
        name: the model's name in Table 4.
        build: returns the reconstructed NetworkSpec (int8 weights and activations).
        published_latency_ms: Table 4 latency per catalogue device name; boards the
            paper could not run the model on are absent. Values the paper marks as
            estimated are listed in `estimated_latency_on`.
        published_mops: Table 4 "Mops" (2 x MACs), or None where the table has none.
        confirmed: what of the reconstruction is sourced and what is assumed.
        estimated_latency_on: devices whose Table 4 latency carries the paper's (*).
    """

    name: str
    build: Callable[[], NetworkSpec]
    published_latency_ms: Mapping[str, float]
    published_mops: float | None
    confirmed: str
    estimated_latency_on: tuple[str, ...] = ()


def _latency(small: float | None, medium: float | None, large: float | None) -> FrozenMap:
    """Table 4 latencies (seconds; S, M, L columns) as milliseconds per device name."""
    pairs = ((S_BOARD, small), (M_BOARD, medium), (L_BOARD, large))
    return FrozenMap({board: round(sec * 1000.0, 6) for board, sec in pairs if sec is not None})


def _ds_block(b: NetworkBuilder, x: str, channels: int, stride: int, index: int) -> str:
    x = b.depthwise_conv2d(x, 3, stride=stride, activation="relu", name=f"dw{index}")
    return b.conv2d(x, channels, 1, activation="relu", name=f"pw{index}")


def _ds_cnn(
    name: str,
    input_shape: tuple[int, int, int],
    first_kernel: tuple[int, int],
    first_channels: int,
    blocks: Sequence[tuple[int, int]],
    pool: tuple[int, int],
    classes: int,
) -> NetworkSpec:
    """Conv2D - depthwise separable blocks (channels, stride) - AvgPool - FC, as Table 5 writes it."""
    b = NetworkBuilder(name, input_shape)
    x = b.conv2d(b.input, first_channels, first_kernel, activation="relu", name="conv1")
    for i, (channels, stride) in enumerate(blocks, start=1):
        x = _ds_block(b, x, channels, stride, i)
    x = b.avg_pool2d(x, pool, name="pool")
    x = b.linear(x, classes, name="fc")
    return b.build([b.reshape(x, (classes,), name="reshape")])


def micronet_kws_l() -> NetworkSpec:
    """MicroNet-KWS-L (Table 5): 10x4 conv 276, seven DS blocks, AvgPool 25x5, FC 12."""
    blocks = ((248, 2), (276, 1), (276, 1), (248, 1), (248, 1), (248, 1), (248, 1))
    return _ds_cnn("micronet_kws_l", KWS_INPUT, (10, 4), 276, blocks, (25, 5), 12)


def micronet_kws_m() -> NetworkSpec:
    """MicroNet-KWS-M (Table 5): 10x4 conv 140, five DS blocks, AvgPool 25x5, FC 12."""
    blocks = ((140, 2), (140, 1), (140, 1), (112, 1), (196, 1))
    return _ds_cnn("micronet_kws_m", KWS_INPUT, (10, 4), 140, blocks, (25, 5), 12)


def micronet_kws_s() -> NetworkSpec:
    """MicroNet-KWS-S (Table 5): 10x4 conv 84, five DS blocks, AvgPool 25x5, FC 12."""
    blocks = ((112, 2), (84, 1), (84, 1), (84, 1), (196, 1))
    return _ds_cnn("micronet_kws_s", KWS_INPUT, (10, 4), 84, blocks, (25, 5), 12)


def dscnn_l() -> NetworkSpec:
    """MicroNets' DSCNN-L: Hello Edge DS-CNN-L widths (276 ch, 5 blocks) in the MicroNet-KWS layout."""
    return _ds_cnn("dscnn_l", KWS_INPUT, (10, 4), 276, ((276, 2),) + ((276, 1),) * 4, (25, 5), 12)


def dscnn_m() -> NetworkSpec:
    """MicroNets' DSCNN-M: Hello Edge DS-CNN-M widths (172 ch, 4 blocks) in the MicroNet-KWS layout."""
    return _ds_cnn("dscnn_m", KWS_INPUT, (10, 4), 172, ((172, 2),) + ((172, 1),) * 3, (25, 5), 12)


def dscnn_s() -> NetworkSpec:
    """MicroNets' DSCNN-S: Hello Edge DS-CNN-S widths (64 ch, 4 blocks) in the MicroNet-KWS layout."""
    return _ds_cnn("dscnn_s", KWS_INPUT, (10, 4), 64, ((64, 2),) + ((64, 1),) * 3, (25, 5), 12)


def micronet_ad_l() -> NetworkSpec:
    """MicroNet-AD-L (Table 5): 3x3 conv 276, five DS blocks down to 4x4, AvgPool 4x4, FC 4."""
    blocks = ((248, 2), (276, 1), (276, 1), (248, 2), (248, 2))
    return _ds_cnn("micronet_ad_l", AD_INPUT, (3, 3), 276, blocks, (4, 4), 4)


def micronet_ad_m() -> NetworkSpec:
    """MicroNet-AD-M (Table 5): 3x3 conv 192, five DS blocks down to 4x4, AvgPool 4x4, FC 4."""
    blocks = ((276, 2), (276, 1), (276, 1), (276, 2), (276, 2))
    return _ds_cnn("micronet_ad_m", AD_INPUT, (3, 3), 192, blocks, (4, 4), 4)


def micronet_ad_s() -> NetworkSpec:
    """MicroNet-AD-S (Table 5): 3x3 conv 72, four DS blocks down to 4x4, AvgPool 4x4, FC 4."""
    blocks = ((164, 2), (220, 1), (276, 2), (276, 2))
    return _ds_cnn("micronet_ad_s", AD_INPUT, (3, 3), 72, blocks, (4, 4), 4)


def ad_baseline_fc_ae() -> NetworkSpec:
    """AD-baseline: the DCASE 2020 FC autoencoder, 640-128x4-8-128x4-640 (MicroNets Sec. 6.4).

    Ten FULLY_CONNECTED ops with ReLU fused on the hidden layers; 264,192 MACs.
    """
    b = NetworkBuilder("ad_baseline_fc_ae", (640,))
    x = b.input
    for i, width in enumerate((128, 128, 128, 128, 8, 128, 128, 128, 128), start=1):
        x = b.linear(x, width, activation="relu", name=f"fc{i}")
    return b.build([b.linear(x, 640, name="fc10")])


def person_detection_tflm() -> NetworkSpec:
    """TFLM's person_detection example (Table 4 "Person Detection"): MobileNetV1-0.25, 96x96x1.

    The first 3x3 stride-2 conv (1 -> 8 channels) is a DEPTHWISE_CONV_2D with depth
    multiplier 8 in the .tflite, as the per-op list of raspberrypi/pico-tflmicro
    benchmark_results.txt shows; the classifier is a 1x1 CONV_2D (256 -> 2), RESHAPE and
    SOFTMAX after a 3x3 average pool.
    """
    b = NetworkBuilder("person_detection_tflm", (96, 96, 1))
    x = b.depthwise_conv2d(b.input, 3, stride=2, multiplier=8, activation="relu", name="conv1")
    pointwise = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)) + ((128, 1),) * 5 + ((256, 2), (256, 1))
    for i, (channels, stride) in enumerate(pointwise, start=1):
        x = _ds_block(b, x, channels, stride, i)
    x = b.avg_pool2d(x, 3, name="pool")
    x = b.reshape(b.linear(x, 2, name="fc"), (2,), name="reshape")
    return b.build([b.softmax(x, name="softmax")])


_KWS_LAYOUT = (
    "Table 5 kernels, channels, strides, block count, AvgPool 25x5 and FC 12; input 49x10x1 (Sec. 4.2); "
    "op set CONV_2D/DEPTHWISE_CONV_2D/AVERAGE_POOL_2D/RELU6/RESHAPE (ML-zoo definition.yaml, KWS-S/M/L). "
    "Assumed: SAME padding (49x10 -> 25x5 after the stride-2 block matches the 25x5 pool), 3x3 depthwise + 1x1 "
    "pointwise blocks, activations fused"
)
_DSCNN_LAYOUT = (
    "Not in Table 5: Hello Edge (arXiv 1711.07128) DS-CNN widths and block counts, rebuilt in the MicroNet-KWS "
    "layout (stride-1 10x4 conv, first DS block stride 2, AvgPool 25x5, FC as 1x1 conv + RESHAPE); confirmed only "
    "by matching Table 4 Mops (within 1.3%, the same excess as the MicroNet-KWS models)"
)
_AD_LAYOUT = (
    "Table 5 kernels, channels, strides, AvgPool 4x4 and FC 4; input 32x32x1 (Sec. 4.3, ML-zoo "
    "definition.yaml); op set as KWS (ML-zoo). Table 4 Mops matched to the rounding digit. Assumed: SAME padding, "
    "DS block layout, activations fused. ML-zoo's released AD models output 8 logits, Table 5 says FC(4): we "
    "follow Table 5 (1,104 MACs apart)"
)

MICRONETS: dict[str, MicroNetsModel] = {
    m.name: m
    for m in (
        MicroNetsModel("MicroNet-KWS-L", micronet_kws_l, _latency(None, 0.610, 0.596), 129.0, _KWS_LAYOUT),
        MicroNetsModel("MicroNet-KWS-M", micronet_kws_m, _latency(0.426, 0.187, 0.181), 30.6, _KWS_LAYOUT),
        MicroNetsModel("MicroNet-KWS-S", micronet_kws_s, _latency(0.250, 0.109, 0.108), 16.4, _KWS_LAYOUT),
        MicroNetsModel("MicroNet-AD-L", micronet_ad_l, _latency(None, None, 0.614), 129.0, _AD_LAYOUT),
        MicroNetsModel("MicroNet-AD-M", micronet_ad_m, _latency(None, 0.608, 0.567), 124.7, _AD_LAYOUT),
        MicroNetsModel(
            "MicroNet-AD-S", micronet_ad_s, _latency(0.457, 0.192, 0.194), 37.5, _AD_LAYOUT,
            estimated_latency_on=(M_BOARD,),
        ),
        MicroNetsModel("DSCNN-L", dscnn_l, _latency(None, 0.515, 0.497), 107.2, _DSCNN_LAYOUT),
        MicroNetsModel("DSCNN-M", dscnn_m, _latency(None, 0.219, 0.212), 37.3, _DSCNN_LAYOUT),
        MicroNetsModel("DSCNN-S", dscnn_s, _latency(0.131, 0.058, 0.058), 7.1, _DSCNN_LAYOUT),
        MicroNetsModel(
            "Person Detection", person_detection_tflm, _latency(0.254, 0.108, 0.108), None,
            "Not a MicroNet (a Table 4 baseline): the TFLM example model, layer by layer as pico-tflmicro's per-op "
            "benchmark lists it (MobileNetV1-0.25, 96x96x1, 7.16 M MACs; first layer a depth-multiplier-8 "
            "depthwise). Table 4 gives no Mops for it",
        ),
        MicroNetsModel(
            "AD-baseline", ad_baseline_fc_ae, _latency(0.007, 0.003, 0.003), 0.52,
            "Layer widths from MicroNets Sec. 6.4 (640 input, 4x128, 8, 4x128, output 640; Purohit et al. 2019 "
            "baseline); ten FULLY_CONNECTED ops. Latency has one significant digit (+/-7% on F446RE, +/-17% on F7)",
        ),
    )
}
