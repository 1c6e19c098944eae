"""Model-parallel ``splitc finetune --nproc N`` (or under ``torchrun``): branches on separate ranks.

Rank r holds a replica of the trunk and of the (parameter-free) merge, and only its own
branches: whole top-level subtrees (a supergroup node with its leaves), placed largest first by
FLOPs on the least-loaded rank. Every rank reads the same batch, runs the trunk and its own
branches, all-gathers the tensors the merge reads, and computes the same full logits and loss.

Why every gradient equals the single-process one. Let L be the single-process loss, z_s the
output of branch s read by the merge, h the trunk's output, theta_T the trunk's and theta_s
branch s's parameters. Rank r computes L_r, numerically L (same batch, same trunk weights, the
same gathered z). Each rank backpropagates L_r / N, so the objective is J = sum_r L_r / N = L.

* Branches. The copy of z_s gathered on rank r receives dL_r/dz_s / N = dL/dz_s / N. The
  all-gather's adjoint (``_AllGather.backward``: an all-reduce, then the rank's own slot) sums
  that over the N ranks, so the owner of s receives exactly dL/dz_s, and autograd gives it
  dL/dtheta_s. Branch gradients are complete where they live and stay local.
* Trunk. On rank r the trunk's gradient is g_r = sum over r's branches s of
  (dz_s/dtheta_T)^T dL/dz_s, plus 1/N of any path that reaches the merge without a branch.
  The trunk's parameters are shared by all branches, so dL/dtheta_T is the sum over all
  branches: sum_r g_r. ``RankReplica.sync_grads`` all-reduces (SUM) the replicated gradients;
  the 1/N paths add up to 1 the same way, and so would merge parameters if there were any.
* Weight decay, momentum and the learning rate are applied by the optimizer after the sum, to
  identical values on every rank, so the trunk replicas stay equal (the all-reduce hands every
  rank the same bits). BatchNorm in the trunk sees the same batch on every rank, so its batch
  statistics and running statistics are equal too; branch BatchNorms are local like their weights.

The loss division is exact for N a power of two. Randomness: the data order and augmentation
come from the global RNG exactly as in a single-process run; each forward runs under a forked
RNG seeded by (seed, call), so dropout (if any) draws the same masks in every trunk replica and
cannot shift the data stream between ranks (dropout masks then differ from a single process).

Checkpoints and weights are the single-process ones: rank 0 gathers the branches' weights and
momentum buffers and writes ``finetune.pt`` and ``finetuned.safetensors`` atomically, so
``export``, ``verify`` and ``--resume`` (with any N, or none) work unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from splitc.core.errors import SplitcError
from splitc.compile.finetune_loop import (FinetuneConfig, FinetuneResult, Replica, branch_prefixes, claim_split_dir, lr_groups,
                                          make_optimizer, prepare, restart, to_run, train)
from splitc.compile.split_dir import SPLIT_WEIGHTS, load_split, read_meta
from splitc.learn.ranks import summed_over_ranks
from splitc.graph.split_model import INPUT, SplitModel, SplitPlan, TensorRef, module_key

COLLECTIVE_TIMEOUT = timedelta(minutes=10)  # a rank stuck this long in a collective fails the job


# --- placement ------------------------------------------------------------------------------

def place_branches(plan: SplitPlan, flops: dict[str, int], world: int) -> list[tuple[str, ...]]:
    """For every rank, the branches it holds: whole top-level subtrees, the largest (by FLOPs)
    first onto the least-loaded rank (ties: the lower rank), each list in plan order."""
    order = [s.name for s in plan.subgraphs]
    subtree: dict[str, list[str]] = {}
    for spec in plan.branches:
        top = spec
        while top.parent is not None:
            top = plan.get(top.parent)
        subtree.setdefault(top.name, []).append(spec.name)
    cost = {top: sum(flops.get(n, 0) for n in names) for top, names in subtree.items()}
    load, owned = [0] * world, [[] for _ in range(world)]
    for top in sorted(subtree, key=lambda t: (-cost[t], order.index(t))):
        r = min(range(world), key=lambda i: (load[i], i))
        owned[r] += subtree[top]
        load[r] += cost[top]
    return [tuple(sorted(names, key=order.index)) for names in owned]


def check_nproc(meta: dict[str, Any], nproc: int, folder: Path) -> None:
    """One line for more ranks than the split has top-level branches (whole subtrees)."""
    tops = [s for s in SplitPlan.from_dict(meta["plan"]).branches if s.parent is None]
    if nproc > len(tops):
        raise SplitcError(f"--nproc {nproc} is more than the {len(tops)} top-level branches of {folder} (a rank "
                          f"holds whole subtrees, a supergroup with its leaves); use --nproc {len(tops)} or fewer.")


def check_device(device: str, local_world: int) -> None:
    """One line for a device kind without a backend, or fewer GPUs than local workers."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise SplitcError(f"--device {device} cannot run a distributed finetune; use cpu (gloo) or cuda (nccl).")
    gpus = torch.cuda.device_count() if kind == "cuda" else local_world
    if local_world > gpus:
        have = f"this host has {gpus} GPU{'s' * (gpus != 1)}" if gpus else "torch sees no GPU on this host"
        raise SplitcError(f"--nproc {local_world} with --device cuda needs one GPU per worker, but {have}; "
                          f"use --nproc {max(gpus, 1)} or fewer, or --device cpu.")


