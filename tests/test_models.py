import pytest
import torch
from safetensors.torch import load_file, save_file

from annotlib.models import HEADS, Annotator, WeightsError, create_backbone, create_model


def test_annotator_outputs_and_exact_cam():
    model = Annotator("resnet10t", 7, dropout=0.3).eval()
    x = torch.randn(2, 3, 64, 64)
    fmap = model.features(x)
    assert fmap.shape[:2] == (2, model.num_features) and fmap.ndim == 4
    assert torch.allclose(model.embed(x), fmap.mean((2, 3)))
    logits = model(x)
    assert logits.shape == (2, 7)
    # GAP + linear: the logit is the spatial mean of the class activation map.
    assert torch.allclose(model.cam(x).mean((2, 3)), logits, atol=1e-4)


def test_under_bf16_autocast_the_backbone_runs_in_bf16_and_pooling_and_head_in_fp32():
    model = Annotator("resnet10t", 7, dropout=0.3).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fmap, pooled, logits = model.features(x), model.embed(x), model(x)
    assert fmap.dtype == torch.bfloat16 and pooled.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(pooled, fmap.float().mean((2, 3)))
    torch.testing.assert_close(logits, pooled @ model.classifier.weight.T + model.classifier.bias)
    assert not torch.equal(logits, model(x))  # the backbone did run in bf16
    torch.testing.assert_close(logits, model(x), rtol=0.1, atol=0.1)


def test_any_timm_model_serves_a_vit_included():
    model = create_model("multilabel", "vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.features(x)
    assert tokens.shape == (2, 17, model.num_features)  # 16 patches + the class token
    torch.testing.assert_close(model.embed(x), tokens[:, 0])  # timm's class-token pooling
    assert model(x).shape == (2, 5)


def test_create_model_names_the_unknown_head():
    with pytest.raises(ValueError, match=r"unknown head 'nope'; known: " + ", ".join(HEADS)):
        create_model("nope", "resnet10t", num_classes=3)


def test_a_frozen_backbone_gets_no_gradient_and_keeps_its_statistics():
    model = create_model("multilabel", "resnet10t", num_classes=3, freeze_backbone=True).train()
    assert not model.backbone.training and model.head.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.classifier.weight.grad is not None
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())


def test_local_weights_load_and_change_the_features(mobilenet_weights):
    random = create_backbone("mobilenetv2_100")
    loaded = create_backbone("mobilenetv2_100", weights_file=mobilenet_weights)
    state = load_file(str(mobilenet_weights))
    key = "blocks.1.0.conv_pw.weight"
    assert torch.equal(loaded.state_dict()[key], state[key].float())
    assert not torch.equal(random.state_dict()[key], loaded.state_dict()[key])


def test_weights_that_do_not_fit_name_the_file(mobilenet_weights, tmp_path):
    with pytest.raises(WeightsError, match=r"mobilenetv2_100.*does not fit resnet10t: size mismatch"):
        create_backbone("resnet10t", weights_file=mobilenet_weights)
    state = load_file(str(mobilenet_weights))
    state["conv_stem.weight"] = state["conv_stem.weight"][:, :, :2].contiguous()
    bad = tmp_path / "wrong_shape.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError, match=r"wrong_shape\.safetensors.*size mismatch for conv_stem\.weight"):
        create_backbone("mobilenetv2_100", weights_file=bad)
    del state["conv_stem.weight"]
    missing = tmp_path / "missing.safetensors"
    save_file(state, str(missing))
    with pytest.raises(WeightsError, match=r"missing\.safetensors.*Missing keys \(conv_stem\.weight\)"):
        create_backbone("mobilenetv2_100", weights_file=missing)


def test_unreadable_or_missing_weights_name_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot read weights"):
        create_backbone("resnet10t", weights_file=junk)
    with pytest.raises(WeightsError, match=r"absent\.pth: weights file not found"):
        create_backbone("resnet10t", weights_file=tmp_path / "absent.pth")


def test_torch_checkpoint_container_is_unwrapped(tmp_path):
    source = create_backbone("resnet10t")
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {**source.state_dict(), "fc.weight": torch.zeros(1000, 512)}}, path)
    loaded = create_backbone("resnet10t", weights_file=path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
