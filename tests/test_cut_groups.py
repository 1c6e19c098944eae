"""``--init-groups cluster-cut`` (splitc.learn.cut_groups): channel groups read off the weights
around given class groups, committed at the end of the warm-up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from splitc.core.errors import SplitcError
from splitc.graph.analysis import analyse
from splitc.graph.group_tree import HardAssignment, balanced_assignment
from splitc.graph.scope import make_spec
from splitc.learn import schedule
from splitc.learn.assign import AssignmentSet, cut_energy
from splitc.learn.cut_groups import cut_groups
from splitc.learn.loop import LearnConfig, learn
from splitc.passes.mask import mask_inter_group


def _onehot_set(ir, scope, hard: HardAssignment) -> AssignmentSet:
    aset = AssignmentSet.create(ir, scope, "softmax")
    for space, groups in hard.groups_of_space.items():
        schedule.commit_groups(aset.by_space[str(space)], groups, scope.groups_of(space))
    return aset


@pytest.mark.parametrize("model, groups, split", [("resnet20", "4", "layer3"), ("resnet20", "2", "layer2"),
                                                  ("wrn16_8", "4", "block3"),
                                                  ("densenet121", "2", "features.denseblock4")])
def test_recovers_planted_block_structure(model: str, groups: str, split: str) -> None:
    """Weights made block-diagonal under random balanced groups: given only the class groups,
    the pass finds every space's groups again, so nothing lies in the cut."""
    torch.manual_seed(0)
    a = analyse(model, make_spec(groups, split), 20, (3, 32, 32))
    planted = balanced_assignment(a.ir, a.scope, np.random.default_rng(1))
    masked = mask_inter_group(a.gm, a.ir, a.scope, planted)
    class_nodes = a.ir.node_index[np.asarray(a.ir.output_elems)]
    classes = planted.groups_of_space[a.ir.class_space][class_nodes]
    found = cut_groups(masked, a.ir, a.scope, classes)
    assert set(found) == set(a.scope.level_of)
    for space, nodes in found.items():
        assert nodes.tolist() == planted.groups_of_space[space].tolist(), a.ir.spaces[space].name
    assert cut_energy(masked, a.ir, a.scope, _onehot_set(a.ir, a.scope, HardAssignment(found)))["total"] < 1e-12


def test_cuts_less_than_random_groups_on_random_weights() -> None:
    """On unstructured weights the pass still keeps more energy inside the groups than random
    balanced groups do (which cut about (G-1)/G), and its groups are equal."""
    torch.manual_seed(0)
    a = analyse("resnet20", make_spec("4", "layer3"), 20, (3, 32, 32))
    found = cut_groups(a.gm, a.ir, a.scope, np.arange(20) % 4)
    for nodes in found.values():
        sizes = np.bincount(nodes, minlength=4)
        assert sizes.max() - sizes.min() <= 1
    ours = cut_energy(a.gm, a.ir, a.scope, _onehot_set(a.ir, a.scope, HardAssignment(found)))["total"]
    rand = cut_energy(a.gm, a.ir, a.scope,
                      _onehot_set(a.ir, a.scope, balanced_assignment(a.ir, a.scope, np.random.default_rng(0))))["total"]
    assert ours < rand - 0.02, (ours, rand)


def test_balanced_argmax_maximises_the_summed_score() -> None:
    """Against brute force over every balanced labelling of 7 nodes into 3 groups."""
    import itertools

    rng = np.random.default_rng(0)
    score = rng.random((3, 7))
    got = schedule.balanced_argmax(score)
    best = max((lab for lab in itertools.product(range(3), repeat=7)
                if sorted(np.bincount(lab, minlength=3)) == [2, 2, 3]),
               key=lambda lab: score[list(lab), range(7)].sum())
    assert score[got, range(7)].sum() == pytest.approx(score[list(best), range(7)].sum())


def test_hierarchical_scope_is_refused_in_one_line(tmp_path: Path) -> None:
    config = LearnConfig(model="resnet20", data="synthetic:tiny", groups="2,4", split_from="layer2,layer3", max_steps=2,
                         init_groups="cluster-cut", out=str(tmp_path / "r"))
    with pytest.raises(SplitcError, match="one-level") as exc:
        learn(config, progress=False)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("changes, match", [({"assign": "random"}, "needs learned"),
                                            ({"commit": False}, "--no-commit")])
def test_conflicting_options(tmp_path: Path, changes: dict, match: str) -> None:
    config = LearnConfig(model="resnet20", data="synthetic:tiny", max_steps=2, init_groups="cluster-cut",
                         out=str(tmp_path / "r"), **changes)
    with pytest.raises(SplitcError, match=match):
        learn(config, progress=False)