# --- the rank's model -----------------------------------------------------------------------

class _AllGather(torch.autograd.Function):
    """``all_gather`` of one [B, K] tensor per rank into [N, B, K], with its adjoint as backward:
    each rank's input receives the sum over ranks of the gradients of its slot."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class RankModel(nn.Module):
    """The trunk, this rank's branches and the merge of a split model; ``forward`` is a
    collective (every rank must call it with the same batch) and returns the full logits."""

    def __init__(self, full: SplitModel, placement: list[tuple[str, ...]], rank: int, seed: int) -> None:
        super().__init__()
        self.plan, self.rank, self.seed, self.calls = full.plan, rank, seed, 0
        owner = {name: r for r, names in enumerate(placement) for name in names}
        replicated = [s.name for s in full.plan.subgraphs if s.role != "branch"]
        kept = [s.name for s in full.plan.subgraphs if s.name in replicated or owner.get(s.name) == rank]
        self.parts = nn.ModuleDict({module_key(n): full.subgraph(n) for n in kept})
        self.local = [s for s in full.plan.subgraphs if s.name in kept and s.role != "merge"]
        for spec in self.local:
            if any(ref.producer not in kept and ref.producer != INPUT for ref in spec.inputs):
                raise ValueError(f"{spec.name} reads a subgraph of another rank; the placement splits a subtree")
        merge = full.plan.get("merge")
        needed = list(dict.fromkeys(ref for ref in merge.inputs if ref.producer in owner))
        self.sent_by = [[ref for ref in needed if owner[ref.producer] == r] for r in range(len(placement))]
        self._shapes: list[list[tuple[int, ...]]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1_000_003 + self.calls)  # the same in every rank's trunk
            self.calls += 1
            env: dict[str, tuple[torch.Tensor, ...]] = {INPUT: (x,)}
            for spec in self.local:
                env[spec.name] = tuple(self.parts[module_key(spec.name)](*[env[r.producer][r.index] for r in spec.inputs]))
            got = self._exchange(env, x.shape[0])
            merge = self.plan.get("merge")
            return self.parts["merge"](*[got[r] if r in got else env[r.producer][r.index] for r in merge.inputs])[0]

    def _exchange(self, env: dict[str, tuple[torch.Tensor, ...]], batch: int) -> dict[TensorRef, torch.Tensor]:
        """Every rank's branch outputs that the merge reads, flattened, padded to one width and
        all-gathered (autograd-aware), then cut back into tensors."""
        mine = [env[ref.producer][ref.index] for ref in self.sent_by[self.rank]]
        if self._shapes is None:  # per-sample shapes do not change from batch to batch
            self._shapes = [[] for _ in self.sent_by]
            dist.all_gather_object(self._shapes, [tuple(t.shape[1:]) for t in mine])
        widths = [sum(math.prod(s) for s in shapes) for shapes in self._shapes]
        flat = torch.cat([t.reshape(batch, -1) for t in mine], dim=1)
        gathered = _AllGather.apply(F.pad(flat, (0, max(widths) - flat.shape[1])))
        out: dict[TensorRef, torch.Tensor] = {}
        for r, (refs, shapes) in enumerate(zip(self.sent_by, self._shapes)):
            offset = 0
            for ref, shape in zip(refs, shapes):
                n = math.prod(shape)
                out[ref] = gathered[r][:, offset:offset + n].reshape(batch, *shape)
                offset += n
        return out


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of the exact bits, so that replicas can be compared across processes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# --- the rank's part in the shared loop -------------------------------------------------------

class RankReplica(Replica):
    """finetune.train's hooks for one rank: the loss scale, the trunk all-reduce, and rank 0's
    gathering of the full state in the single-process checkpoint format."""

    def __init__(self, model: RankModel, full: SplitModel, rank: int, world: int) -> None:
        self.world, self.rank, self.writer = world, rank, rank == 0
        self.full_keys = list(full.state_dict())
        self.full_params = [n for n, _ in full.named_parameters()]
        self.local_params = [n for n, _ in model.named_parameters()]
        self._branch_prefixes = branch_prefixes(full.plan)
        self.shared = [p for n, p in model.named_parameters() if not self.is_branch(n)]

    def is_branch(self, name: str) -> bool:
        """A parameter or buffer name of a branch (not replicated: it lives on one rank)."""
        return name.startswith(self._branch_prefixes)

    def sync_grads(self) -> None:
        """Sum the replicated (trunk, merge) gradients over the ranks, in one flat all-reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.shared]
        for p, g in zip(self.shared, summed_over_ranks(grads)):
            p.grad = g

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        local = model.state_dict()
        mine = {k: v.detach().cpu() for k, v in local.items() if self.is_branch(k)}
        merged = self._gather(mine)
        if merged is None:
            return None
        return {k: local[k] if k in local else merged[k] for k in self.full_keys}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        sd = optimizer.state_dict()
        local = self._ordered(self.local_params, sd["param_groups"])
        by_name = {local[i]: st for i, st in sd["state"].items()}
        mine = {n: {k: v.cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                for n, st in by_name.items() if self.is_branch(n)}
        merged = self._gather(mine)
        if merged is None:
            return None
        by_name.update(merged)
        full = self._ordered(self.full_params, sd["param_groups"])
        state = {i: by_name[n] for i, n in enumerate(full) if n in by_name}
        return {"state": state, "param_groups": self._numbered(self.full_params, sd["param_groups"])}

    def _ordered(self, names: list[str], groups: list[dict[str, Any]]) -> list[str]:
        """``names`` in the order torch numbers an optimizer's parameters: group by group
        (:func:`~splitc.compile.finetune_loop.lr_groups`, the single process's rule)."""
        return [n for members in self._split(names, groups) for n in members]

    def _split(self, names: list[str], groups: list[dict[str, Any]]) -> list[list[str]]:
        if len(groups) not in (1, 2):
            raise ValueError("the finetune optimizer has one parameter group, or two with a branch lr multiple")
        return lr_groups(names, self._branch_prefixes, apart=len(groups) == 2)

    def _numbered(self, names: list[str], groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``groups``' settings with ``names`` numbered in torch's order."""
        out, start = [], 0
        for group, members in zip(groups, self._split(names, groups)):
            out.append({**group, "params": list(range(start, start + len(members)))})
            start += len(members)
        return out

    def _gather(self, mine: dict[str, Any]) -> dict[str, Any] | None:
        """Every rank's entries, merged on rank 0 (None elsewhere)."""
        pieces: list[dict[str, Any]] | None = [{} for _ in range(self.world)] if self.writer else None
        dist.gather_object(mine, pieces, dst=0)
        return None if pieces is None else {k: v for piece in pieces for k, v in piece.items()}

    def local_optimizer_state(self, full: dict[str, Any]) -> dict[str, Any]:
        """A single-process optimizer state (any writer's N) cut down to this rank's parameters."""
        groups = full["param_groups"]
        index = {n: i for i, n in enumerate(self._ordered(self.full_params, groups))}
        state = {j: full["state"][index[n]] for j, n in enumerate(self._ordered(self.local_params, groups))
                 if index[n] in full["state"]}
        return {"state": state, "param_groups": self._numbered(self.local_params, groups)}


@dataclass(frozen=True)
class RankReport:
    """What a rank hands back to the launcher (the tests read the digests and names)."""

    rank: int
    branches: tuple[str, ...]
    params: tuple[str, ...]        # the names of the parameters this rank holds
    replica_digest: str            # the trunk's and merge's parameters and buffers, bit for bit
    result: FinetuneResult


# --- one rank -------------------------------------------------------------------------------

def run_rank(config: FinetuneConfig, progress: bool) -> RankReport:
    """One rank of the job; RANK, WORLD_SIZE (and LOCAL_RANK) come from torchrun or the launcher."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local, local_world = int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.device(config.device).type == "cuda"
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # the local ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        return _train_rank(config, rank, world, local_world, device, progress and rank == 0)
    except SplitcError as exc:  # re-raised by its base name, which the launcher recognises
        raise SplitcError(str(exc)) from None
    finally:
        dist.destroy_process_group()


def _train_rank(config: FinetuneConfig, rank: int, world: int, local_world: int, device: torch.device,
                progress: bool) -> RankReport:
    folder = Path(config.split_dir)
    meta = read_meta(folder)
    check_nproc(meta, world, folder)
    check_device(config.device, local_world)
    if rank == 0:
        meta = claim_split_dir(folder, meta, config)
    dist.barrier()  # rank 0's --force clean-up is done before any rank reads the directory
    loaded = load_split(folder, weights=SPLIT_WEIGHTS)
    run = prepare(config, meta, loaded.input_size, device, loaded)
    ckpt = restart(run, writer=rank == 0)
    flops = {n: c["flops"] for n, c in meta.get("report", {}).get("subgraphs", {}).items()}
    placement = place_branches(loaded.model.plan, flops, world)
    print(f"splitc finetune: rank {rank} of {world}, pid {os.getpid()}, {device}, branches "
          f"{' '.join(placement[rank])}", file=sys.stderr, flush=True)  # into the rank's log
    model = to_run(RankModel(loaded.model, placement, rank, config.seed), run)
    replica = RankReplica(model, loaded.model, rank, world)
    del loaded  # the other ranks' branches go with it
    optimizer = make_optimizer(model, run.config)
    if ckpt is not None:
        model.load_state_dict({k: ckpt["model"][k] for k in model.state_dict()})
        optimizer.load_state_dict(replica.local_optimizer_state(ckpt["optimizer"]))
        model.calls = ckpt["step"]
    result = train(run, model, optimizer, ckpt["step"] if ckpt else 0, replica, progress)
    dist.barrier()
    state = model.state_dict()
    shared = {k: v for k, v in state.items() if not replica.is_branch(k)}
    return RankReport(rank, placement[rank], tuple(replica.local_params), tensor_digest(shared), result)
