"""mask: the masked model keeps exactly the weights counting.count counts, and in it a
perturbation of group g's channels changes only the logits of classes in g's subtree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

from archgen import architectures
from helpers import analyse, randomize
from splitc.graph import zoo
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.counting import count
from splitc.core.errors import SplitcError
from splitc.models import TESTNETS
from splitc.passes.mask import keep_mask, mask_inter_group
from splitc.graph.scope import ScopeSpec, resolve_scope

FLAT = ScopeSpec((2,), split_from=("layer3",))
HIER = ScopeSpec((2, 4), split_from=("layer2", "layer3"))


def seeded_rng() -> tuple[int, np.random.Generator]:
    """A fresh random generator, with its seed for the failure message."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    return seed, np.random.default_rng(seed)


def check_against_count(gm, ir, scope, assignment, why: str) -> None:
    """Per layer: nonzero weights of the masked model == count()'s split params minus bias,
    and == keep_mask's own count; trunk layers and the input module are untouched."""
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    masked = mask_inter_group(gm, ir, scope, assignment)
    report = count(ir, scope, assignment)
    seen: set[str] = set()
    for layer, cost in zip(ir.layers, report.layers):
        assert cost.name == layer.name
        if layer.name in seen:
            continue
        seen.add(layer.name)
        weight = masked.get_parameter(f"{layer.name}.weight")
        bias = len(layer.out_elems) if layer.has_bias else 0
        kept = int(torch.count_nonzero(weight))
        assert kept == cost.split.params - bias, (why, layer.name, cost.kind)
        assert kept == int(keep_mask(ir, scope, assignment, layer).sum()) * layer.taps, (why, layer.name)
        if cost.kind == "trunk":
            assert torch.equal(weight, gm.get_parameter(f"{layer.name}.weight")), (why, layer.name)
    for name, value in masked.state_dict().items():
        if not name.endswith("weight") or name[: -len(".weight")] not in seen:
            assert torch.equal(value, before[name]), (why, name)
    for name, value in gm.state_dict().items():
        assert torch.equal(value, before[name]), (why, "input module changed", name)
    assert report.split.params < report.baseline.params, why


@pytest.mark.parametrize("spec", [FLAT, HIER], ids=["flat", "hier"])
def test_resnet20_masked_nonzeros_equal_count(spec) -> None:
    seed, rng = seeded_rng()
    gm, ir = analyse(randomize(zoo.build("resnet20", num_classes=8)), (3, 32, 32))
    scope = resolve_scope(ir, spec)
    check_against_count(gm, ir, scope, balanced_assignment(ir, scope, rng), f"seed {seed}")


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(TESTNETS))
def test_tiny_nets_masked_nonzeros_equal_count(name, depth) -> None:
    seed, rng = seeded_rng()
    gm, ir = analyse(randomize(zoo.build(name, num_classes=6)), (3, 16, 16))
    scope = resolve_scope(ir, ScopeSpec((2,), split_depth=(depth,)))
    check_against_count(gm, ir, scope, balanced_assignment(ir, scope, rng), f"seed {seed}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures())
def test_generated_nets_masked_nonzeros_equal_count(arch) -> None:
    gm, ir = analyse(randomize(arch.build(), seed=0), arch.input_size)
    try:
        scope = resolve_scope(ir, ScopeSpec((2,), split_depth=(2,)))
    except SplitcError:
        assume(False)
    seed, rng = seeded_rng()
    check_against_count(gm, ir, scope, balanced_assignment(ir, scope, rng), f"{arch!r} seed {seed}")


# ------------------------------------------------------------------ independence of branches


@pytest.fixture(scope="module")
def split_resnets() -> dict:
    """Per scope id: (gm, ir, scope, assignment, masked gm, seed), built on first use."""
    cache: dict = {}

    def get(spec_id: str):
        if spec_id not in cache:
            seed, rng = seeded_rng()
            gm, ir = analyse(randomize(zoo.build("resnet20", num_classes=8), seed=seed), (3, 32, 32))
            scope = resolve_scope(ir, {"flat": FLAT, "hier": HIER}[spec_id])
            assignment = balanced_assignment(ir, scope, rng)
            cache[spec_id] = (gm, ir, scope, assignment, mask_inter_group(gm, ir, scope, assignment), seed)
        return cache[spec_id]

    return get


def group_of(ir, scope, assignment, elems) -> tuple[int, np.ndarray]:
    """Number of groups at the elements' level and the group of each (one space in branches)."""
    space = int(ir.space_of[elems[0]])
    assert (ir.space_of[elems] == space).all() and scope.in_branches(space)
    return scope.groups_of(space), assignment.groups_of_space[space][ir.node_index[elems]]


def logit_change(model, module: str, channel_groups: np.ndarray, g: int, at_input: bool) -> torch.Tensor:
    """Per class: max |change| of the logits when noise is added to the group-g channels of
    ``module``'s input (a forward pre-hook) or output (a forward hook)."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    select = torch.as_tensor(channel_groups == g, dtype=torch.float32)

    def perturb(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
        return t + noise * select.reshape([1, -1] + [1] * (t.dim() - 2))

    target = model.get_submodule(module)
    with torch.no_grad():
        base = model(x)
        handle = (target.register_forward_pre_hook(lambda m, args: (perturb(args[0]),)) if at_input
                  else target.register_forward_hook(lambda m, args, out: perturb(out)))
        try:
            perturbed = model(x)
        finally:
            handle.remove()
    return (perturbed - base).abs().amax(dim=0)


@pytest.mark.parametrize("spec_id,module,at_input", [
    ("flat", "fc", True), ("flat", "layer3.1.conv1", False),
    ("hier", "fc", True), ("hier", "layer3.1.conv1", False), ("hier", "layer2.1.conv1", False),
])
def test_perturbing_group_changes_only_its_subtree_logits(split_resnets, spec_id, module, at_input) -> None:
    """Noise on group g's channels (fc input, or a conv output deeper in the branches) moves
    the logits of g's subtree and leaves every other class's logit unchanged."""
    gm, ir, scope, assignment, masked, seed = split_resnets(spec_id)
    layer = ir.layer(module)
    g_here, channel_groups = group_of(ir, scope, assignment, layer.in_elems if at_input else layer.out_elems)
    g_cls, class_groups = group_of(ir, scope, assignment, ir.output_elems)
    subtree_of = class_groups // (g_cls // g_here)
    for g in range(g_here):
        change = logit_change(masked, module, channel_groups, g, at_input)
        scale = float(change.max())
        assert scale > 1e-3, (seed, g, "no logit moved")
        assert float(change[torch.as_tensor(subtree_of != g)].max()) <= 1e-6 * max(1.0, scale), (seed, g)
    unmasked = logit_change(gm, module, channel_groups, 0, at_input)
    assert float(unmasked[torch.as_tensor(subtree_of != 0)].max()) > 1e-3, "test has no power: unmasked is independent too"