def test_run_commits_the_feature_clustering_at_the_end_of_warmup(tmp_path: Path) -> None:
    """A tiny run: the commit record comes at the warm-up's end, every space is frozen with
    equal groups, and the class map is the feature clustering (superclass ARI = feature ARI)."""
    config = LearnConfig(model="resnet20", data="synthetic:fast", groups="4", split_from="layer3", max_steps=8,
                         warmup="fixed", warmup_epochs=0.04, batch_size=16, log_every=1,
                         init_groups="cluster-cut", out=str(tmp_path / "r"))
    result = learn(config, progress=False)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    commit = next(r for r in records if r["kind"] == "commit")
    warm = next(r for r in records if r["kind"] == "warmup_end")
    assert commit["step"] == warm["step"] == 3 and commit["init_groups"] == "cluster-cut"
    doc = json.loads((result.run_dir / "assignment.json").read_text())
    assert doc["class_groups"] == doc["feature_groups"] and doc["committed"]
    assert result.superclass_ari == pytest.approx(result.feature_ari)
    for space in doc["spaces"]:
        assert space["frozen"] and max(space["group_sizes"]) - min(space["group_sizes"]) <= 1
    resumed = learn(replace(config, max_steps=10, resume=True), progress=False)   # resumes committed
    assert json.loads((resumed.run_dir / "assignment.json").read_text())["class_groups"] == doc["class_groups"]


def test_default_grouping_resolves_where_it_applies(monkeypatch) -> None:
    """An unset --init-groups takes the default where it applies; a hierarchy, --no-commit and
    SplitNet-Random fall back to the learned map; a given value is kept."""
    from splitc.learn import config as cfg

    monkeypatch.setattr(cfg, "DEFAULT_INIT_GROUPS", "cluster-cut")
    assert cfg.default_init_groups(LearnConfig(), 1) == "cluster-cut"
    assert cfg.default_init_groups(LearnConfig(), 2) == "learned"
    assert cfg.default_init_groups(LearnConfig(commit=False), 1) == "learned"
    assert cfg.default_init_groups(LearnConfig(assign="random"), 1) == "learned"
    assert cfg.default_init_groups(LearnConfig(init_groups="cluster"), 1) == "cluster"


def test_cli_default_is_cluster_cut_for_one_level(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from splitc.cli.main import main

    args = ["learn", "resnet20", "--data", "synthetic:fast", "--max-steps", "4", "--warmup-epochs", "0.02",
            "--warmup", "fixed", "--out", str(tmp_path / "r"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["init_groups"] == "cluster-cut"
    assert summary["superclass_ari"] == pytest.approx(summary["feature_ari"])


def test_classifier_cut_commits_the_classifier_rows_and_reports_the_features_apart(tmp_path: Path) -> None:
    """--init-groups classifier-cut: the committed class map is the clustering of the classifier's
    rows (the warm-up record's class_groups_start); feature_groups/feature_ari stay the clustering
    of the split-input class means, which the same run computes for cluster-cut."""
    from safetensors.torch import load_file

    from splitc.data.synthetic import NUM_CLASSES
    from splitc.graph.analysis import analyse
    from splitc.graph.scope import make_spec
    from splitc.learn.groups import class_space_levels, classifier_rows, cluster_classes

    base = dict(model="resnet20", data="synthetic:fast", groups="4", split_from="layer3", max_steps=5,
                warmup="fixed", warmup_epochs=0.04, batch_size=16, log_every=1, seed=3)
    docs, warm = {}, {}
    for init in ("cluster-cut", "classifier-cut"):
        result = learn(LearnConfig(**base, init_groups=init, out=str(tmp_path / init)), progress=False)
        docs[init] = json.loads((result.run_dir / "assignment.json").read_text())
        warm[init] = next(json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
                          if json.loads(line)["kind"] == "warmup_end")
        assert docs[init]["class_groups"] == warm[init]["class_groups_start"]
    assert docs["cluster-cut"]["feature_groups"] == docs["cluster-cut"]["class_groups"]
    # both runs share the seed and the warm-up steps: the same features, so the same feature clustering
    assert docs["classifier-cut"]["feature_groups"] == docs["cluster-cut"]["feature_groups"]
    # the classifier rows at the warm-up's end (the teacher file holds those weights) give the committed map
    run_dir = tmp_path / "classifier-cut"
    analysis = analyse("resnet20", make_spec("4", "layer3"), NUM_CLASSES, (3, 32, 32))
    analysis.gm.load_state_dict(load_file(run_dir / "teacher.safetensors"))
    ir = analysis.ir
    labels = cluster_classes(classifier_rows(analysis.gm, ir), class_space_levels(analysis.scope, ir), seed=3)
    names = list(docs["classifier-cut"]["class_groups"])
    assert [int(g) for g in labels] == [docs["classifier-cut"]["class_groups"][n] for n in names]
