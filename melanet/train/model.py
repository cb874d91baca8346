"""FusionNet: any timm backbone fused with a metadata MLP, plus its losses and weight files.

One class for every backbone (timm builds the network by name); ``use_meta=False``
gives the image-only baseline from the same class. Weights are saved and read
as safetensors only, so a checkpoint is never unpickled.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from melanet.errors import ConfigError, WeightsNotFoundError, did_you_mean
from melanet.io import atomic_path
from melanet.train.pretrained import load_into_backbone, read_state_dict, resolve_weights_path

# ImageNet statistics: timm's default when a backbone's pretrained config names none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_backbone(name: str) -> None:
    """Raise a ConfigError naming the closest timm model when ``name`` is not one."""
    import timm

    if timm.is_model(name):
        return
    architecture = name.split(".")[0]
    known = timm.list_models()
    if architecture in known:
        tags = timm.list_pretrained(f"{architecture}.*")
        raise ConfigError(f"model.backbone: timm knows {architecture!r} but not the weight tag in {name!r}"
                          f"{did_you_mean(name, tags)}; tags: {', '.join(tags[:10]) or 'none'}")
    raise ConfigError(f"model.backbone: unknown timm backbone {name!r}{did_you_mean(name, known)}; "
                      f"list the choices with `python -c \"import timm; print(timm.list_models('*b3*'))\"`")


def _cached_weights(name: str) -> Path | None:
    """The backbone's pretrained weights in the local Hugging Face cache, without any network call."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
        hit = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(hit, str):
            return Path(hit)
    return None


def pretrained_source(name: str, pretrained_path: str | Path | None = None) -> Path:
    """The local file pretrained weights for backbone ``name`` come from; never downloads.

    ``pretrained_path`` if given (a file, or an installed weights package by name:
    melanet.train.pretrained.PACKAGED_WEIGHTS), else the file in the local Hugging Face cache;
    WeightsNotFoundError naming the options to change when there is none.
    """
    source = resolve_weights_path(pretrained_path) if pretrained_path else _cached_weights(name)
    if source is None or not source.is_file():
        where = f"model.pretrained_path={pretrained_path!s} does not exist" if pretrained_path else (
            f"no weights for {name!r} in the local Hugging Face cache and no model.pretrained_path")
        raise WeightsNotFoundError(
            f"{where}; melanet never downloads at run time. Give a local .safetensors/.pth file with "
            f"--set model.pretrained_path=FILE, fill the cache beforehand (e.g. `HF_HUB_OFFLINE=0 python -c "
            f"\"import timm; timm.create_model('{name}', pretrained=True)\"`), or train from scratch with "
            f"--set model.pretrained=false")
    return source


def create_backbone(name: str, pretrained: bool = False, pretrained_path: str | Path | None = None,
                    drop_path_rate: float = 0.0) -> nn.Module:
    """A timm backbone returning pooled features (``num_classes=0``).

    ``pretrained`` loads ``pretrained_path`` (.safetensors, or a .pth/.bin read
    with ``weights_only=True``; or a weights package by name) or else the weights
    in the local Hugging Face cache; nothing is downloaded. A file with timm's
    tensor names loads through timm; one from another implementation of the
    same network is mapped by order, every shape checked
    (:func:`melanet.train.pretrained.load_into_backbone`). Missing weights raise WeightsNotFoundError
    naming the option to change.
    """
    import timm

    check_backbone(name)
    kwargs = {"num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    source = pretrained_source(name, pretrained_path)
    file_keys = set(read_state_dict(source))
    scratch = timm.create_model(name, pretrained=False, **kwargs)
    wanted = [k for k in scratch.state_dict() if not k.endswith("num_batches_tracked")]
    if sum(k in file_keys for k in wanted) < 0.9 * len(wanted):
        # Not timm's names: another implementation of the network, mapped by order with every shape checked.
        return load_into_backbone(scratch, name, source)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(source)}, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError) as exc:  # wrong net, corrupt file
        raise WeightsNotFoundError(f"weights {source} do not fit backbone {name!r}: {exc}; check "
                                   f"model.pretrained_path and model.backbone") from None
    return model


