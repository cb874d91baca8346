"""AdamW parameter groups and the learning-rate schedule of train-fusion, built from timm's.

Schedule (per optimiser step): linear warm-up from ``lr / (warmup + 1)`` to
``lr``, then either cosine decay to ``min_lr`` by the last step
(``timm.scheduler.CosineLRScheduler`` stepped per update; with ``train.swa_lr``,
to ``swa_lr`` by the first of the last ``swa_epochs`` epochs, then held), or a constant ``lr``
that torch's ``ReduceLROnPlateau`` lowers on val_loss at the end of each epoch.
timm's ``PlateauLRScheduler`` is not used: it warms up per epoch only and is
deprecated in timm 1.0.
"""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices and kernels, none on biases and norm scales.

    Decaying biases and norm scales only shrinks them toward zero without regularising anything.
    """
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(model, weight_decay)


class LRSchedule:
    """Warm-up then per-step cosine, or warm-up then ReduceLROnPlateau (``train.scheduler``).

    ``step()`` after every optimiser step, ``epoch_end(val_loss)`` after each
    epoch; ``lr`` is the rate the next step uses.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, train, steps_per_epoch: int):
        self.optimizer = optimizer
        self.total = max(1, train.epochs * steps_per_epoch)
        self.warmup = int(round(train.warmup_epochs * steps_per_epoch))
        self.step_count = 0
        self.plateau = None
        warmup_init = train.lr / (self.warmup + 1)
        if train.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=train.plateau_factor, patience=train.plateau_patience, min_lr=train.min_lr)
            self.base_lr, self.warmup_init = train.lr, warmup_init
            self._set(self._warmup_lr(0))
            self.cosine = None
        else:
            from timm.scheduler import CosineLRScheduler

            end, floor = self.total, train.min_lr
            if train.swa_lr is not None:  # past one cycle timm's cosine stays at lr_min: the held SWA rate
                end, floor = (train.epochs - train.swa_epochs) * steps_per_epoch, train.swa_lr
            self.cosine = CosineLRScheduler(optimizer, t_initial=max(1, end - self.warmup),
                                            lr_min=floor, warmup_t=self.warmup, warmup_lr_init=warmup_init,
                                            warmup_prefix=True, t_in_epochs=False)

    def _warmup_lr(self, step: int) -> float:
        if step >= self.warmup:
            return self.base_lr
        return self.warmup_init + step * (self.base_lr - self.warmup_init) / self.warmup

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """After each optimiser step."""
        self.step_count += 1
        if self.cosine is not None:
            self.cosine.step_update(self.step_count)
        elif self.step_count <= self.warmup:
            self._set(self._warmup_lr(self.step_count))

    def epoch_end(self, val_loss: float) -> None:
        """After each epoch: the plateau schedule reacts to val_loss once warm-up is over."""
        if self.plateau is not None and self.step_count >= self.warmup and math.isfinite(val_loss):
            self.plateau.step(val_loss)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
