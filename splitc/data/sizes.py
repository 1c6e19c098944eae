"""The input size of a run without ``--input-size``: never a silent 224 for small images."""

from __future__ import annotations

from pathlib import Path

Size = tuple[int, int, int]


def common_image_size(spec: str, limit: int = 20_000) -> Size | None:
    """For ``imagefolder:PATH``: the (C, H, W) every training image shares, read from the file
    headers only (PIL opens lazily), or None when they differ, the folder is missing, or it holds
    more than ``limit`` images (then checking would cost more than it saves)."""
    from PIL import Image

    kind, _, arg = spec.strip().partition(":")
    root = Path(arg).expanduser() / "train"
    if kind != "imagefolder" or not root.is_dir():
        return None
    sizes = set()
    for count, path in enumerate(p for p in root.rglob("*") if p.is_file()):
        if count >= limit:
            return None
        try:
            with Image.open(path) as image:
                sizes.add((1 if image.mode in ("L", "I", "F", "1") else 3, image.height, image.width))
        except OSError:
            continue  # not an image: ImageFolder will skip or refuse it with its own message
        if len(sizes) > 1:
            return None
    return sizes.pop() if sizes else None


def choose_input_size(spec: str, model_size: Size | None, model_is_native: bool) -> tuple[Size | None, str]:
    """The input size of a run without ``--input-size``, and why: the model's native size for a
    built-in (32x32 for the CIFAR nets), else the images' common size for an image folder, else
    the model's default; never a silent 224 for small images. ``None`` lets the data decide."""
    kind = spec.strip().partition(":")[0]
    if kind != "imagefolder":
        return None, "the data's size"
    if model_is_native and model_size is not None:
        return model_size, "the model's native size"
    common = common_image_size(spec)
    if common is not None:
        return (3, common[1], common[2]), "the images' own size"
    return model_size, "the model's default size (the images differ in size; set --input-size)"
