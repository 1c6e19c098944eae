"""Refit the weights a cut keeps, so that the split reproduces the network it was cut from.

A cut from trained weights zeroes every inter-group weight at once. The weights it keeps were
trained beside the ones it drops, so the split loses most of its function at the cut
(Fashion-MNIST, resnet20, G=4: 0.19 right after the cut, 0.50 with BatchNorm re-estimated), and
finetune spends its budget winning it back. Here, in the graph's order, every conv and linear
layer the cut changes gets its kept weights refit by ridge least squares: on calibration images,
its output in the cut (masked) network is made to match its output in the dense network at the
same layer, given the inputs the cut network actually feeds it (so each layer corrects the
error of the layers before it). This is channel reconstruction (He et al. 2017, "Channel
Pruning"; Luo et al. 2017, "ThiNet") restricted to the split's block pattern; the ridge pulls
each weight towards its dense value where the images do not determine it.

The result is a masked model (every dropped weight stays exactly zero), so the split, an exact
slice of the masked model, inherits it, and split = masked still holds. Layers it cannot refit
(grouped convs, string padding, non-zero padding modes, a module called twice, more than
``MAX_FEATURES`` inputs per output) keep their masked weights and are named in the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

RIDGE = 1e-3          # x the mean diagonal of the inputs' Gram matrix: the pull towards the dense weights
REFIT_IMAGES = 512    # calibration images (learn's probe set, a seeded sample)
MAX_FEATURES = 4608   # inputs per output channel (512 channels x 3x3): the Gram matrix stays under 170 MB
CACHE_BYTES = 1 << 30  # the dense outputs of every cut layer are kept when they fit in 1 GiB


@dataclass(frozen=True)
class RefitReport:
    """What the refit did: layers refit and left, and how well each cut layer reproduces the
    dense network's output before and after (relative squared error, mean over refit layers)."""

    refit: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]   # (module, why)
    images: int
    error_before: float | None
    error_after: float | None
    seconds: float


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not run."""


def refit_cut(dense: fx.GraphModule, masked: fx.GraphModule, masks: dict[str, torch.Tensor],
              batches: Iterable[torch.Tensor], ridge: float = RIDGE,
              sources: dict[str, torch.Tensor] | None = None) -> RefitReport:
    """Entry point: refit ``masked``'s kept weights in place, layer by layer in graph order.

    ``dense`` is the network the cut was made from (not modified); ``masks`` the keep masks in
    each weight's layout (:func:`splitc.passes.mask.weight_masks`); ``batches`` a re-iterable
    of input batches (calibration images, no labels). ``sources`` (per layer, optional): output
    channel o of the masked layer reproduces the dense layer's channel ``sources[name][o]``
    (a cut whose channels were transplanted, :mod:`splitc.learn.transplant`)."""
    started = time.perf_counter()
    batches = list(batches)
    calls: dict[str, int] = {}
    for node in masked.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    modules, reference = dict(masked.named_modules()), dict(dense.named_modules())
    done: list[str] = []
    skipped: list[tuple[str, str]] = []
    before: list[float] = []
    after: list[float] = []
    modes = (dense.training, masked.training)
    dense.eval()
    masked.eval()
    try:
        names = [n for n in calls if n in masks]   # graph order
        targets = _dense_outputs(dense, [reference[n] for n in names], batches)
        for name in names:
            module, mask = modules[name], masks[name].to(torch.bool)
            why = _unfit(module, calls[name], mask)
            if why == "":
                continue   # nothing cut in this layer: its dense weights are exact already
            if why is not None:
                skipped.append((name, why))
                continue
            cached = None if targets is None else targets[names.index(name)]
            weight = module.weight.detach().reshape(module.weight.shape[0], -1).double()
            patterns = _patterns(_features_mask(mask, module))
            source = None if sources is None else sources.get(name)
            stats = _statistics(module, reference[name], masked, dense, batches, cached, patterns, source)
            fitted, (err_before, err_after) = _solve(stats, patterns, weight, ridge)
            before.append(err_before)
            after.append(err_after)
            with torch.no_grad():
                module.weight.copy_(fitted.reshape(module.weight.shape).to(module.weight.dtype))
            done.append(name)
    finally:
        dense.train(modes[0])
        masked.train(modes[1])
    return RefitReport(tuple(done), tuple(skipped), sum(len(b) for b in batches),
                       sum(before) / len(before) if before else None, sum(after) / len(after) if after else None,
                       round(time.perf_counter() - started, 2))


def _unfit(module: torch.nn.Module, calls: int, mask: torch.Tensor) -> str | None:
    """None when the layer can be refit, "" when the cut keeps all of it, else why not."""
    if bool(mask.all()):
        return ""
    if calls > 1:
        return "called more than once"
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1:
            return "grouped conv"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"padding {module.padding!r} ({module.padding_mode})"
        features = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    elif isinstance(module, torch.nn.Linear):
        features = module.in_features
    else:
        return f"{type(module).__name__} (only Conv2d and Linear are refit)"
    if features > MAX_FEATURES:
        return f"{features} inputs per output (more than {MAX_FEATURES})"
    return None


def _dense_outputs(dense: torch.nn.Module, modules: list[torch.nn.Module], batches: list[torch.Tensor]
                   ) -> list[list[torch.Tensor]] | None:
    """Every cut layer's dense output on every batch from one pass per batch, or None where
    they would take more than ``CACHE_BYTES`` (each layer then runs the dense network again)."""
    outputs: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda _m, _a, out, i=i: outputs[i].append(out.detach()))
               for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for b, x in enumerate(batches):
                dense(x)
                if b == 0 and sum(o[0].numel() * o[0].element_size() for o in outputs if o) * len(batches) > CACHE_BYTES:
                    return None
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _statistics(module: torch.nn.Module, ref: torch.nn.Module, masked: torch.nn.Module,
                dense: torch.nn.Module, batches: list[torch.Tensor], cached: list[torch.Tensor] | None,
                patterns: list[tuple[torch.Tensor, torch.Tensor]], source: torch.Tensor | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per keep pattern (outputs, inputs): X^T X, X^T Y and the outputs' energy of Y over the
    calibration images, X the layer's input in the masked network (as unfolded patches) on the
    pattern's inputs, Y the dense layer's output less its bias. Only each pattern's own block of
    the Gram matrix is formed (a G-way cut: 1/G of the whole)."""
    stats = [(0.0, 0.0, 0.0)] * len(patterns)
    for b, x in enumerate(batches):
        inputs = _capture(masked, module, x, want="input")
        target = _capture(dense, ref, x, want="output") if cached is None else cached[b]
        if ref.bias is not None:
            shape = (1, -1) + (1,) * (target.dim() - 2) if isinstance(ref, torch.nn.Conv2d) else (1,) * (target.dim() - 1) + (-1,)
            target = target - ref.bias.detach().reshape(shape)
        if source is not None:   # output o reproduces the dense channel source[o]
            target = target.index_select(1 if isinstance(ref, torch.nn.Conv2d) else target.dim() - 1, source)
        features, targets = _rows(module, inputs, target)
        for p, (outs, idx) in enumerate(patterns):
            x_p, y_p = features[:, idx], targets[:, outs]
            # float32 products of one batch, summed in float64 across batches
            g, c, e = stats[p]
            stats[p] = (g + (x_p.T @ x_p).double(), c + (x_p.T @ y_p).double(), e + (y_p * y_p).sum(0).double())
    return stats


