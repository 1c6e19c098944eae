"""The trained-start recipe (``learn --weights``) and ``finetune --distill`` (issue 26): the run is
measured before it changes anything, skips the warm-up, reports the one-shot split, records its
teacher; distillation uses that teacher, equals itself across ``--nproc 2``, and refuses a split
without one in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from splitc.compile.distill import distill_loss
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.compile.finetune_launch import launch_ranks
from splitc.compile.split_run import random_split, run_split
from splitc.core.errors import SplitcError
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.graph import zoo
from splitc.graph.scope import make_spec
from splitc.learn.config import TRAINED_DEFAULTS
from splitc.learn.loop import LearnConfig, learn

DATA = "synthetic:fast"


@pytest.fixture(scope="module")
def trained(trained_resnet20) -> tuple[Path, float]:
    """The suite's briefly trained resnet20 (conftest): its path and validation accuracy."""
    return trained_resnet20


@pytest.fixture(scope="module")
def from_trained(trained, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("from_trained")
    learn(LearnConfig(model="resnet20", data=DATA, groups="2", split_from="layer3", weights=str(trained[0]),
                      max_steps=4, batch_size=16, out=str(root / "run")), progress=False)
    run_split(root / "run", root / "split", accept_unlearned=True)
    return root / "run", root / "split"


def test_the_trained_start_skips_the_warmup_and_reports_every_point(trained, from_trained) -> None:
    run_dir, split_dir = from_trained
    doc = json.loads((run_dir / "assignment.json").read_text())
    assert doc["start_val_acc"] == pytest.approx(trained[1]) and doc["start_val_acc"] > 0.1
    assert doc["warmup_steps"] == 0 and doc["committed"] and doc["init_groups"] == "cluster-cut"
    assert 0 <= doc["oneshot_val_acc"] <= 1 and doc["masked_val_acc"] is not None
    config = torch.load(run_dir / "checkpoint.pt", weights_only=False)["config"]
    assert config["lr"] == TRAINED_DEFAULTS["lr"] and config["gamma_w"] == TRAINED_DEFAULTS["gamma_w"]
    teacher = load_file(str(run_dir / "teacher.safetensors"))      # the trained start, unchanged
    given = torch.load(trained[0], weights_only=True)
    assert all(torch.equal(teacher[k], given[k]) for k in given)
    meta = json.loads((split_dir / "split.json").read_text())
    assert meta["teacher"]["sha256"] == doc["teacher"]["sha256"] and (split_dir / "teacher.safetensors").is_file()


def test_untrained_weights_take_the_scratch_recipe_and_say_so(tmp_path: Path) -> None:
    torch.save(zoo.build("resnet20", 20).state_dict(), tmp_path / "random.pt")
    result = learn(LearnConfig(model="resnet20", data=DATA, groups="2", split_from="layer3", max_steps=2,
                               batch_size=8, weights=str(tmp_path / "random.pt"), out=str(tmp_path / "run")),
                   progress=False)
    assert any("near chance on this data: the run takes the from-scratch recipe" in w for w in result.warnings)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["config"]["lr"] == 0.1


def test_distill_loss_is_hintons() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(distill_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))
    p, log_q = F.softmax(t / 4, 1), F.log_softmax(s / 4, 1)
    kl = (p * (p.log() - log_q)).sum(1).mean()
    assert torch.allclose(distill_loss(s, t, y, 4.0, 1.0), 16 * kl, atol=1e-6)
    assert float(distill_loss(t, t, y, 2.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distill_trains_against_the_teacher_and_equals_itself_on_two_ranks(from_trained, tmp_path: Path) -> None:
    split = from_trained[1]
    dirs = {name: Path(shutil.copytree(split, tmp_path / name)) for name in ("plain", "kd", "kd2")}
    base = FinetuneConfig(str(dirs["plain"]), data=DATA, max_steps=3, batch_size=16, dtype="float64")
    finetune(base, progress=False)
    finetune(replace(base, split_dir=str(dirs["kd"]), distill=True), progress=False)
    launch_ranks(replace(base, split_dir=str(dirs["kd2"]), distill=True, nproc=2), progress=False)
    plain, kd, kd2 = (load_file(str(d / "finetuned.safetensors")) for d in dirs.values())
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-12))  # noqa: E731
    floats = [k for k in kd if kd[k].is_floating_point()]
    assert max(rel(kd2[k], kd[k]) for k in floats) <= 1e-5          # --nproc 2 == one process
    assert max(rel(plain[k], kd[k]) for k in floats) > 1e-4          # the teacher changed the steps


