"""learn's state-driven recipe: budget, adaptive warm-up, commit, near-chance warnings, input size.

The acceptance runs of the recipe on unseen data (minutes each) are ``slow``; here the rules are
tested as functions and the wiring on tiny runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from datagen import write_shapes_cifar, write_shapes_imagefolder
from splitc.learn import schedule
from splitc.cli.main import main
from splitc.learn.health import learned_threshold, near_chance
from splitc.learn.simplex import SimplexAssignment, SoftmaxAssignment


def test_default_budget_scales_with_small_data() -> None:
    assert schedule.total_steps(None, None, 156) == 1560           # synthetic: its 10 epochs
    assert schedule.total_steps(None, None, 56) == schedule.MIN_TOTAL_STEPS  # 3,600 images
    assert schedule.total_steps(3, None, 56) == 168                # an explicit --epochs is exact
    assert schedule.total_steps(3, 7, 56) == 7


def test_warmup_bounds() -> None:
    assert schedule.warmup_bounds(3, 156, 1560, adaptive=True) == (468, 780)
    assert schedule.warmup_bounds(3, 56, 1500, adaptive=True) == (400, 750)   # floor in steps
    assert schedule.warmup_bounds(3, 56, 100, adaptive=True) == (168, 168)    # never past the cap
    assert schedule.warmup_bounds(3, 56, 1500, adaptive=False) == (168, 168)


def test_warmup_waits_for_the_network() -> None:
    done = lambda step, accs: schedule.warmup_done(step, 400, 750, accs, 12, 600)  # noqa: E731
    assert not done(300, [0.6, 0.7])                 # before the floor
    assert not done(450, [0.09, 0.10])               # at chance: keep training plainly
    assert not done(450, [0.2, 0.3])                 # above chance, still rising, below halfway
    assert done(450, [0.30, 0.305])                  # flat
    assert done(450, [0.40, 0.60])                   # halfway from chance to 1
    assert done(750, [0.08])                         # the cap, whatever the state


def test_near_chance_rule() -> None:
    assert learned_threshold(10, 2000) == pytest.approx(0.15)
    assert near_chance(0.104, 12, 600) and not near_chance(0.3, 12, 600)
    assert learned_threshold(2, 10_000) == pytest.approx(0.625)


def test_commit_fixes_its_groups_in_place() -> None:
    gen = torch.Generator().manual_seed(0)
    for balanced in (False, True):
        for module in (SoftmaxAssignment(3, 10, generator=gen), SimplexAssignment(3, 10, generator=gen)):
            probs = module().detach()
            want = (torch.as_tensor(schedule.balanced_winners(probs.double().numpy())) if balanced
                    else probs.argmax(0))
            keys = set(module.state_dict())
            schedule.commit_space(module, module(), balanced)
            after = module()
            assert torch.equal(after.argmax(0), want)
            assert torch.allclose(after.max(0).values, torch.ones(10), atol=1e-6)
            assert set(module.state_dict()) == keys  # checkpoints keep their layout
            if balanced:
                assert sorted(torch.bincount(want, minlength=3).tolist()) == [3, 3, 4]


def test_balanced_winners_is_the_best_equal_split() -> None:
    """Against brute force over every equal-size assignment of small random matrices; an
    assignment that is already balanced is its own answer."""
    import itertools

    import numpy as np

    rng = np.random.default_rng(0)
    for G, n in [(2, 4), (2, 5), (3, 6), (3, 7), (4, 8)]:
        for _ in range(5):
            m = rng.dirichlet(np.ones(G) * 0.5, size=n).T
            got = schedule.balanced_winners(m)
            sizes = np.bincount(got, minlength=G)
            assert sizes.max() - sizes.min() <= 1
            score = lambda g: np.log(m[g, np.arange(n)]).sum()  # noqa: E731
            best = max(score(np.array(g)) for g in itertools.product(range(G), repeat=n)
                       if sorted(np.bincount(g, minlength=G)) == sorted(sizes))
            assert score(got) == pytest.approx(best)
    crisp = np.eye(4)[:, np.arange(12) % 4] * 0.9 + 0.025
    assert np.array_equal(schedule.balanced_winners(crisp), crisp.argmax(0))


def test_commit_due() -> None:
    assert not schedule.commit_due(100, 200, 1000, {1: 1.0})
    assert schedule.commit_due(300, 200, 1000, {1: 0.95, 2: 0.91})
    assert not schedule.commit_due(300, 200, 1000, {1: 0.95, 2: 0.5})
    assert schedule.commit_due(600, 200, 1000, {1: 0.4})     # half the regularized steps spent


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes"), classes=12, per_class=(4, 2))


def test_imagefolder_runs_at_its_own_size_and_says_so(tiny_folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["learn", "resnet20", "--data", f"imagefolder:{tiny_folder}", "--groups", "2",
                                       "--split-from", "layer3", "--max-steps", "1", "--batch-size", "8",
                                       "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    assert "input size 3x32x32 (the model's native size" in result.output
    doc = json.loads((tmp_path / "run" / "assignment.json").read_text())
    assert doc["input_size"] == [3, 32, 32]


def test_torchvision_model_takes_the_images_size(tiny_folder: Path) -> None:
    from splitc.data.sizes import choose_input_size

    size, why = choose_input_size(f"imagefolder:{tiny_folder}", (3, 224, 224), model_is_native=False)
    assert size == (3, 32, 32) and "images" in why


def test_run_at_chance_warns_and_split_refuses(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["learn", "tiny_residual", "--data", "synthetic:tiny", "--groups", "2",
                                       "--split-depth", "2", "--max-steps", "4", "--batch-size", "8",
                                       "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["learned"] is False and "near chance" in summary["warnings"][-1]
    assert "warning: validation accuracy" in result.output
    refused = CliRunner().invoke(main, ["split", str(out), "--out", str(tmp_path / "split")])
    assert refused.exit_code == 2 and "--accept-unlearned" in refused.output
    assert not (tmp_path / "split").exists()


def test_metrics_show_each_term(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["learn", "tiny_residual", "--data", "synthetic:tiny", "--groups", "2",
                                       "--split-depth", "2", "--max-steps", "12", "--batch-size", "8",
                                       "--warmup", "fixed", "--warmup-epochs", "0.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step" and r["regs_on"]]
    assert steps and all({"ce", "R_W", "R_D", "R_E", "R_E_excess"} <= set(r) for r in steps)
    assert all(r["R_E_excess"] >= -1e-6 for r in steps)       # balanced reads 0, never below
    share = next(r for r in records if r["kind"] == "grad_share")
    assert share["grad_norm_ce"] > 0 and share["rw_over_ce"] >= 0


def test_cifar_format_folder_loads(tmp_path: Path) -> None:
    from splitc.data.loaders import load_data

    bundle = load_data(f"cifar100:{write_shapes_cifar(tmp_path / 'c', classes=12, per_class=(3, 2))}")
    assert bundle.num_classes == 12 and len(bundle.train) == 36 and bundle.superclass_names == ("filled", "outlined")


def test_clearing_boosts_rw_only_while_the_cut_stalls() -> None:
    assert schedule.next_rw_scale(1.0, 0.30, 0.34) == 2.0      # stalled above target: doubled
    assert schedule.next_rw_scale(2.0, 0.10, 0.30) == 2.0      # halved: unchanged
    assert schedule.next_rw_scale(4.0, 0.005, 0.009) == 4.0    # below target: unchanged
    assert schedule.next_rw_scale(64.0, 0.3, 0.3) == schedule.RW_BOOST_MAX
    assert schedule.next_rw_scale(1.0, 0.3, None) == 1.0


def test_lr_warmup_has_a_floor_in_steps() -> None:
    """Half an epoch, but at least 150 steps (47 left resnet20 at chance on families) and at most
    a quarter of the run; 0 epochs turns it off."""
    from splitc.learn.optim import MIN_LR_WARMUP_STEPS, lr_ramp_steps

    assert lr_ramp_steps(0.5, 93, 930) == MIN_LR_WARMUP_STEPS == 150
    assert lr_ramp_steps(0.5, 400, 4000) == 200        # half an epoch when that is longer
    assert lr_ramp_steps(0.5, 75, 8) == 2              # a tiny run: a quarter of it
    assert lr_ramp_steps(0.0, 93, 930) == 0
