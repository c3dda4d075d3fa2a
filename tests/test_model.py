"""utils/model.py: shapes of both input paths, weights loading, save/load round trip, clear errors."""
import json

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

import utils  # noqa: F401
from utils.errors import PSSRError
from utils.model import build_model, find_weights, load_model, make_meta, tile_noise_sigma, save_model, widen_frames


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("lr_space", [False, "subpixel", "icnr"])
@pytest.mark.parametrize("n_frames", [1, 5])
def test_shapes_and_bilinear_start(n_frames, lr_space, noise):
    """(B, n, h, w) -> (B, 1, 4h, 4w); with the residual skip (opt-in; lr_space always) the zeroed output
    layer makes an untrained model exactly bilinear, with or without the noise-level channel."""
    head = dict(lr_head=lr_space) if lr_space else {}
    model = build_model(dict(arch="resnet18", n_frames=n_frames, lr_space=bool(lr_space), residual=True,
                             noise_channel=noise, **head))
    model.eval()
    x = torch.rand(2, n_frames, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, 128, 128) and type(y) is torch.Tensor
    c = n_frames // 2
    bilinear = F.interpolate(x[:, c:c + 1], scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(y, bilinear, atol=1e-6)
    assert model.unet.layers[0][0].in_channels == n_frames + noise


def test_noise_level_reads_the_noise_not_the_structure():
    """The in-model estimate tracks the sigma of Gaussian noise added to a smooth image, from an 8-bit tile of
    the size quick.sh trains on, and is the same whatever the neighbouring frames hold."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(yy) * torch.cos(xx)
    for sigma in (0.02, 0.05, 0.1, 0.2):
        noisy = ((smooth + sigma * torch.randn(2, 1, 64, 64, generator=g)).clamp(0, 1) * 255).round() / 255
        level = tile_noise_sigma(noisy)
        assert level.shape == (2,) and torch.allclose(level, torch.full((2,), sigma), rtol=0.15)
        stack = torch.cat([torch.rand(2, 2, 64, 64, generator=g), noisy, torch.zeros(2, 2, 64, 64)], dim=1)
        assert torch.equal(tile_noise_sigma(stack), level)


def test_noise_channel_is_read(monkeypatch):
    """The network's output follows the level it is told (the same input with another level differs), and a
    blind network has no level input."""
    import utils.model as um
    torch.manual_seed(0)
    told = build_model(dict(arch="resnet18", lr_space=True, encoder_stride=16, noise_channel=True)).eval()
    with torch.no_grad():
        for p in told.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(2, 1, 32, 32)
    outs = []
    for level in (0.02, 0.2):
        monkeypatch.setattr(um, "tile_noise_sigma", lambda x, level=level: torch.full((len(x),), level))
        with torch.no_grad():
            outs.append(told(x))
    assert (outs[0] - outs[1]).abs().max() > 1e-3
    assert build_model(dict(arch="resnet18", lr_space=True, encoder_stride=16)).unet.layers[0][0].in_channels == 1


@pytest.mark.parametrize("net", [dict(lr_space=True, encoder_stride=8), dict(bottle=False, encoder_stride=16),
                                 dict(lr_space=True, encoder_stride=16, noise_channel=True)])
def test_widened_model_starts_as_the_one_frame_model(net):
    """widen_frames: a trained 1-frame model's weights in a 5-frame network give the same output on the centre
    frame whatever the neighbours hold, and every weight still learns (none left dead at zero)."""
    torch.manual_seed(0)
    one = build_model(dict(arch="resnet18", n_frames=1, **net))
    five = build_model(dict(arch="resnet18", n_frames=5, **net))
    with torch.no_grad():  # a "trained" model: nothing at its zero/bilinear start
        for p in one.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    five.load_state_dict(widen_frames(five, one.state_dict(), 5))
    x = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        ref = one.eval()(x[:, 2:3])
        assert torch.allclose(five.eval()(x), ref, atol=1e-4 * ref.abs().max())
    five.train()(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in five.parameters())


def test_paper_network_is_the_default():
    """No residual skip and no zeroed output layer unless asked: the paper's (and the original's) network."""
    model = build_model(dict(arch="resnet18")).eval()
    assert not model.residual
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), F.interpolate(x, scale_factor=4, mode="bilinear"), atol=1e-3)


def test_lr_space_runs_unet_at_lr_resolution():
    """The lr_space U-Net sees the LR image (scale² fewer pixels); the default one the upsampled image."""
    seen = {}
    for lr_space in (False, True):
        model = build_model(dict(arch="resnet18", lr_space=lr_space, residual=False)).eval()
        model.unet.layers[0][0].register_forward_hook(lambda m, i, o, k=lr_space: seen.__setitem__(k, i[0].shape))
        with torch.no_grad():
            assert model(torch.rand(1, 1, 32, 32)).shape == (1, 1, 128, 128)
    assert seen[False][-1] == 128 and seen[True][-1] == 32


def test_save_load_round_trip(tmp_path):
    meta = make_meta(arch="resnet18", n_frames=5, lr_space=True, crap_func="new_crap_AG_SP")
    model = build_model(meta)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # move off the bilinear start so outputs are informative
    save_model(model, meta, "m", tmp_path)
    loaded, meta2 = load_model("m", tmp_path)
    assert meta2["n_frames"] == 5 and meta2["crap_func"] == "new_crap_AG_SP" and meta2["norm"]["hi"] == 99.99
    x = torch.rand(1, 5, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert not loaded.training


def test_load_model_missing_and_mismatched(tmp_path):
    with pytest.raises(PSSRError, match="not found"):
        load_model("nope", tmp_path)
    save_model(build_model(dict(arch="resnet18")), dict(arch="resnet18"), "m", tmp_path)
    meta = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**meta, "n_frames": 5, "lr_type": "t"}))
    with pytest.raises(PSSRError, match="do not match"):
        load_model("m", tmp_path)


def test_pretrained_weights_from_file(tmp_path):
    """--weights: an ImageNet-style resnet state dict; the grey (RGB-summed) stem kernel goes to the centre
    frame, zeros to its neighbours, so the stem of a 5-frame model sees what a 1-frame model's does."""
    ref = resnet18()
    torch.save(ref.state_dict(), tmp_path / "resnet18-test.pth")
    weights = find_weights("resnet18", tmp_path / "resnet18-test.pth")
    stems = [build_model(dict(arch="resnet18", n_frames=n, pretrained=True, imagenet_norm=True), weights)
             .unet.layers[0] for n in (5, 1)]
    grey = ref.conv1.weight.sum(dim=1)
    assert torch.equal(stems[0][0].weight[:, 2], grey) and torch.equal(stems[1][0].weight[:, 0], grey)
    assert not stems[0][0].weight[:, [0, 1, 3, 4]].any()
    frame, noise = torch.rand(1, 1, 32, 32), torch.rand(1, 5, 32, 32)
    stack = torch.cat([noise[:, :2], frame, noise[:, 3:]], dim=1)
    assert torch.allclose(stems[0][0](stack), stems[1][0](frame), atol=1e-5)
    assert torch.equal(stems[0][4][0].conv1.weight, ref.layer1[0].conv1.weight)


