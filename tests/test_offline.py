"""Nothing reaches the network at run time: importing the training code and building its augmentations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so albumentations is imported for the first time under the socket guard.
PROBE = r"""
import socket, warnings
attempts = []
def refuse(self, address, *args, **kwargs):
    attempts.append(address)
    raise OSError("network blocked by test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)
warnings.simplefilter("error")  # albumentations reports a failed version check as a UserWarning
from melanet.train.data import AugmentConfig, build_train_transform
import numpy as np
transform = build_train_transform(AugmentConfig(), 32, seed=0)
out = transform(image=np.zeros((32, 32, 3), np.uint8))["image"]
assert out.shape == (32, 32, 3)
assert not attempts, attempts
print("offline ok")
"""


def test_training_transforms_make_no_network_call():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "0"  # even a user setting that asks for the check is overridden
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "offline ok" in proc.stdout, proc.stderr[-2000:]