def test_distill_without_a_teacher_is_one_line(tmp_path: Path) -> None:
    random_split("resnet20", make_spec("2", "layer3", model="resnet20"), tmp_path / "split", num_classes=20,
                 input_size=(3, 32, 32))
    with pytest.raises(SplitcError, match="records no teacher"):
        finetune(FinetuneConfig(str(tmp_path / "split"), data=DATA, max_steps=1, distill=True), progress=False)


@pytest.mark.parametrize("epochs", [None, 0])
def test_the_trained_default_is_a_one_shot_split(trained, tmp_path: Path, epochs: int | None) -> None:
    """From trained weights, by default and with --epochs 0: no step; the groups committed at
    once; the masked accuracy is the one-shot split's, and the split made from it computes it
    (then finetune trains it)."""
    result = learn(LearnConfig(model="resnet20", data=DATA, groups="2", split_from="layer3", weights=str(trained[0]),
                               epochs=epochs, batch_size=16, out=str(tmp_path / "run")), progress=False)
    doc = json.loads((tmp_path / "run" / "assignment.json").read_text())
    assert doc["steps"] == 0 and doc["committed"] and doc["val_acc"] == pytest.approx(trained[1])
    assert doc["masked_val_acc"] == doc["oneshot_val_acc"] == result.masked_val_acc
    teacher = load_file(str(tmp_path / "run" / "teacher.safetensors"))
    given = torch.load(trained[0], weights_only=True)
    assert all(torch.equal(teacher[k], given[k]) for k in given)      # no step changed the network
    run_split(tmp_path / "run", tmp_path / "split", accept_unlearned=True)
    from splitc.compile.split_dir import load_split
    split = load_split(tmp_path / "split").model
    acc = accuracy(split, load_data(DATA, seed=0).val, torch.device("cpu"))
    # the split is the cut with its kept weights refit (learn.refit, on from trained weights)
    assert acc == pytest.approx(doc["refit"]["refit_val_acc"], abs=0.02)   # float sums in another order may flip a near tie


def test_epochs_0_needs_trained_weights(tmp_path: Path) -> None:
    with pytest.raises(SplitcError, match="--epochs 0 .* needs --weights of a trained network"):
        learn(LearnConfig(model="resnet20", data=DATA, groups="2", split_from="layer3", epochs=0,
                          out=str(tmp_path / "run")), progress=False)


def test_splitnet_from_a_trained_model_compiles_the_one_shot_split_at_once(trained) -> None:
    """The library's trained start: the groups are committed when SplitNet is built, so compile()
    before any step is the one-shot split, and it computes the one-shot accuracy measured then."""
    import splitc

    bundle = load_data(DATA, seed=0)
    model = zoo.build("resnet20", bundle.num_classes)
    model.load_state_dict(torch.load(trained[0], weights_only=True))
    sp = splitc.SplitNet(model, torch.randn(1, 3, 32, 32), steps=10, groups=2, split_from="layer3",
                         probe=bundle.train, val=bundle.val, trained=True)
    assert sp.run.committed and sp.run.oneshot_val_acc is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = sp.compile()
    assert sp.verify(split) < 1e-4           # against the refit cut it was compiled from
    assert sp.run.refit["layers"] and sp.run.refit["masked_val_acc"] == sp.run.oneshot_val_acc
    assert accuracy(split, bundle.val, torch.device("cpu")) == pytest.approx(sp.run.refit["refit_val_acc"], abs=0.02)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the user's model is not changed
    plain = splitc.SplitNet(model, torch.randn(1, 3, 32, 32), steps=10, groups=2, split_from="layer3",
                            probe=bundle.train, val=bundle.val, trained=True, refit=False).compile()
    assert accuracy(plain, bundle.val, torch.device("cpu")) == pytest.approx(sp.run.oneshot_val_acc, abs=0.02)


