"""The `mbv2` family against hand counts and MobileNetV2's block rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hw_models import estimate
from search_spaces.compression import CompressedConv1x1
from search_spaces.families import InvalidSearchSpaceError, get_search_space

CIFAR = ((3, 32, 32), 10)


def space(options: dict | None = None, shape: tuple[int, ...] = CIFAR[0]):
    """The family with both precisions searched (float32 models are easier to count)."""
    return get_search_space("mbv2", shape, 10, {"quantization": ["int8", "float32"]} | (options or {}))


def config(**overrides: object) -> dict:
    """Width 0.5, 16x16 input; stage 0: one block, expansion 1; stage 1: two blocks, expansion 3; all dense."""
    p: dict = {"width_mult": 0.5, "resolution": 16, "quantization": "int8"}
    for s in range(5):
        p |= {
            f"stage{s}_depth": 0,
            f"stage{s}_expansion": 3,
            f"stage{s}_kernel": 3,
            f"stage{s}_method": "dense",
            f"stage{s}_level": 1,
        }
    p |= {"stage0_depth": 1, "stage0_expansion": 1, "stage1_depth": 2}
    return p | overrides


def test_hand_count_of_a_small_configuration():
    # Width 0.5: stem 32 -> 16, stage 0 16 -> 8, stage 1 24 -> 12 channels. The 32x32 image
    # is resized to 16x16; the stem keeps stride 1 (dataset under 64 px). Every conv has a
    # bias (BN folded). Params = weights + biases; MACs = output pixels x weights per pixel.
    expected = {
        # name: (output shape, params, MACs)
        "stem": ((16, 16, 16), 16 * 27 + 16, 16 * 16 * 16 * 27),  # 448, 110592
        "s0b0_dw": ((16, 16, 16), 16 * 9 + 16, 16 * 16 * 16 * 9),  # 160, 36864
        "s0b0_project": ((16, 16, 8), 16 * 8 + 8, 16 * 16 * 16 * 8),  # 136, 32768 (16 != 8: no add)
        "s1b0_expand": ((16, 16, 24), 8 * 24 + 24, 16 * 16 * 8 * 24),  # 216, 49152 (hidden 3 x 8)
        "s1b0_dw": ((8, 8, 24), 24 * 9 + 24, 8 * 8 * 24 * 9),  # 240, 13824 (stride 2)
        "s1b0_project": ((8, 8, 12), 24 * 12 + 12, 8 * 8 * 24 * 12),  # 300, 18432 (stride 2: no add)
        "s1b1_expand": ((8, 8, 36), 12 * 36 + 36, 8 * 8 * 12 * 36),  # 468, 27648 (hidden 3 x 12)
        "s1b1_dw": ((8, 8, 36), 36 * 9 + 36, 8 * 8 * 36 * 9),  # 360, 20736
        "s1b1_project": ((8, 8, 12), 36 * 12 + 12, 8 * 8 * 36 * 12),  # 444, 27648
        "s1b1_add": ((8, 8, 12), 0, 0),  # stride 1, 12 == 12
        "pool": ((12,), 0, 0),
        "classifier": ((10,), 12 * 10 + 10, 12 * 10),  # 130, 120
    }
    net = space().to_network(config())
    assert net.inputs[0].shape == (16, 16, 3)  # the MCU captures the resized image
    report = estimate(net, "stm32f446re", "ideal")
    got = {layer.name: (tuple(layer.output_shape), layer.params, layer.macs) for layer in report.layers}
    assert got == expected
    assert report.params == report.nonzero_params == 2902
    assert report.macs == 337784


def test_torch_model_matches_the_hand_counted_network():
    model = space().build(config(quantization="float32")).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # Folded BN gives every conv one bias per output channel.
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    weights += sum(m.linear.dense_weight().numel() for m in model.modules() if isinstance(m, CompressedConv1x1))
    biases = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)) + 10
    assert weights + biases == 2902


def _torch_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one sample, counted from the layers' real output sizes."""
    total = 0

    def conv(m: nn.Conv2d, _: tuple, y: torch.Tensor) -> None:
        nonlocal total
        total += y[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def conv1x1(m: CompressedConv1x1, _: tuple, y: torch.Tensor) -> None:
        nonlocal total
        total += y[0, 0].numel() * m.linear.dense_weight().numel()

    def linear(m: nn.Linear, _: tuple, y: torch.Tensor) -> None:
        nonlocal total
        total += m.weight.numel()

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, CompressedConv1x1):
            m.register_forward_hook(conv1x1)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear)
    model.eval()(x)
    return total


@pytest.mark.parametrize("resolution", [16, 24, 32])
def test_dense_network_macs_equal_the_torch_model_at_every_resolution(resolution):
    p = config(
        resolution=resolution,
        quantization="float32",
        stage2_depth=2,
        stage2_kernel=5,
        stage4_depth=1,
        stage4_expansion=6,
        width_mult=0.35,
    )
    sp = space()
    macs = _torch_macs(sp.build(p), torch.randn(1, 3, 32, 32))
    assert estimate(sp.to_network(p), "stm32f446re", "ideal").macs == macs


def _adds(p: dict, sp=None) -> set[str]:
    net = (sp or space()).to_network(p)
    return {layer.name.removesuffix("_add") for layer in net.layers if layer.op == "add"}