def _capture(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (or output) of ``module`` when ``model`` runs on ``x``; the forward pass stops there."""
    seen: list[torch.Tensor] = []

    def hook(_module, args, output=None):
        seen.append((args[0] if want == "input" else output).detach())
        raise _Stop

    handle = (module.register_forward_pre_hook(hook) if want == "input" else module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"the refit never reached module {module!r}")
    return seen[0]


def _rows(module: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features) of inputs and (rows, outputs) of targets, in float32."""
    if isinstance(module, torch.nn.Conv2d):
        cols = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
        features = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        targets = target.flatten(2).transpose(1, 2).reshape(-1, target.shape[1])
    else:
        features, targets = inputs.reshape(-1, inputs.shape[-1]), target.reshape(-1, target.shape[-1])
    return features.float(), targets.float()


def _features_mask(mask: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The (out, in) keep mask spread over the kernel taps: (out, in x kh x kw), unfold's order."""
    taps = module.weight[0, 0].numel() if isinstance(module, torch.nn.Conv2d) else 1
    return mask.reshape(mask.shape[0], -1, 1).expand(-1, -1, taps).reshape(mask.shape[0], -1)


def _patterns(keep: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The distinct keep patterns of a layer, each as (its outputs, the inputs they keep): every
    output of a group reads the same inputs, so a G-way cut has G patterns."""
    patterns, which = torch.unique(keep, dim=0, return_inverse=True)
    return [((which == p).nonzero().flatten(), pattern.nonzero().flatten())
            for p, pattern in enumerate(patterns) if bool(pattern.any())]


def _solve(stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], patterns: list[tuple[torch.Tensor, torch.Tensor]],
           weight: torch.Tensor, ridge: float) -> tuple[torch.Tensor, tuple[float, float]]:
    """Per output, the kept weights minimising ||Y - X w||^2 + lam ||w - w_dense||^2, one solve
    per pattern; with the relative squared error ||Y - X W^T||^2 / ||Y||^2 of the masked weights
    and of the refit ones."""
    fitted = torch.zeros_like(weight)
    residual = [0.0, 0.0]
    total = 0.0
    for (gram, cross, energy), (outs, idx) in zip(stats, patterns):
        lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
        prior = weight[outs][:, idx].T
        solved = torch.linalg.solve(gram + lam * torch.eye(len(idx), dtype=gram.dtype), cross + lam * prior)
        fitted[outs.unsqueeze(1), idx.unsqueeze(0)] = solved.T
        for i, w in enumerate((prior, solved)):
            residual[i] += float(energy.sum() - 2 * (w * cross).sum() + (w * (gram @ w)).sum())
        total += float(energy.sum())
    total = max(total, 1e-12)
    return fitted, (residual[0] / total, residual[1] / total)