def test_a_split_from_trained_weights_finetunes_the_shorter_default(from_trained, tmp_path: Path) -> None:
    from splitc.compile.finetune_loop import DEFAULT_BRANCH_LR_MULT, DEFAULT_EPOCHS, default_branch_lr_mult, default_epochs
    split = Path(shutil.copytree(from_trained[1], tmp_path / "split"))
    meta = json.loads((split / "split.json").read_text())
    assert meta["trained_start"] is True
    assert default_epochs(FinetuneConfig(str(split)), meta) == DEFAULT_EPOCHS["trained"] < DEFAULT_EPOCHS["scratch"]
    assert default_epochs(FinetuneConfig(str(split)), {**meta, "trained_start": False}) == DEFAULT_EPOCHS["scratch"]
    assert default_epochs(FinetuneConfig(str(split), epochs=7), meta) == 7
    # and trains its branches at 4x the trunk's rate; a split from scratch at 1x
    assert default_branch_lr_mult(FinetuneConfig(str(split)), meta) == DEFAULT_BRANCH_LR_MULT["trained"] == 4.0
    assert default_branch_lr_mult(FinetuneConfig(str(split)), {**meta, "trained_start": False}) == 1.0
    assert default_branch_lr_mult(FinetuneConfig(str(split), branch_lr_mult=2.0), meta) == 2.0


def test_a_hierarchy_from_trained_weights_learns_its_groups_first(trained, tmp_path: Path) -> None:
    from splitc.learn.config import TRAINED_HIERARCHY_EPOCHS
    base = LearnConfig(model="resnet20", data=DATA, groups="2,2", split_from="layer2,layer3", weights=str(trained[0]),
                       batch_size=64, max_steps=None, out=str(tmp_path / "run"))
    with pytest.raises(SplitcError, match="--epochs 0 .*hierarchy"):
        learn(replace(base, epochs=0), progress=False)
    result = learn(base, progress=False)
    assert any("a hierarchy has no one-shot split" in w for w in result.warnings)
    per_epoch = len(load_data(DATA).train) // 64
    assert result.steps == TRAINED_HIERARCHY_EPOCHS * per_epoch


@pytest.mark.parametrize("eval_every, evaluated_after", [(0, [2]), (2, [1, 2])])
def test_finetune_validates_after_its_last_epoch_unless_asked_more_often(from_trained, tmp_path: Path,
                                                                         eval_every: int, evaluated_after: list) -> None:
    """A validation costs about a third of a training epoch: by default only the last epoch has
    one (its accuracy is the result); --eval-every N adds one after every N-th epoch."""
    split = Path(shutil.copytree(from_trained[1], tmp_path / "split"))
    result = finetune(FinetuneConfig(str(split), data=DATA, epochs=3, batch_size=400, eval_every=eval_every,
                                     force=True), progress=False)
    records = [json.loads(line) for line in (split / "finetune_metrics.jsonl").read_text().splitlines()]
    ends = [r for r in records if r.get("kind") == "epoch_end"]
    assert [r["epoch"] for r in ends] == evaluated_after and result.steps == 9
    assert ends[-1]["val_acc"] == result.val_acc
    done = json.loads((split / "split.json").read_text())["finetune"]   # the defaults it resolved, recorded
    assert done["epochs"] == 3 and done["lr"] == FinetuneConfig.lr and done["eval_every"] == eval_every
