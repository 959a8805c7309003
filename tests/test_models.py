import pytest
import torch
from safetensors.torch import load_file, save_file

from annotlib.models import Annotator, WeightsError, create_backbone


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


def test_local_weights_load_and_change_the_features(mobilenet_weights):
    random = create_backbone("mobilenetv2_100")
    loaded = create_backbone("mobilenetv2_100", weights_file=mobilenet_weights)
    state = load_file(str(mobilenet_weights))
    key = "blocks.1.0.conv_pw.weight"
    assert torch.equal(loaded.state_dict()[key], state[key].float())
    assert not torch.equal(random.state_dict()[key], loaded.state_dict()[key])


def test_weights_that_do_not_fit_name_the_file(mobilenet_weights, tmp_path):
    with pytest.raises(WeightsError, match=r"mobilenetv2_100.*does not fit the model: \d+ missing"):
        create_backbone("resnet10t", weights_file=mobilenet_weights)
    state = load_file(str(mobilenet_weights))
    state["conv_stem.weight"] = state["conv_stem.weight"][:, :, :2].contiguous()
    bad = tmp_path / "wrong_shape.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError, match=r"wrong_shape\.safetensors.*1 of the wrong shape \(conv_stem\.weight"):
        create_backbone("mobilenetv2_100", weights_file=bad)


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
