"""Structured channel / neuron pruning (search_spaces.compression._structured)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from search_spaces.compression._dense import DenseLinear
from search_spaces.compression._structured import (
    StructuredPruningError,
    channel_importance,
    prune_channels,
    remove_channels,
    select_channels,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_batch_norms(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, as after training."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.2, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)


def _zero_at(model: nn.Sequential, before: str, channels: torch.Tensor, dim: int = 1):
    """Hook zeroing `channels` (along `dim`, or flattened features) of the input of layer `before`."""
    module = dict(model.named_modules())[before]

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0].clone()
        x.index_fill_(dim, channels, 0.0)
        return (x,)

    return module.register_forward_pre_hook(hook)


def _dropped(count: int, kept: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros(count, dtype=torch.bool)
    keep[kept] = True
    return torch.nonzero(~keep).flatten()


def _cnn() -> nn.Sequential:
    # conv -> bn -> relu -> conv -> bn -> relu -> maxpool -> flatten -> linear -> relu -> linear
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 20),
        nn.ReLU(),
        nn.Linear(20, 5),
    )
    _randomise_batch_norms(model)
    return model.eval()


def test_removing_a_conv_channel_equals_zeroing_it_at_the_next_conv() -> None:
    model = _cnn()
    kept = select_channels(model, {"0": 0.5})
    small = remove_channels(model, kept)
    x = torch.randn(4, 3, 8, 8)
    handle = _zero_at(model, "3", _dropped(8, kept["0"]))
    torch.testing.assert_close(small(x), model(x))
    handle.remove()
    assert small[0].weight.shape == (4, 3, 3, 3) and small[1].num_features == 4 and small[3].in_channels == 4


def test_removing_conv_channels_through_flatten_into_linear() -> None:
    model = _cnn()
    kept = select_channels(model, {"3": 0.5})  # 6 -> 3 channels, 16 positions each
    small = remove_channels(model, kept)
    x = torch.randn(4, 3, 8, 8)
    # Channel c of the (6, 4, 4) output owns flattened features 16c .. 16c + 15.
    features = _dropped(6, kept["3"])[:, None] * 16 + torch.arange(16)
    handle = _zero_at(model, "8", features.flatten())
    torch.testing.assert_close(small(x), model(x))
    handle.remove()
    assert small[8].in_features == 3 * 16


def test_whole_chain_pruned_at_once_is_smaller_and_equal_to_zeroing() -> None:
    model = _cnn()
    ratios = {"0": 0.5, "3": 0.5, "8": 0.25}
    kept = select_channels(model, ratios)
    small = prune_channels(model, ratios)
    x = torch.randn(4, 3, 8, 8)
    handles = [
        _zero_at(model, "3", _dropped(8, kept["0"])),
        _zero_at(model, "8", (_dropped(6, kept["3"])[:, None] * 16 + torch.arange(16)).flatten()),
        _zero_at(model, "10", _dropped(20, kept["8"])),
    ]
    torch.testing.assert_close(small(x), model(x))
    for h in handles:
        h.remove()
    # Hand count: conv 3->4 (4*27+4) + bn 2*4 + conv 4->3 (3*36) + bn 2*3 + linear 48->5 (48*5+5) + linear 5->5 (25+5).
    assert _params(small) == (108 + 4) + 8 + 108 + 6 + (240 + 5) + 30
    assert _params(small) < _params(model)
    assert model[0].out_channels == 8  # the original is untouched


def test_bn_gamma_importance_is_network_slimming() -> None:
    model = _cnn()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.9, -0.05, 0.4, 0.01, -1.2, 0.3, 0.02, 0.7]))
    torch.testing.assert_close(channel_importance(model, "0", "bn_gamma"), model[1].weight.abs())
    assert select_channels(model, {"0": 0.5}, "bn_gamma")["0"].tolist() == [0, 2, 4, 7]
    with pytest.raises(StructuredPruningError, match="BatchNorm"):
        channel_importance(model, "8", "bn_gamma")


def test_l1_importance_is_the_filter_l1_norm() -> None:
    model = _cnn()
    expected = torch.stack([model[0].weight[o].abs().sum() for o in range(8)]).detach()
    torch.testing.assert_close(channel_importance(model, "0"), expected)


def test_linear_chain_with_batchnorm1d_dense_linear_and_depthwise() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 6, 1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise: carries channels through
        nn.BatchNorm2d(6),
        nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        DenseLinear(6, 10),
        nn.BatchNorm1d(10),
        nn.Tanh(),
        nn.Linear(10, 3),
    )
    _randomise_batch_norms(model)
    model.eval()
    kept = select_channels(model, {"0": 0.5, "5": 0.6})
    small = remove_channels(model, kept)
    x = torch.randn(5, 2, 4, 4)
    handles = [_zero_at(model, "5", _dropped(6, kept["0"])), _zero_at(model, "8", _dropped(10, kept["5"]))]
    torch.testing.assert_close(small(x), model(x))
    for h in handles:
        h.remove()
    assert small[2].groups == small[2].in_channels == small[2].out_channels == 3
    assert isinstance(small[5], DenseLinear) and small[5].weight_spec().shape == (6, 3)
    assert small[6].num_features == 6 and small[8].in_features == 6


def test_unsupported_graphs_raise_clear_errors() -> None:
    model = _cnn()
    with pytest.raises(StructuredPruningError, match="output size"):
        prune_channels(model, {"10": 0.5})
    with pytest.raises(StructuredPruningError, match="cannot prune the outputs of BatchNorm2d"):
        prune_channels(model, {"1": 0.5})
    with pytest.raises(StructuredPruningError, match="not a layer"):
        prune_channels(model, {"99": 0.5})
    with pytest.raises(StructuredPruningError, match=r"nn\.Sequential"):
        prune_channels(nn.Linear(3, 3), {"0": 0.5})

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x)

    with pytest.raises(StructuredPruningError, match="Residual"):
        prune_channels(nn.Sequential(nn.Conv2d(3, 4, 1), Residual(), nn.Conv2d(4, 2, 1)), {"0": 0.5})
    with pytest.raises(StructuredPruningError, match="Upsample"):
        prune_channels(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 1)), {"0": 0.5})
    with pytest.raises(StructuredPruningError, match="width axis"):
        prune_channels(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 2)), {"0": 0.5})
    with pytest.raises(StructuredPruningError, match=r"keep_ratios\['0'\]"):
        select_channels(model, {"0": 0.0})
