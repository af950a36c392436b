"""The IR: JSON round trip, hashing, pickling, and errors that name the field."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from hw_models import (
    HMD,
    HybridKronecker,
    InvalidNetworkError,
    Kronecker,
    LowRank,
    NetworkBuilder,
    NetworkSpec,
    Sparse,
    UnsupportedLayerError,
)
from hw_models.reference import REFERENCE_NETWORKS, write_examples

ROOT = Path(__file__).resolve().parents[2]


def every_structure_network() -> NetworkSpec:
    b = NetworkBuilder("structures", (6, 12), bits=8)
    x = b.linear(b.input, 12, structure=Sparse(0.3, "csr"))
    x = b.linear(x, 12, structure=Sparse(0.5, "block", (4, 2)), weight_bits=4)
    x = b.linear(x, 12, structure=LowRank(3), weight_bits=2)
    x = b.linear(x, 12, structure=Kronecker(((3, 4), (4, 3)), doping_nonzeros=7))
    x = b.linear(x, 12, structure=HybridKronecker(4, ((2, 3), (4, 4))))
    x = b.lstm(x, 6, w_ih=HMD(8, 2), w_hh=Sparse(0.5, "bitmask"))
    return b.build([x])


NETWORKS = {**{k: f() for k, f in REFERENCE_NETWORKS.items()}, "structures": every_structure_network()}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_json_round_trip_is_exact(name):
    net = NETWORKS[name]
    text = net.to_json()
    again = NetworkSpec.from_json(text)
    assert again == net
    assert hash(again) == hash(net)
    assert again.to_json() == text


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_pickle_round_trip(name):
    net = NETWORKS[name]
    assert pickle.loads(pickle.dumps(net)) == net


def test_shipped_examples_match_the_reference_builders(tmp_path):
    for path in write_examples(tmp_path):
        assert path.read_text() == (ROOT / "examples" / path.name).read_text(), path.name


def test_worked_example_in_docs_parses():
    text = (ROOT / "docs" / "ir.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    assert blocks, "docs/ir.md must contain a ```json worked example"
    net = NetworkSpec.from_dict(json.loads(blocks[0]))
    assert NetworkSpec.from_json(net.to_json()) == net


def test_hand_written_json_may_omit_intermediate_tensors():
    data = {
        "name": "tiny",
        "inputs": [{"name": "x", "shape": [8, 8, 1]}],
        "layers": [
            {"name": "c", "op": "conv2d", "inputs": ["x"], "output": "y",
             "attrs": {"stride": 2}, "weights": {"weight": {"shape": [4, 3, 3, 1]}}},
            {"name": "f", "op": "flatten", "inputs": ["y"], "output": "z"},
        ],
        "outputs": ["z"],
    }
    net = NetworkSpec.from_dict(data)
    assert net.tensor("y").shape == (4, 4, 4) and net.tensor("z").shape == (64,)


def _base():
    return json.loads(NETWORKS["sparse_cnn_mnist"].to_json())


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: d.pop("layers"), InvalidNetworkError, r"network\.layers: required"),
        (lambda d: d["layers"][0].update(op="winograd"), UnsupportedLayerError, r"'winograd' is not supported.*known kinds"),
        (lambda d: d["layers"][0]["weights"]["weight"].update(bits=3), InvalidNetworkError,
         r"layers\[0\] 'conv1'\.weights\.weight\.bits: expected one of \[2, 4, 8, 16, 32\]"),
        (lambda d: d["layers"][0]["attrs"].update(padding="full"), InvalidNetworkError,
         r"layers\[0\] 'conv1'\.attrs\.padding: expected one of \['same', 'valid'\]"),
        (lambda d: d["layers"][0]["attrs"].update(colour="red"), InvalidNetworkError, r"unknown attribute\(s\) \['colour'\]"),
        (lambda d: d["layers"][1].update(inputs=["nowhere"]), InvalidNetworkError,
         r"layers\[1\] 'pool1'\.inputs: tensor 'nowhere' is not a graph input"),
        (lambda d: d["tensors"][0].update(shape=[24, 24, 9]), InvalidNetworkError,
         r"declared as \[24, 24, 9\] but the op produces \[24, 24, 8\]"),
        (lambda d: d["layers"][2]["weights"]["weight"]["structure"].update(density=1.5), InvalidNetworkError,
         r"structure\.density: must be in \(0, 1\]"),
        (lambda d: d["layers"][5]["weights"]["weight"].update(structure={"kind": "kronecker", "factors": [[4, 4], [4, 4]]}),
         InvalidNetworkError, r"\(4x4\) kron \(4x4\) is 16x16, but the matrix block is 64x256"),
        (lambda d: d["layers"][5]["weights"]["weight"].update(structure={"kind": "low_rank", "rank": 0}),
         InvalidNetworkError, r"structure\.rank: must be in \[1, 64\]"),
        (lambda d: d["layers"][5]["weights"]["weight"].update(structure={"kind": "tucker"}),
         InvalidNetworkError, r"structure\.kind: expected one of"),
        (lambda d: d.update(outputs=["missing"]), InvalidNetworkError, r"outputs\[0\]: tensor 'missing' does not exist"),
        (lambda d: d.update(version=2), InvalidNetworkError, r"version: this sparse-nas reads version 1"),
        (lambda d: d["inputs"][0].update(shape="28x28"), InvalidNetworkError, r"inputs\[0\]\.shape: expected list"),
    ],
)
def test_malformed_network_errors_name_the_field(mutate, error, message):
    data = _base()
    mutate(data)
    with pytest.raises(error, match=message):
        NetworkSpec.from_dict(data)


def test_invalid_json_text():
    with pytest.raises(InvalidNetworkError, match="not valid JSON"):
        NetworkSpec.from_json("{not json")


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        NetworkSpec.from_dict({"layers": []})


def test_depthwise_takes_only_dense_or_sparse_weights():
    b = NetworkBuilder("dw", (8, 8, 4))
    b.depthwise_conv2d(b.input, 3, structure=LowRank(2))
    with pytest.raises(UnsupportedLayerError, match="'low_rank' is not supported for op 'depthwise_conv2d'"):
        b.build()


def test_worked_example_hand_counts(device):
    text = (ROOT / "docs" / "ir.md").read_text()
    net = NetworkSpec.from_dict(json.loads(re.findall(r"```json\n(.*?)```", text, re.S)[0]))
    from hw_models import estimate

    layers = {lay.name: lay for lay in estimate(net, device).layers}
    assert list(layers) == ["conv1", "dw1", "pw1", "res1", "gap", "fc", "probs"]
    assert (layers["conv1"].params, layers["conv1"].macs) == (328, 40_000)
    assert (layers["dw1"].params, layers["dw1"].macs) == (80, 9_000)
    assert (layers["pw1"].nonzero_params, layers["pw1"].macs, layers["pw1"].fused) == (24, 2_000, ("bn1",))
    assert (layers["fc"].params, layers["fc"].macs) == (34, 56)
