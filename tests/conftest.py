"""Shared test set-up: offline, quiet, and small synthetic cohorts made once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MELANET_PSEUDONYM_KEY", "melanet-tests")

from melanet.runtime import prepare_process  # noqa: E402 - the settings the CLI and the API make, before torch loads

prepare_process()
