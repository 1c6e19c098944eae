"""Resolve a MODEL argument to an ``nn.Module`` and its default input size.

Four forms are accepted, tried in this order:

* a built-in from ``splitc.models`` (``wrn16_8``, ``resnet20``, the tiny test nets);
* any torchvision classification model name (``resnet18``), built with ``weights=None``;
* ``timm:NAME``, any timm model (the optional ``timm`` extra), built with ``pretrained=False``
  at the input size of its pretrained config;
* a user factory written ``package.module:callable``, called with ``num_classes=`` when the
  callable accepts it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch.nn as nn

from splitc.core.errors import SplitcError, UserCodeError, did_you_mean

TORCHVISION_DEFAULT_INPUT = (3, 224, 224)
TIMM_PREFIX = "timm:"
TORCHVISION_INPUT_OVERRIDES = {"inception_v3": (3, 299, 299)}
# Builders whose defaults would need pretrained weights or print warnings without them.
TORCHVISION_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@dataclass(frozen=True)
class ModelSpec:
    """What a MODEL argument resolved to; ``source`` is builtin, torchvision, timm or factory."""

    name: str
    source: str
    default_input_size: tuple[int, int, int]
    default_num_classes: int


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def _builtins() -> dict:
    from splitc.models import BUILTINS

    return BUILTINS


def resolve(name: str) -> ModelSpec:
    """Classify ``name`` without building anything (cheap, for validation and defaults)."""
    if name in _builtins():
        return ModelSpec(name, "builtin", tuple(_builtins()[name].default_input_size), 10)
    if name in torchvision_names():
        size = TORCHVISION_INPUT_OVERRIDES.get(name, TORCHVISION_DEFAULT_INPUT)
        return ModelSpec(name, "torchvision", size, 1000)
    if name.startswith(TIMM_PREFIX):
        return _resolve_timm(name)
    if ":" in name:
        return ModelSpec(name, "factory", (3, 32, 32), 10)
    known = list(_builtins()) + list(torchvision_names())
    raise SplitcError(
        f"unknown model {name!r}.{did_you_mean(name, known)} "
        "Use a built-in, a torchvision classification model name, timm:NAME, or package.module:callable."
    )


def build(name: str, num_classes: int | None = None) -> nn.Module:
    """Build the model named ``name`` with fresh weights and ``num_classes`` outputs."""
    spec = resolve(name)
    classes = num_classes if num_classes is not None else spec.default_num_classes
    if spec.source == "builtin":
        from splitc.models import build_builtin

        return build_builtin(name, num_classes=classes)
    if spec.source == "torchvision":
        import torchvision.models as tvm

        kwargs = dict(TORCHVISION_EXTRA_KWARGS.get(name, {}))
        return tvm.get_model(name, weights=None, num_classes=classes, **kwargs)
    if spec.source == "timm":
        return _import_timm(name).create_model(name[len(TIMM_PREFIX):], pretrained=False, num_classes=classes)
    return _build_factory(name, num_classes)


def _import_timm(name: str):
    """timm is an optional extra: imported only when a ``timm:`` model is asked for."""
    try:
        import timm
    except ImportError:
        raise SplitcError(f"model {name!r} needs the timm package: pip install 'splitc[timm]'.") from None
    return timm


def _resolve_timm(name: str) -> ModelSpec:
    """A timm model's default input size and classes come from its pretrained config (no
    weights are loaded: the config is registry metadata)."""
    timm = _import_timm(name)
    arch = name[len(TIMM_PREFIX):]
    if not arch:
        raise SplitcError("timm: needs a model name after the colon, e.g. timm:resnet18.")
    if not timm.is_model(arch):
        raise SplitcError(f"unknown timm model {arch!r}.{did_you_mean(arch, timm.list_models())} "
                          "List them with: python -c 'import timm; print(timm.list_models())'.")
    cfg = timm.get_pretrained_cfg(arch)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else TORCHVISION_DEFAULT_INPUT
    classes = cfg.num_classes if cfg is not None and cfg.num_classes else 1000
    return ModelSpec(name, "timm", size, classes)


def _build_factory(name: str, num_classes: int | None) -> nn.Module:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitcError(
            f"cannot import {module_name!r} for model {name!r} ({exc}). "
            "Check the module path and that it is on PYTHONPATH."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise SplitcError(
            f"{module_name!r} has no callable {attr!r}.{did_you_mean(attr, public)}"
        )
    accepts_classes = "num_classes" in inspect.signature(factory).parameters
    try:
        model = factory(num_classes=num_classes) if accepts_classes and num_classes else factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory: report it, --debug shows the traceback
        raise UserCodeError(f"model factory {name}", exc) from exc
    if not isinstance(model, nn.Module):
        raise SplitcError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module.")
    return model