def test_residual_adds_exactly_where_stride_is_one_and_channels_are_equal():
    full = config(**{f"stage{s}_depth": 2 for s in range(5)})
    # Each stage's first block changes channels (or strides); only second blocks keep the shape.
    assert _adds(full) == {"s0b1", "s1b1", "s2b1", "s3b1", "s4b1"}
    model = space().build(full)
    flags = {name for name, m in model.named_children() if getattr(m, "residual", False)}
    assert flags == {"s0b1", "s1b1", "s2b1", "s3b1", "s4b1"}
    # Stage 4 has stride 1 but 96w != 64w channels: no add on its first block either way.
    assert _adds(full | {"stage3_depth": 0}) == {"s0b1", "s1b1", "s2b1", "s4b1"}


def test_a_stride_one_first_block_adds_when_rounding_makes_channels_equal():
    sp = space({"width_multipliers": [0.1, 0.25]})
    # Width 0.1: stem 32 x 0.1 and stage 0 16 x 0.1 both round up to 4 channels.
    assert "s0b0" in _adds(config(width_mult=0.1), sp)
    assert "s0b0" not in _adds(config(width_mult=0.25), sp)
    cands = [config(width_mult=0.1), config(width_mult=0.25)]
    assert sp.topology_key(cands[0]) != sp.topology_key(cands[1])
    report = sp.cost_batch(cands, "stm32f446re")
    for i, p in enumerate(cands):
        assert report.flash_bytes[i] == estimate(sp.to_network(p), "stm32f446re").flash_bytes


def test_expansion_one_drops_the_expand_conv():
    sp = space()
    names = {layer.name for layer in sp.to_network(config(stage1_expansion=1)).layers}
    assert not any(n.endswith("_expand") for n in names)
    names = {layer.name for layer in sp.to_network(config(stage1_expansion=6)).layers}
    assert {"s1b0_expand", "s1b1_expand"} <= names and "s0b0_expand" not in names
    model = sp.build(config(stage1_expansion=1))
    assert not any(name.endswith("expand") for name, _ in model.named_modules())


def test_resolution_scales_conv_macs_by_the_pixel_ratio():
    sp = space()
    assert sp.resolutions() == (16, 24, 32)
    p = config(**{f"stage{s}_depth": 1 for s in range(5)})
    classifier_macs = 48 * 10  # width 0.5: stage 4 has 96 x 0.5 = 48 channels
    macs = {
        r: estimate(sp.to_network(p | {"resolution": r}), "stm32f446re", "ideal").macs - classifier_macs
        for r in sp.resolutions()
    }
    # 32 and 16 halve evenly at every stride; 24 rounds 3 -> 2 at the last one, so roughly.
    assert macs[16] / macs[32] == pytest.approx(0.25)
    assert macs[24] / macs[32] == pytest.approx((24 / 32) ** 2, rel=0.15)
    flash = {estimate(sp.to_network(p | {"resolution": r}), "stm32f446re").flash_bytes for r in sp.resolutions()}
    assert len(flash) == 1  # the weights do not depend on the resolution


def test_stem_strides_two_from_64_pixels():
    sp = space(shape=(3, 64, 64))
    assert sp.resolutions() == (32, 48, 64)
    net = sp.to_network(config(resolution=64))
    assert next(t.shape for t in net.tensors if t.name == "stem") == (32, 32, 16)
    assert sp.build(config(resolution=48))(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_non_square_images_keep_their_aspect_ratio():
    sp = space(shape=(1, 40, 20))
    assert sp.hw_input_shape(30) == (30, 15, 1)
    assert sp.to_network(config(resolution=20)).inputs[0].shape == (20, 10, 1)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"width_multipliers": [0.0]}, "options.width_multipliers"),
        ({"resolution_scales": [1.5]}, "options.resolution_scales"),
        ({"max_depth": 5}, "options.max_depth"),
        ({"expansions": [2]}, "options.expansions"),
        ({"kernels": [4]}, "options.kernels"),
        ({"methods": ["svd"]}, "options.methods"),
        ({"quantization": ["int4"]}, "options.quantization"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(InvalidSearchSpaceError, match=rf"^{field}: "):
        space(options)


def test_bad_input_and_params_name_the_field():
    with pytest.raises(InvalidSearchSpaceError, match=r"^input_shape: "):
        get_search_space("mbv2", (49, 10), 10)
    with pytest.raises(InvalidSearchSpaceError, match=r"^params.stage0_depth: "):
        space().to_network(config(stage0_depth=0))
    with pytest.raises(InvalidSearchSpaceError, match=r"^params.resolution: "):
        space().to_network(config(resolution=20))


def test_smallest_is_the_minimum_of_every_searched_choice():
    sp = space({"expansions": [3, 6], "kernels": [5, 7], "methods": ["low_rank", "dense"]})
    p = sp.smallest()
    assert (p["width_mult"], p["resolution"], p["stage0_expansion"], p["stage0_kernel"]) == (0.25, 16, 3, 5)
    assert [p[f"stage{s}_depth"] for s in range(5)] == [1, 0, 0, 0, 0]
    assert p["stage0_method"] == "low_rank"


def test_smallest_takes_the_method_with_least_flash():
    sp = space({"width_multipliers": [0.5, 1.0]})
    p = sp.smallest()
    flash = {
        m: estimate(sp.to_network(p | {"stage0_method": m}), "stm32f446re").flash_bytes for m in sp.options["methods"]
    }
    assert flash[p["stage0_method"]] == min(flash.values())
