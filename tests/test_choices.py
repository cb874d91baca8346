"""Every name-valued config key is one validated Choice: a typo fails when the config loads, with a did-you-mean."""

from __future__ import annotations

import pytest

from melanet.blend import BlendConfig
from melanet.config import load_config
from melanet.demo import DemoConfig
from melanet.errors import ConfigError
from melanet.ingest import IngestConfig
from melanet.train.fusion_config import FusionConfig


@pytest.mark.parametrize("model_cls, base, key, typo, hint", [
    (IngestConfig, {"dicom_dir": "d", "out_dir": "o"}, "reader", "pydicm", "unknown reader 'pydicm' (did you mean 'pydicom'?)"),
    (IngestConfig, {"dicom_dir": "d", "out_dir": "o"}, "engine", "daks", "unknown engine 'daks' (did you mean 'dask'?)"),
    (IngestConfig, {"dicom_dir": "d", "out_dir": "o"}, "resize", "pda", "unknown resize 'pda' (did you mean 'pad'?)"),
    (IngestConfig, {"dicom_dir": "d", "out_dir": "o"}, "target_type", "binray",
     "unknown target_type 'binray' (did you mean 'binary'?)"),
    (BlendConfig, {"runs": ["a", "b"], "out_dir": "o"}, "track", "mlflwo",
     "unknown tracking backend 'mlflwo' (did you mean 'mlflow'?)"),
    (FusionConfig, {"data_dir": "d", "out_dir": "o"}, "track", "tensorbord",
     "unknown tracking backend 'tensorbord' (did you mean 'tensorboard'?)"),
    (FusionConfig, {"data_dir": "d", "out_dir": "o"}, "train.scheduler", "cosin",
     "unknown train.scheduler 'cosin' (did you mean 'cosine'?)"),
    (DemoConfig, {"out_dir": "o"}, "blend_method", "stak", "unknown blend method 'stak' (did you mean 'stack'?)"),
])
def test_typo_fails_at_load_naming_key_value_and_choices(model_cls, base, key, typo, hint):
    with pytest.raises(ConfigError) as err:
        load_config(model_cls, base, overrides=[f"{key}={typo}"])
    message = str(err.value)
    assert f"--set {key}={typo}" in message and f"{key}: {hint}" in message and "choose one of:" in message


def test_choices_keep_their_defaults_and_schema():
    cfg = IngestConfig(dicom_dir="d", out_dir="o")
    assert (cfg.reader, cfg.engine, cfg.resize, cfg.target_type) == ("pydicom", "local", "squash", "auto")
    assert IngestConfig.model_json_schema()["properties"]["reader"]["enum"] == ["pydicom", "sitk"]
    with pytest.raises(ValueError, match="unknown engine 3"):  # not a string: same message, no crash
        IngestConfig(dicom_dir="d", out_dir="o", engine=3)