def test_pretrained_weights_from_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PSSRError, match="--weights PATH"):
        find_weights("resnet34")
    (tmp_path / "checkpoints").mkdir()
    torch.save(resnet18().state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert find_weights("resnet18").name == "resnet18-f37072fd.pth"
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PSSRError, match="not ImageNet weights"):
        build_model(dict(arch="resnet18"), tmp_path / "bad.pth")


def test_unknown_arch():
    with pytest.raises(PSSRError, match="unknown arch"):
        build_model(dict(arch="vgg16"))


def test_lr_head_of_older_models(tmp_path):
    """A model saved before `lr_head` was recorded has the `icnr` head: its .json (without the key) rebuilds it
    and its weights load; the `subpixel` head has no feature map of the U-Net's width at HR size."""
    meta = dict(arch="resnet18", lr_space=True, encoder_stride=8)
    old = build_model(meta)
    new = build_model(dict(meta, lr_head="subpixel"))
    assert [m.out_channels for m in old.head.modules() if isinstance(m, torch.nn.Conv2d)] == [128, 128, 1]
    assert [m.out_channels for m in new.head.modules() if isinstance(m, torch.nn.Conv2d)] == [128, 4]
    with torch.no_grad():
        for p in old.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # not the zeroed start, which both heads share
    save_model(old, meta, "old", tmp_path)
    js = tmp_path / "old.json"
    js.write_text(json.dumps({k: v for k, v in json.loads(js.read_text()).items() if k != "lr_head"}))
    loaded, saved = load_model("old", tmp_path)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert saved["lr_head"] == "icnr" and torch.equal(loaded.eval()(x), old.eval()(x))
    with pytest.raises(PSSRError, match="lr_head"):
        build_model(dict(arch="resnet18", lr_space=True, lr_head="espcn"))
