"""The test of the channel analysis: permuting every space through the graph's mapping leaves
the network's function unchanged (logits reordered by the class permutation).

A wrong tie, a wrong concat offset or a wrong flatten stride makes some consumer read the wrong
channel, and the output changes; ``test_wrong_tie_is_detected`` shows the check has teeth.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings

from archgen import architectures
from helpers import analyse, heavy_model_slot, input_size_for, randomize, rel_err
from splitc.graph import zoo
from splitc.graph.channel_ir import ChannelIR
from splitc.passes.permute_channels import (
    ChannelPermutation, iter_permuted, output_order, permutable_spaces, permutation_from_ranks, permuted_tensors, random_ranks, source_index)

TOL = 1e-5
DEFAULT_TORCHVISION = [
    "resnet18", "resnext50_32x4d", "wide_resnet50_2", "densenet121", "mobilenet_v2",
    "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "vgg11_bn", "googlenet",
    "inception_v3", "shufflenet_v2_x0_5", "squeezenet1_1", "convnext_tiny", "mnasnet0_5",
]
ALL_TORCHVISION = torchvision.models.list_models(module=torchvision.models)
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def permuted_error(model: torch.nn.Module, input_size, rng: np.random.Generator,
                   spaces=None) -> tuple[float, ChannelIR, ChannelPermutation]:
    gm, ir = analyse(randomize(model), input_size)
    spaces = permutable_spaces(ir) if spaces is None else spaces
    perm = permutation_from_ranks(ir, random_ranks(ir, spaces, rng))
    # float64: the check is about channel bookkeeping, not float32 round-off in deep nets
    gm = gm.double().eval()
    x = torch.randn(3, *input_size, dtype=torch.float64)  # fresh every call
    with torch.no_grad():
        before = gm(x)
        # one tensor at a time, in place, so that regnet_y_128gf (644M params) fits in memory
        state = gm.state_dict()
        for name, tensor in iter_permuted(ir, state, perm):
            state[name].copy_(tensor)
        after = gm(x)
    return rel_err(after, before[:, output_order(ir, perm)]), ir, perm


def assert_invariant(name: str) -> None:
    size = input_size_for(name)
    model = zoo.build(name, num_classes=10)
    err, ir, perm = permuted_error(model, size, np.random.default_rng())
    assert err <= TOL, f"{name}: permuted model differs, rel err {err:.2e}"
    if not name.startswith(TRANSFORMERS):  # CNNs: the last stage really was permuted
        last = max(ir.layers, key=lambda layer: layer.topo)
        feature_spaces = ir.spaces_of(last.in_elems)
        assert all("opaque" not in ir.spaces[s].flags for s in feature_spaces), name
        moved = perm.sigma[last.in_elems] != last.in_elems
        assert moved.any(), f"{name}: the classifier's input channels were not permuted"


@pytest.mark.parametrize("name", ["wrn16_8", "resnet20", "tiny_seq", "tiny_residual", "tiny_concat",
                                  "tiny_depthwise", "tiny_grouped", "tiny_se", "tiny_shuffle", "tiny_mixed"])
def test_builtins_are_permutation_invariant(name: str) -> None:
    assert_invariant(name)


@pytest.mark.parametrize("name", DEFAULT_TORCHVISION)
def test_torchvision_representatives(name: str) -> None:
    assert_invariant(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_TORCHVISION)
def test_every_torchvision_model(name: str) -> None:
    with heavy_model_slot(name):
        assert_invariant(name)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(arch=architectures())
def test_generated_architectures(arch) -> None:
    err, _, perm = permuted_error(arch.build(arch.num_classes), arch.input_size, np.random.default_rng())
    assert err <= TOL, f"{arch}: rel err {err:.2e}"


def test_wrong_tie_is_detected() -> None:
    """Leave one side of a residual add unpermuted: the check must fail loudly."""
    model = randomize(zoo.build("resnet20", num_classes=10))
    gm, ir = analyse(model, (3, 32, 32))
    stream = int(ir.space_of[ir.layer("layer2.0.downsample.0").out_elems[0]])
    perm = permutation_from_ranks(ir, random_ranks(ir, [stream], np.random.default_rng(0)))
    state = gm.state_dict()
    changed = permuted_tensors(ir, state, perm)
    for key in [k for k in changed if k.startswith("layer2.0.downsample")]:
        del changed[key]  # the shortcut side of the add keeps its old channel order
    state.update(changed)
    broken = copy.deepcopy(gm)
    broken.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        err = rel_err(broken.eval()(x), gm(x))
    assert err > 1e-2


def test_source_index_round_trips() -> None:
    """Index maps are values: applying a permutation and then its inverse is the identity."""
    rng = np.random.default_rng(1)
    sigma = rng.permutation(12)
    labels = np.repeat(np.arange(12), 3)  # like a flatten: every channel three times
    forward = source_index(labels, sigma)
    inverse = source_index(labels, np.argsort(sigma))
    np.testing.assert_array_equal(forward[inverse], np.arange(len(labels)))
    np.testing.assert_array_equal(labels[forward], sigma[labels])


def test_shuffle_then_depthwise_multiplier_regression() -> None:
    """Found by hypothesis: a shuffle reverses two channels of one node, then depthwise convs
    with multiplier 2 follow; their output blocks must follow their input channel's identity."""
    from archgen import Arch, DepthwiseSpec, HeadSpec, ShuffleSpec

    arch = Arch(input_size=(3, 8, 8), stem=8,
                blocks=(DepthwiseSpec(cin=8, multiplier=2, residual=False),
                        ShuffleSpec(cin=16, even=16, branch_out=2),
                        DepthwiseSpec(cin=10, multiplier=1, residual=False),
                        DepthwiseSpec(cin=10, multiplier=2, residual=False),
                        DepthwiseSpec(cin=20, multiplier=2, residual=False)),
                head=HeadSpec(pool=None, hidden=0), num_classes=8)
    for seed in range(10):
        err, _, _ = permuted_error(arch.build(arch.num_classes), arch.input_size, np.random.default_rng(seed))
        assert err <= TOL, f"seed {seed}: rel err {err:.2e}"
