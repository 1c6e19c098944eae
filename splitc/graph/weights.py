"""``--weights SRC``: load a model's trained weights, from the user's file or the local caches.

Forms of SRC:

* ``PATH.pt`` / ``PATH.pth`` / ``PATH.bin``: a ``torch.save``'d state_dict, read with
  ``weights_only=True`` (never unpickles code), or a checkpoint dict that holds it under
  ``state_dict`` or ``model`` (a ``module.`` prefix of DataParallel is dropped);
* ``PATH.safetensors``;
* ``torchvision:ENUM`` (``DEFAULT``, ``IMAGENET1K_V1``, ...) for a torchvision model: the file
  that ``torchvision`` would download, taken only from ``$TORCH_HOME/hub/checkpoints``;
* ``timm`` for a ``timm:NAME`` model: its pretrained file, taken only from the Hugging Face cache.

Nothing is downloaded: a file absent from its cache is one line naming the file and the folder
to put it in. Key problems (missing, unexpected, shape mismatches) are one line each. The one
common mismatch, a classifier with another class count, is handled: the classifier keeps its
fresh initialisation and the returned note says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from splitc.core.errors import SplitcError, did_you_mean
from splitc.core.outputs import sha256_of

FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
TORCHVISION = "torchvision:"
TIMM = "timm"
SHOWN_KEYS = 3          # keys named in a key-problem line
TOLERATED = ("num_batches_tracked",)   # BatchNorm counters older checkpoints lack


@dataclass(frozen=True)
class LoadedWeights:
    """What ``--weights`` loaded: the file, its SHA-256 and what had to be adapted."""

    source: str
    path: str
    sha256: str
    notes: tuple[str, ...] = ()    # one line each, e.g. the re-initialised classifier


def load_weights(model: nn.Module, source: str, model_name: str) -> LoadedWeights:
    """Load ``source`` into ``model`` (in place); raise a one-line :class:`SplitcError` on any
    key problem other than a classifier with another class count."""
    path = resolve_source(source, model_name)
    state = read_state_dict(path, model_name)
    if source == TIMM:
        state = _timm_filter(state, model)
    notes = _apply(model, state, path)
    return LoadedWeights(source, str(path), sha256_of(path), tuple(notes))


def resolve_source(source: str, model_name: str) -> Path:
    """The local file ``source`` names (a path, or a cached torchvision / timm file)."""
    if source.startswith(TORCHVISION):
        return _torchvision_file(source[len(TORCHVISION):], model_name)
    if source == TIMM:
        return _timm_file(model_name)
    path = Path(source).expanduser()
    if not path.is_file():
        raise SplitcError(f"--weights {source}: no such file; give a .pt/.pth/.safetensors state_dict, "
                          "torchvision:DEFAULT or timm.")
    if path.suffix not in FILE_SUFFIXES:
        raise SplitcError(f"--weights {source}: unknown file type {path.suffix or '(none)'}; give a "
                          f"{'/'.join(FILE_SUFFIXES)} file holding a state_dict.")
    return path


def _torchvision_file(enum: str, model_name: str) -> Path:
    import torchvision.models as tvm

    if model_name not in tvm.list_models(module=tvm):
        raise SplitcError(f"--weights torchvision:{enum} needs a torchvision model name, not {model_name!r}.")
    weights = tvm.get_model_weights(model_name)
    names = [w.name for w in weights] + ["DEFAULT"]
    if enum not in names:
        raise SplitcError(f"{model_name} has no torchvision weights {enum!r}; choose {', '.join(names)}.")
    url = weights[enum].url if enum != "DEFAULT" else weights.DEFAULT.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(url)
    if not path.is_file():
        raise SplitcError(f"torchvision weights {model_name}.{enum} are not cached: splitc downloads nothing; "
                          f"put {path.name} (from {url}) in {folder} (TORCH_HOME sets the folder).")
    return path


def _timm_file(model_name: str) -> Path:
    if not model_name.startswith("timm:"):
        raise SplitcError(f"--weights timm needs a timm:NAME model, not {model_name!r}.")
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    arch = model_name[len("timm:"):]
    cfg = timm.get_pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise SplitcError(f"timm model {arch} has no pretrained file on the Hugging Face hub; "
                          "give its weights as a .pt/.safetensors file.")
    repo = repo.split("@")[0]
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    raise SplitcError(f"timm weights of {arch} are not cached: splitc downloads nothing; put "
                      f"model.safetensors of the hub repo {repo} in {constants.HF_HUB_CACHE} "
                      "(HF_HOME sets the folder), e.g. with huggingface-cli download on a machine online.")


def read_state_dict(path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """Tensors of a state_dict file; a checkpoint dict is unwrapped (``state_dict``/``model``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user problem
        raise SplitcError(f"--weights {path}: cannot read it as a state_dict ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); save it with "
                          "torch.save(model.state_dict(), PATH).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SplitcError(f"--weights {path} holds no state_dict of tensors (nor one under 'state_dict' "
                          f"or 'model'); save it with torch.save(model.state_dict(), PATH).")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}   # saved from DataParallel/DDP
    return state


def _timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's own remapping of an original checkpoint, where the model's module has one."""
    import importlib

    module = importlib.import_module(type(model).__module__)
    remap = getattr(module, "checkpoint_filter_fn", None)
    return remap(state, model) if callable(remap) else state


def classifier_keys(model: nn.Module) -> set[str]:
    """The state keys of the layer that produces the logits: timm's ``get_classifier()``, else
    the last ``nn.Linear`` (the torchvision and CIFAR convention)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {id(m): n for n, m in model.named_modules()}
    if not isinstance(head, nn.Module) or id(head) not in names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            return set()
        prefix = linears[-1]
    else:
        prefix = names[id(head)]
    return {f"{prefix}.{k}" if prefix else k for k in dict(model.named_modules())[prefix].state_dict()}


def _apply(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> list[str]:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(TOLERATED)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    head = classifier_keys(model)
    if missing:
        raise SplitcError(f"--weights {path} lacks {len(missing)} of the model's tensors "
                          f"({_first(missing)}){did_you_mean(missing[0], unexpected)}: it belongs to "
                          "another model; check MODEL and the file.")
    if unexpected:
        raise SplitcError(f"--weights {path} has {len(unexpected)} tensors the model does not "
                          f"({_first(unexpected)}): it belongs to another model; check MODEL and the file.")
    notes = []
    if shapes and set(shapes) <= head:
        old, new = state[sorted(head)[-1]].shape[0], own[sorted(head)[-1]].shape[0]
        notes.append(f"the classifier ({', '.join(sorted(head))}) has {old} classes in --weights and "
                     f"{new} here: it was re-initialised and learns from the data")
        state = {k: v for k, v in state.items() if k not in head}
    elif shapes:
        k = shapes[0]
        raise SplitcError(f"--weights {path}: {len(shapes)} tensors have other shapes than the model's "
                          f"({k}: file {list(state[k].shape)}, model {list(own[k].shape)}); check MODEL, "
                          "--input-size and the width options the weights were trained with.")
    model.load_state_dict(state, strict=False)
    return notes


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more

