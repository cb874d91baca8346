"""Config files: a packaged or user YAML may start from another config with ``base:`` and set only what differs."""

from __future__ import annotations

import pytest

from melanet.config import load_config
from melanet.errors import ConfigError
from melanet.train.fusion_config import FusionConfig

PATHS = {"data_dir": "d", "out_dir": "o"}


def test_image_cpu_small_is_fusion_cpu_small_image_only_and_longer():
    image = load_config(FusionConfig, "image-cpu-small", extra=PATHS)
    fusion = load_config(FusionConfig, "fusion-cpu-small", extra=PATHS)
    assert not image.model.use_meta and fusion.model.use_meta
    assert (image.train.epochs, image.train.lr, image.eval.tta, image.train.seeds) == (10, 4e-3, 1, 2)
    assert (fusion.train.epochs, fusion.train.lr, fusion.eval.tta, fusion.train.seeds) == (8, 2e-3, 4, 1)
    # Everything else comes from the base, section by section.
    assert image.model.backbone == fusion.model.backbone and image.image_size == fusion.image_size
    assert image.augment == fusion.augment and image.train.aux_descriptors == fusion.train.aux_descriptors
    # --set still wins over both files.
    assert load_config(FusionConfig, "image-cpu-small", ["train.epochs=3"], extra=PATHS).train.epochs == 3


def test_a_user_file_can_start_from_a_packaged_config_or_a_file_beside_it(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: fusion-cpu-small\ntrain:\n  epochs: 2\n")
    mine = load_config(FusionConfig, tmp_path / "mine.yaml", extra=PATHS)
    assert mine.train.epochs == 2 and mine.train.lr == 2e-3 and mine.model.backbone == "test_resnet"
    (tmp_path / "child.yaml").write_text("base: mine.yaml\nmodel:\n  use_meta: false\n")
    child = load_config(FusionConfig, tmp_path / "child.yaml", extra=PATHS)
    assert child.train.epochs == 2 and not child.model.use_meta and child.model.backbone == "test_resnet"


def test_a_bad_base_is_one_error_naming_the_file_and_the_fix(tmp_path):
    (tmp_path / "typo.yaml").write_text("base: fusion-cpu-smal\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*base.*not found.*did you mean.*fusion-cpu-small"):
        load_config(FusionConfig, tmp_path / "typo.yaml", extra=PATHS)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"leads back to itself \(a\.yaml -> b\.yaml -> a\.yaml\)"):
        load_config(FusionConfig, tmp_path / "a.yaml", extra=PATHS)
    (tmp_path / "list.yaml").write_text("base: [fusion]\n")
    with pytest.raises(ConfigError, match="must name a config"):
        load_config(FusionConfig, tmp_path / "list.yaml", extra=PATHS)


def test_a_key_written_twice_is_an_error_naming_the_file_key_and_lines(tmp_path):
    # YAML parsers keep the last of two equal keys without a word: a pasted block would change a setting silently.
    (tmp_path / "twice.yaml").write_text("train:\n  lr: 1.0e-3\n  epochs: 4\n  lr: 3.0e-3\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: .*the key 'lr' is written twice, lines 2 and 4: keep one"):
        load_config(FusionConfig, tmp_path / "twice.yaml", extra=PATHS)
    # The same key in two sections is fine.
    (tmp_path / "ok.yaml").write_text("train:\n  epochs: 4\neval:\n  tta: 1\nmodel:\n  use_meta: false\n")
    assert load_config(FusionConfig, tmp_path / "ok.yaml", extra=PATHS).train.epochs == 4


@pytest.mark.parametrize("name", ["fusion", "fusion-cpu-small", "image-cpu-small", "gbdt"])
def test_every_packaged_config_reads_without_repeated_keys(name):
    from melanet.config import PACKAGED_CONFIGS
    from melanet.io import read_yaml_mapping

    assert read_yaml_mapping(PACKAGED_CONFIGS / f"{name}.yaml", ConfigError, "fix it")