class FusionNet(nn.Module):
    """timm backbone + metadata MLP, concatenated into a multi-sample-dropout head.

    ``forward(image, meta)`` takes (N, 3, H, W) images on the 0-255 pixel scale,
    uint8 or float (Mixup makes floats); they are normalised inside with the
    backbone's mean/std so that every caller feeds the same thing. ``meta`` is the (N, n_meta)
    float matrix from :class:`melanet.features.MetaEncoder`; it is ignored when
    ``use_meta`` is false (the image-only baseline). The output is logits:
    (N, 1) for a binary target, (N, n_classes) otherwise.

    ``image_aux_head`` adds a second Linear on the image features alone,
    trained beside the fused head (``forward(..., with_aux=True)`` returns
    both logits) and unused at prediction. Metadata is an easy shortcut on a
    small cohort; the auxiliary loss keeps the backbone learning the image
    cues the fused head would otherwise lean on metadata for.

    ``n_descriptors`` > 0 adds ``descriptor_head``, a Linear from the pooled
    image features to that many standardised lesion descriptors
    (melanet.train.aux; ``forward(..., with_descriptors=True)`` returns them
    third). It is a training-only target: :func:`save_weights` leaves it out.

    ``image_stage`` (staged training, melanet.train.staged): while true the
    model *is* the image-only model - ``forward`` returns the image head's
    logits and ignores ``meta`` - so the backbone learns from the pixels
    alone before the metadata branch is fitted on top.
    """

    def __init__(self, backbone: str, n_meta: int, n_outputs: int, *, use_meta: bool = True,
                 meta_hidden: Sequence[int] = (512, 128), meta_dropout: float = 0.3,
                 head_dropout: float = 0.5, head_samples: int = 5, pretrained: bool = False,
                 pretrained_path: str | Path | None = None, drop_path_rate: float = 0.0,
                 image_aux_head: bool = False, n_descriptors: int = 0):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, pretrained_path, drop_path_rate)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        # Not persistent: they follow from the backbone name, so old weight files stay loadable.
        self.register_buffer("mean", torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", IMAGENET_STD)).view(1, 3, 1, 1) * 255,
                             persistent=False)
        self.use_meta = bool(use_meta and n_meta > 0)
        # Pooled output width: models with a pre-logits layer (MobileNetV3, LCNet) widen past num_features.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.image_head = nn.Linear(width, n_outputs) if image_aux_head and self.use_meta else None
        # Training only (melanet.train.aux): never saved, never used to predict.
        self.descriptor_head = nn.Linear(width, n_descriptors) if n_descriptors > 0 else None
        self.meta: nn.Module | None = None
        if self.use_meta:
            if len(meta_hidden) != 2:
                raise ConfigError(f"model.meta_hidden must list two widths (e.g. [512, 128]), got {list(meta_hidden)}")
            h1, h2 = meta_hidden
            self.meta = nn.Sequential(
                nn.Linear(n_meta, h1), nn.BatchNorm1d(h1), nn.SiLU(), nn.Dropout(meta_dropout),
                nn.Linear(h1, h2), nn.BatchNorm1d(h2), nn.SiLU())
            width += h2
        self.dropouts = nn.ModuleList(nn.Dropout(head_dropout) for _ in range(max(1, head_samples)))
        self.head = nn.Linear(width, n_outputs)
        self.image_stage = False

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of a 0-255 image batch."""
        return self.backbone((image.float() - self.mean) / self.std)

    def features(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled image features, concatenated with the metadata embedding when used."""
        return self._fuse(self.image_features(image), meta)

    def _fuse(self, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        if self.meta is None:
            return x
        if meta is None:
            raise ValueError("this FusionNet uses metadata; pass the encoded meta matrix")
        return torch.cat([x, self.meta(meta.to(x.dtype))], dim=1)

    def _head(self, head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # dropout is the identity at eval: one pass equals the average
            return head(x)
        # Multi-sample dropout: several masks, one shared Linear, logits averaged.
        return torch.stack([head(drop(x)) for drop in self.dropouts]).mean(dim=0)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None, with_aux: bool = False,
                with_descriptors: bool = False) -> torch.Tensor | tuple:
        """Logits; with ``with_aux`` the pair (fused logits, image-only logits or None); with
        ``with_descriptors`` the triple (fused logits, image-only logits or None, descriptor predictions or None)."""
        pooled = self.image_features(image)
        if self.image_stage and self.image_head is not None:
            logits, aux = self._head(self.image_head, pooled), None
        else:
            logits = self._head(self.head, self._fuse(pooled, meta))
            if not (with_aux or with_descriptors):
                return logits
            aux = self._head(self.image_head, pooled) if self.image_head is not None else None
        if with_descriptors:
            return logits, aux, self.descriptor_head(pooled) if self.descriptor_head is not None else None
        return (logits, aux) if with_aux else logits


# --------------------------------------------------------------------------- losses


def soft_targets(y: torch.Tensor, n_outputs: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels as float targets: (N,) for binary, one-hot (N, C) otherwise, label-smoothed."""
    if n_outputs == 1:
        return y.float() * (1 - smoothing) + smoothing / 2
    return F.one_hot(y.long(), n_outputs).float() * (1 - smoothing) + smoothing / n_outputs


def fusion_loss(logits: torch.Tensor, target: torch.Tensor, *, pos_weight: torch.Tensor | None = None,
                class_weight: torch.Tensor | None = None, focal_gamma: float = 0.0) -> torch.Tensor:
    """Mean loss of logits against soft targets from :func:`soft_targets` (mixed ones too).

    Binary: BCE with optional ``pos_weight``; multiclass: cross-entropy with
    optional per-class weights. ``focal_gamma > 0`` down-weights easy examples
    by ``(1 - p_t) ** gamma`` (focal loss).
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        z = logits[:, 0]
        loss = F.binary_cross_entropy_with_logits(z, target, pos_weight=pos_weight, reduction="none")
        if focal_gamma > 0:
            p = torch.sigmoid(z)
            p_t = p * target + (1 - p) * (1 - target)
            loss = loss * (1 - p_t).clamp_min(0) ** focal_gamma
        return loss.mean()
    logp = F.log_softmax(logits, dim=1)
    per_class = -target * logp
    if focal_gamma > 0:
        per_class = per_class * (1 - logp.exp()) ** focal_gamma
    if class_weight is not None:
        per_class = per_class * class_weight
    return per_class.sum(dim=1).mean()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of (N, 1) logits as (N,), softmax of (N, C) logits."""
    logits = logits.float()
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


# --------------------------------------------------------------------------- weight files


#: State-dict prefixes of training-only heads, never written to a weight file (nothing predicts with them).
TRAINING_ONLY = ("descriptor_head.",)


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's state dict, less the training-only heads, as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if not k.startswith(TRAINING_ONLY)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights written by :func:`save_weights` into ``model`` (strict)."""
    from safetensors.torch import load_file

    from melanet.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} not found; the fold did not finish - re-run it with --resume")
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path} does not fit the model in the run's config.yaml: {exc}") from None
    return model
