"""The `ds_cnn` family against hand counts and the MLPerf Tiny KWS reference network."""

from __future__ import annotations

import pytest
import torch

from hw_models import estimate
from hw_models.reference import ds_cnn_kws
from search_spaces.families import InvalidSearchSpaceError, get_search_space
from search_spaces.families.ds_cnn import SeparableResidualBlock

torch.set_num_threads(1)

MFCC = (1, 49, 10)  # torch (C, H, W): 49 frames x 10 MFCCs, as in Hello Edge (arXiv 1711.07128)
CLASSES = 12


@pytest.fixture
def space():
    return get_search_space("ds_cnn", MFCC, CLASSES)


def _point(space, n_blocks: int, stem: dict, blocks: list[dict]) -> dict:
    """smallest() with the stem, the depth and the first blocks replaced."""
    p = space.smallest() | stem | {"n_blocks": n_blocks}
    for i, block in enumerate(blocks):
        p |= {f"block{i}_{k}": v for k, v in block.items()}
    return p


def _hand_point(space) -> dict:
    return _point(
        space,
        3,
        {"stem_channels": 8, "stem_kernel": "5x3", "stem_stride_h": 2, "stem_stride_w": 1},
        [
            {"channels": 8, "dw_kernel": 3, "stride": 1, "skip": True, "pw_method": "dense", "pw_level": 1},
            {"channels": 16, "dw_kernel": 5, "stride": 2, "skip": True, "pw_method": "low_rank", "pw_level": 2},
            {
                "channels": 16,
                "dw_kernel": 3,
                "stride": 1,
                "skip": True,
                "pw_method": "magnitude_pruning",
                "pw_level": 3,
            },
        ],
    )


# Hand count of `_hand_point` on a 49 x 10 x 1 input (hw layout H, W, C). SAME padding:
# out = ceil(in / stride). Weights + bias (batch norm folded into it); MACs = output
# pixels x MACs per pixel.
#   stem 5x3, stride (2, 1), 8 ch: out (25, 10, 8); 8*5*3*1 + 8 = 128; 250*8*15 = 30000
#   block0 (8 -> 8, stride 1, skip kept: same shape)
#     dw 3x3: (25, 10, 8); 8*9 + 8 = 80; 250*8*9 = 18000
#     pw dense 8x8: (25, 10, 8); 64 + 8 = 72; 250*64 = 16000
#     add: (25, 10, 8)
#   block1 (8 -> 16, stride 2: skip requested but dropped)
#     dw 5x5, stride 2: (13, 5, 8); 8*25 + 8 = 208; 65*8*25 = 13000
#     pw low_rank level 2 on W 16x8: target floor(128 / 4) = 32 values,
#        rank = rint(32 / (16 + 8)) = 1: (13, 5, 16); 1*(16 + 8) + 16 = 40; 65*24 = 1560
#   block2 (16 -> 16, stride 1, skip kept)
#     dw 3x3: (13, 5, 16); 16*9 + 16 = 160; 65*16*9 = 9360
#     pw magnitude_pruning level 3 on W 16x16: density floor(256 / 8) / 256 = 1/8,
#        32 non-zeros: (13, 5, 16); params 256 + 16 = 272, non-zeros 32 + 16 = 48; 65*32 = 2080
#     add: (13, 5, 16)
#   pool (global average): (16,)
#   classifier 16 -> 12: (12,); 16*12 + 12 = 204; 192
HAND_LAYERS = {  # name: (output shape, params, non-zero params, MACs)
    "stem": ((25, 10, 8), 128, 128, 30000),
    "block0_dw": ((25, 10, 8), 80, 80, 18000),
    "block0_pw": ((25, 10, 8), 72, 72, 16000),
    "block0_add": ((25, 10, 8), 0, 0, 0),
    "block1_dw": ((13, 5, 8), 208, 208, 13000),
    "block1_pw": ((13, 5, 16), 40, 40, 1560),
    "block2_dw": ((13, 5, 16), 160, 160, 9360),
    "block2_pw": ((13, 5, 16), 272, 48, 2080),
    "block2_add": ((13, 5, 16), 0, 0, 0),
    "pool": ((16,), 0, 0, 0),
    "classifier": ((12,), 204, 204, 192),
}
HAND_NONZERO_PARAMS = 128 + 80 + 72 + 208 + 40 + 160 + 48 + 204  # 940
HAND_MACS = 30000 + 18000 + 16000 + 13000 + 1560 + 9360 + 2080 + 192  # 90192


def test_network_matches_a_hand_count(space):
    report = estimate(space.to_network(_hand_point(space)), "stm32f446re", "ideal")
    got = {x.name: (x.output_shape, x.params, x.nonzero_params, x.macs) for x in report.layers}
    assert got == HAND_LAYERS
    assert report.nonzero_params == HAND_NONZERO_PARAMS == 940
    assert report.macs == HAND_MACS == 90192


def test_torch_model_has_the_costed_shapes(space):
    params = _hand_point(space)
    model = space.build(params).eval()
    shapes = {}
    names = ["stem_relu", "block0", "block1", "block2", "pool", "classifier"]
    for name in names:
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
    model(torch.randn(2, *MFCC))
    # The stem's 5x3 kernel with stride 2 needs asymmetric SAME padding (2 rows above, 2 below;
    # 1 column each side); a plain Conv2d padding would give 24 or 26 rows.
    assert shapes["stem_relu"] == (8, 25, 10)
    assert shapes["block0"] == (8, 25, 10)
    assert shapes["block1"] == (16, 13, 5)
    assert shapes["block2"] == (16, 13, 5)
    assert shapes["pool"] == (16, 1, 1)
    assert shapes["classifier"] == (CLASSES,)


