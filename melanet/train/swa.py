"""Stochastic weight averaging (``train.swa_epochs``): predict with the mean of the last epochs' weights.

Why: on ~1,000 images the validation AUC of a small CNN moves by several
points from one epoch to the next, so the last epoch's weights are one noisy
draw. The mean of the weights at the end of each of the last ``swa_epochs``
epochs (Izmailov et al. 2018, torch.optim.swa_utils.AveragedModel) sits in
the middle of the region they visit. With ``train.swa_lr`` the cosine decays
to that rate by the first averaged epoch and holds it (melanet.train.optim),
so the averaged weights differ more than along a cosine tail near zero.

The averaged weights have no BatchNorm statistics of their own:
:func:`recompute_batchnorm` measures them in one pass over the fold's training
rows, without augmentation (the images prediction sees, in a fixed order), so
the result does not depend on augmentation draws. Every data-parallel process
makes the same pass over all training rows, so the replicas stay identical.
Only the averaged network is saved, under the usual fold_<k>/model.safetensors.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from melanet.train.data import FusionDataset, ImageStore, make_loader, to_nchw


def averaged_copy(model: torch.nn.Module) -> torch.optim.swa_utils.AveragedModel:
    """A running equal-weight average of ``model``'s parameters, started empty (first ``update`` copies)."""
    return torch.optim.swa_utils.AveragedModel(model)


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, store: ImageStore, rows: np.ndarray, meta: np.ndarray, *,
                        batch_size: int, device: torch.device, channels_last: bool = True, autocast=None) -> None:
    """Replace every BatchNorm's running mean and variance by their average over cohort rows ``rows``.

    The equivalent of ``torch.optim.swa_utils.update_bn`` for FusionNet's
    (images, meta) input: momentum ``None`` (a cumulative average over the
    batches), unaugmented images in row order. The model is left in eval mode.
    """
    norms = _batchnorms(model)
    if not norms or len(rows) == 0:
        model.eval()
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    # BatchNorm cannot normalise a batch of one: a lone last row is left out of the pass.
    loader = make_loader(FusionDataset(store, rows, meta), batch_size, workers=0,
                         drop_last=len(rows) > batch_size and len(rows) % batch_size == 1)
    with autocast or nullcontext():
        for images, m, _, _ in loader:
            images = to_nchw(images.to(device), channels_last)
            model(images, m.to(device))
    for m in norms:
        m.momentum = momenta[m]
    model.eval()