def test_mlperf_tiny_ds_cnn_is_a_point_of_the_space(space):
    # MLPerf Tiny KWS DS-CNN (Hello Edge DS-CNN-S): 64-channel 10x4 stride-2 conv, four
    # dense 64-channel blocks with 3x3 depthwise kernels, no skips.
    block = {"channels": 64, "dw_kernel": 3, "stride": 1, "skip": False, "pw_method": "dense", "pw_level": 1}
    stem = {"stem_channels": 64, "stem_kernel": "10x4", "stem_stride_h": 2, "stem_stride_w": 2}
    params = space.check_params(_point(space, 4, stem, [block] * 4))
    ours = estimate(space.to_network(params), "stm32f446re", "ideal")
    ref = estimate(ds_cnn_kws(), "stm32f446re", "ideal")
    # The reference ends in a 25x5 average pool, a flatten and a softmax; ours in a
    # global average pool on the same 25x5x64 map. No MACs or weights either way, but
    # the op list differs, so TFLM's per-op code, arena plan and latency may differ a little.
    assert ours.params == ref.params == 22604
    assert ours.nonzero_params == ref.nonzero_params
    assert ours.macs == ref.macs == 2656768


def test_skip_adds_only_where_the_block_keeps_its_shape(space):
    blocks = [
        {"channels": 8, "stride": 1, "skip": True},  # 8 -> 8, stride 1: add
        {"channels": 8, "stride": 2, "skip": True},  # halves H, W: no add
        {"channels": 12, "stride": 1, "skip": True},  # 8 -> 12: no add
        {"channels": 12, "stride": 1, "skip": False},  # not asked: no add
        {"channels": 12, "stride": 1, "skip": True},  # add
    ]
    params = _point(space, 5, {"stem_channels": 8}, blocks)
    adds = [layer.name for layer in space.to_network(params).layers if layer.op == "add"]
    assert adds == ["block0_add", "block4_add"]
    model = space.build(params)
    residual = [i for i in range(5) if isinstance(model.get_submodule(f"block{i}"), SeparableResidualBlock)]
    assert residual == [0, 4]
    # The key sees effective skips: requesting a skip that is dropped does not change it.
    assert space.topology_key(params) == space.topology_key(params | {"block1_skip": False})
    assert space.topology_key(params) != space.topology_key(params | {"block0_skip": False})


def test_stem_kernels_and_widths_batch_in_one_group(space):
    base = _hand_point(space)
    points = [
        base,
        base | {"stem_kernel": "10x4", "block1_dw_kernel": 3, "block1_stride": 1},
        base | {"stem_kernel": "3x3", "stem_stride_w": 2, "block2_pw_level": 5},
    ]
    assert len({space.topology_key(p) for p in points}) == 1
    report = space.cost_batch(points, "stm32f446re")
    for i, p in enumerate(points):
        single = estimate(space.to_network(p), "stm32f446re")
        assert report.flash_bytes[i] == single.flash_bytes
        assert report.macs[i] == single.macs
        assert report.latency_ms[i] == pytest.approx(single.latency_ms)


def test_network_from_model_reads_the_real_pruning_density(space):
    params = _hand_point(space)  # int8: layers are wrapped for QAT
    model = space.build(params)
    model.get_submodule("block2.pw").prune_to(0.25)  # 64 of 256 kept instead of the planned 32
    real = estimate(space.network_from_model(model, params), "stm32f446re", "ideal")
    assert real.nonzero_params == HAND_NONZERO_PARAMS + 32
    assert real.macs == HAND_MACS + 65 * 32


def test_smallest_is_no_costlier_than_its_corner_variations(space):
    report = space.cost_batch(space.corner_candidates(), "stm32f446re")
    assert report.flash_bytes[0] == report.flash_bytes.min()
    assert report.macs[0] == report.macs.min()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_blocks": 9}, "max_blocks"),
        ({"channels": [0, 64]}, "channels"),
        ({"stem_kernels": ["10by4"]}, "stem_kernels"),
        ({"stem_kernels": ["3x3", "3x3"]}, "stem_kernels"),
        ({"methods": ["svd"]}, "methods"),
        ({"quantization": ["int4"]}, "quantization"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(InvalidSearchSpaceError, match=rf"^options\.{field}: "):
        get_search_space("ds_cnn", MFCC, CLASSES, options)


def test_input_must_be_an_image_like_map():
    with pytest.raises(InvalidSearchSpaceError, match=r"^input_shape: "):
        get_search_space("ds_cnn", (49, 10), CLASSES)


def test_options_shape_the_space():
    space = get_search_space(
        "ds_cnn", MFCC, CLASSES, {"max_blocks": 2, "channels": [16, 30], "stem_kernels": ["3x3"], "methods": ["dense"]}
    )
    d = space.distributions()
    assert "block1_channels" in d and "block2_channels" not in d
    assert (d["stem_channels"].low, d["stem_channels"].high, d["stem_channels"].step) == (16, 28, 4)
    assert d["block0_pw_method"].choices == ("dense",)
    assert space.smallest()["stem_kernel"] == "3x3"
