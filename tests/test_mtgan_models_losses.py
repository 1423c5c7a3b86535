"""MTGAN's networks against Table 1, their initialisation, every loss term by hand, and gradient flow."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from core.crops import crop_sides
from jobs.common import autocast_factory
from jobs.mtgan import losses
from jobs.mtgan.engine import Batch, build_networks, discriminator_step, generator_step
from jobs.mtgan.models import Discriminator, FewOutputConv, Generator, ResNetTrunk, resnet_backbone
from jobs.mtgan.roi_input import discriminator_images, through_generator
from jobs.mtgan.settings import PRESETS, RULES, VARIANTS, PresetError, applies, resolve_preset


def test_generator_layers_follow_table_1() -> None:
    g = Generator()
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    kind = {True: "ConvTranspose2d", False: "Conv2d"}
    described = [(kind[isinstance(m, nn.ConvTranspose2d)], m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs]
    assert described == [
        ("Conv2d", 3, 64, 9, 1),
        *[("Conv2d", 64, 64, 3, 1)] * 10,  # 5 residual blocks of 2 convs
        ("Conv2d", 64, 64, 3, 1),
        ("ConvTranspose2d", 64, 256, 3, 2),  # "de-conv 256, 3, 2x"
        ("ConvTranspose2d", 256, 256, 3, 2),
        ("Conv2d", 256, 3, 9, 1),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 11
    assert sum(isinstance(m, nn.PReLU) for m in g.modules()) == 1 + 5 + 2
    out = g(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1


def test_gs_output_conv_is_a_plain_convolution() -> None:
    """G's 9x9 conv to RGB, computed on the CPU as the transposed convolution with the flipped kernel,
    against torch's own conv2d with the same weights: the same output, input gradient and weight
    and bias gradients (to float rounding), and nn.Conv2d's state dict."""
    torch.manual_seed(0)
    conv = FewOutputConv(8, 3, 9, padding=4)
    assert list(conv.state_dict()) == ["weight", "bias"] and conv.weight.shape == (3, 8, 9, 9)
    nn.init.normal_(conv.bias)
    x = torch.randn(2, 8, 20, 20, requires_grad=True)
    out = conv(x)
    grad = torch.randn_like(out)
    dx, dw, db = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
    reference = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=4)
    rx, rw, rb = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad)
    torch.testing.assert_close(out, reference)
    for ours, theirs in ((dx, rx), (dw, rw), (db, rb)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_generator_init_is_gaussian_002_with_zero_bias() -> None:
    torch.manual_seed(0)
    g = Generator()
    weights = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(float(weights.mean())) < 1e-3 and float(weights.std()) == pytest.approx(0.02, rel=0.02)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@pytest.mark.parametrize(("arch", "features"), [("resnet18", 512), ("resnet50", 2048)])
def test_discriminator_heads_shapes_and_init(arch: str, features: int) -> None:
    torch.manual_seed(0)
    backbone, width = resnet_backbone(arch)
    assert width == features
    d = Discriminator(backbone, width, num_classes=8)
    out = d(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert out["gan"].shape == (3,) and out["cls"].shape == (3, 8) and out["reg"].shape == (3, 4)
    w = torch.cat([d.heads[h].weight.detach().flatten() for h in ("gan", "cls", "reg")])
    assert float(w.std()) == pytest.approx(0.1, rel=0.05) and all(float(d.heads[h].bias.detach().abs().max()) == 0 for h in d.heads)
    assert set(Discriminator(resnet_backbone("resnet18")[0], 512, 8, ("cls", "reg")).heads) == {"cls", "reg"}


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("stem", ["3x3", "7x7"])
def test_discriminator_trunk_has_output_stride_16(arch: str, stem: str) -> None:
    """Table 1: a 64x64 ROI image ends as a 4x4 map before pooling (torchvision's stock ResNet: 2x2)."""
    trunk = ResNetTrunk(arch, width=8, stem=stem)
    assert trunk.feature_map(torch.zeros(2, 3, 64, 64)).shape[2:] == (4, 4)
    assert trunk.conv1.stride == (2, 2) and trunk.conv1.kernel_size == (int(stem[0]),) * 2
    assert not any(isinstance(m, nn.MaxPool2d) for m in trunk.modules())
    stock = torchvision.models.get_model(arch)
    stock_map = torch.nn.Sequential(*list(stock.children())[:-2])(torch.zeros(1, 3, 64, 64))
    assert stock_map.shape[2:] == (2, 2)


def test_imagenet_weights_load_into_the_stride_16_trunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pretrained weight of torchvision's ResNet loads (only the max-pool, which has none, is
    left out), read from the hub cache with weights_only=True."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    stock = torchvision.models.get_model("resnet18")
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(stock.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
    trunk, features = resnet_backbone("resnet18", "torchvision")
    assert features == 512
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, stock.state_dict()[key]), key
    with pytest.raises(ValueError, match="7x7 stem at width 64"):
        resnet_backbone("resnet18", "torchvision", width=32)


def test_small_rois_reach_d_through_g_and_large_ones_as_hr_crops() -> None:
    """Test-time rule by_size: a ROI whose crop's longer side is at most g_max_side image pixels
    goes through G; a larger one reaches D as its HR crop. The paper's path: every ROI through the
    up-sampler, but the plain R-CNN style D sees the resized proposal."""
    boxes = np.array([[10, 10, 22, 18], [0, 0, 16, 16], [5, 5, 21.5, 9], [40, 40, 140, 100], [300, 300, 330, 320]], np.float32)
    sizes = np.array([[320, 320]] * 4 + [[340, 310]], np.int32)  # the last box is clipped to 30 x 10
    mtgan, plain, sbu = VARIANTS["mtgan"], VARIANTS["d_no_adv"], VARIANTS["sbu"]
    assert through_generator(boxes, sizes, 0.0, "by_size", 16.0, mtgan).tolist() == [True, True, False, False, False]
    assert through_generator(boxes, sizes, 0.0, "by_size", 30.0, mtgan).tolist() == [True, True, True, False, True]
    assert through_generator(boxes, sizes, 0.1, "by_size", 16.0, mtgan).tolist() == [True, False, False, False, False]
    assert through_generator(boxes, sizes, 0.0, "paper", 16.0, mtgan).all()
    assert through_generator(boxes, sizes, 0.0, "paper", 16.0, sbu).all()  # the paper's SBU: every ROI up-sampled
    assert not through_generator(boxes, sizes, 0.0, "all_hr", 16.0, mtgan).any()
    assert not through_generator(boxes, sizes, 0.0, "paper", 16.0, plain).any()  # no up-sampler: the resized proposal
    # HR crops only for a D that trains on them: not the paper's SBU, and d_no_adv's one row is the paper's
    assert [applies(r, sbu) for r in RULES] == [True, False, False]
    assert [applies(r, plain) for r in RULES] == [True, False, False]
    assert all(applies(r, mtgan) for r in RULES) and all(applies(r, VARIANTS["sbu_hr"]) for r in RULES)
    with pytest.raises(ValueError, match="does not apply"):
        through_generator(boxes, sizes, 0.0, "by_size", 16.0, sbu)
    np.testing.assert_allclose(crop_sides(boxes, sizes, 0.0), [12, 16, 16.5, 100, 30])

    class Marker(nn.Module):  # "G": an image of 7s, so D's input shows which path each ROI took
        def forward(self, lr: torch.Tensor) -> torch.Tensor:
            return torch.full((len(lr), 3, 64, 64), 7.0)

    lr, hr = torch.zeros(5, 3, 16, 16), torch.rand(5, 3, 64, 64)
    use_g = torch.from_numpy(through_generator(boxes, sizes, 0.0, "by_size", 16.0, mtgan))
    images = discriminator_images(Marker(), lr, hr, use_g)
    assert (images[use_g] == 7).all() and torch.equal(images[~use_g], hr[~use_g])
    assert (discriminator_images(Marker(), lr, hr, torch.ones(5, dtype=torch.bool)) == 7).all()


def test_each_loss_term_equals_a_hand_computed_value() -> None:
    assert float(losses.mse(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.zeros(2, 2))) == pytest.approx(3.5)
    assert float(losses.adversarial_for_g(torch.tensor([0.0, 2.0]))) == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2)
    assert float(losses.gan_for_d(torch.tensor([0.0]), torch.tensor([1.0]))) == pytest.approx(math.log(2) + math.log(1 + math.e))
    cls = losses.classification(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([0, 2]))
    assert float(cls) == pytest.approx((math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e) - 1) / 2)
    offsets = torch.tensor([[0.5, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    reg = losses.regression(offsets, torch.zeros(3, 4), torch.tensor([2, 1, 0]))  # the third is a negative: no term
    assert float(reg) == pytest.approx((0.5 * 0.5**2 + (3.0 - 0.5)) / 3)


def test_weighted_generator_and_discriminator_losses() -> None:
    out = {"gan": torch.tensor([0.0, 0.0]), "cls": torch.tensor([[0.0, 0.0], [0.0, 0.0]]), "reg": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])}
    labels, targets = torch.tensor([1, 0]), torch.zeros(2, 4)
    sr, hr = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    g = losses.generator_losses(out, sr, hr, labels, targets, ("adv", "cls", "reg"), alpha=0.001, beta=0.01, gamma=0.1)
    assert float(g["g_loss_mse"]) == pytest.approx(1.0)
    assert float(g["g_loss_adv"]) == pytest.approx(0.001 * math.log(2))
    assert float(g["g_loss_cls"]) == pytest.approx(0.01 * math.log(2))
    assert float(g["g_loss_reg"]) == pytest.approx(0.1 * 0.5 / 2)
    assert set(losses.generator_losses(out, sr, hr, labels, targets, ("cls",), 0.001, 0.01, 0.01)) == {"g_loss_mse", "g_loss_cls"}
    d = losses.discriminator_losses(out, out, labels, targets, alpha=0.001, beta=0.01, gamma=0.1)
    assert float(d["d_loss_cls"]) == pytest.approx(0.01 * 2 * math.log(2))  # SR and HR
    assert float(d["d_loss_reg"]) == pytest.approx(0.1 * 2 * 0.25)
    assert float(d["d_loss_gan"]) == pytest.approx(0.001 * 2 * math.log(2))
    assert "d_loss_gan" not in losses.discriminator_losses(None, out, labels, targets, 0.001, 0.01, 0.01)


def _tiny(variant: str = "mtgan") -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    g, d = build_networks(VARIANTS[variant], PRESETS["tiny"], num_classes=4, scale=4)
    d_opt = torch.optim.SGD(d.parameters(), lr=0.1)
    g_opt = torch.optim.Adam(g.parameters(), lr=1e-2) if variant == "mtgan" else None
    return g, d, d_opt, g_opt  # type: ignore[return-value]


def _batch() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return torch.rand(6, 3, 16, 16) * 2 - 1, torch.rand(6, 3, 64, 64) * 2 - 1, torch.tensor([1, 2, 0, 3, 0, 1]), torch.randn(6, 4)


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def test_detection_losses_alone_move_the_generator() -> None:
    """With the adversarial and MSE terms off, a G step driven by cls + reg alone changes G: the
    losses of the discriminator really reach the generator, and its optimiser really steps."""
    g, d, _, g_opt = _tiny()
    lr, hr, labels, targets = _batch()
    before_g, before_d = _params(g), _params(d)
    metrics = generator_step(d, g_opt, g(lr), Batch(lr, hr, labels, targets), ("cls", "reg"), PRESETS["tiny"], contextlib.nullcontext, mse_weight=0.0)
    assert metrics["g_loss_mse"] == 0 and metrics["g_loss_cls"] > 0 and metrics["g_loss_reg"] > 0
    assert all(not torch.equal(before_g[k], v) for k, v in _params(g).items()), "every G parameter should move"
    assert all(torch.equal(before_d[k], v) for k, v in _params(d).items()), "a G step must not move D"
    assert all(p.requires_grad for p in d.parameters())  # D is unfrozen again afterwards


def test_a_discriminator_step_leaves_the_generator_untouched() -> None:
    g, d, d_opt, _ = _tiny()
    lr, hr, labels, targets = _batch()
    sr = g(lr)
    before_g, before_d = _params(g), _params(d)
    discriminator_step(d, d_opt, sr, Batch(lr, hr, labels, targets), VARIANTS["mtgan"], PRESETS["tiny"], contextlib.nullcontext)
    assert all(torch.equal(before_g[k], v) for k, v in _params(g).items())
    assert all(p.grad is None for p in g.parameters())
    assert any(not torch.equal(before_d[k], v) for k, v in _params(d).items())


@pytest.mark.parametrize(("variant", "sees"), [("sbu", {"sr"}), ("sbu_hr", {"sr", "hr"}), ("d_no_adv", {"hr"}), ("mtgan", {"sr", "hr"})])
def test_each_variants_discriminator_trains_on_what_the_paper_says(variant: str, sees: set[str]) -> None:
    """Eq 11 over the images the variant's D sees: the paper's SBU on up-sampled ROIs only (Table 4),
    d_no_adv on the resized proposals only (Table 3), MTGAN (and our sbu_hr) on both. A marker
    on each kind of image shows which reached D."""
    g, d, d_opt, _ = _tiny(variant)
    lr, hr, labels, targets = _batch()
    seen: list[torch.Tensor] = []
    d.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    sr = torch.full((len(lr), 3, 64, 64), 0.25) if g is not None else None
    hr = torch.full_like(hr, -0.75)
    metrics = discriminator_step(d, d_opt, sr, Batch(lr, hr, labels, targets), VARIANTS[variant], PRESETS["tiny"], contextlib.nullcontext)
    images = torch.cat(seen)
    got = {name for name, value in (("sr", 0.25), ("hr", -0.75)) if (images == value).all(dim=(1, 2, 3)).any()}
    assert got == sees and len(images) == len(lr) * len(sees)
    assert ("acc_sr" in metrics) == ("sr" in sees) and ("acc_hr" in metrics) == ("hr" in sees)


def test_sbu_has_nothing_to_learn_in_its_upsampler() -> None:
    g, d, _, _ = _tiny("sbu")
    assert sum(p.numel() for p in g.parameters()) == 0 and "gan" not in d.heads
    lr = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(g(lr), torch.nn.functional.interpolate(lr, scale_factor=4, mode="bilinear"))
    g_none, d_plain = build_networks(VARIANTS["d_no_adv"], PRESETS["tiny"], 4, 4)
    assert g_none is None and set(d_plain.heads) == {"cls", "reg"}


def test_presets_and_overrides() -> None:
    assert PRESETS["paper"].d_backbone == "resnet50" and PRESETS["paper-r101"].d_backbone == "resnet101"
    paper = PRESETS["paper"]
    assert (paper.alpha, paper.beta, paper.gamma, paper.d_lr, paper.d_lr_step, paper.iterations) == (0.001, 0.01, 0.01, 0.01, 40_000, 80_000)
    assert paper.departures == () and PRESETS["cpu"].departures
    changed = resolve_preset("cpu", {"iterations": 5})
    assert changed.iterations == 5 and "overridden: iterations=5" in changed.departures[-1]
    with pytest.raises(PresetError, match="unknown preset field"):
        resolve_preset("cpu", {"iteration": 5})
    with pytest.raises(PresetError, match="must be >= 1"):
        resolve_preset("cpu", {"iterations": -5})


def test_widerface_preset_schedule_in_epochs() -> None:
    """paper-widerface: 3 epochs at D lr 1e-4, then 3 at 1e-5, over the training ROIs."""
    from jobs.mtgan.settings import resolve_preset, schedule_in_iterations

    preset = resolve_preset("paper-widerface")
    assert (preset.d_lr, preset.epochs, preset.d_lr_step_epochs) == (1e-4, 6, 3)
    scheduled = schedule_in_iterations(preset, num_rois=128 * 1000 + 5)  # 1000 full batches of 128 per epoch
    assert (scheduled.iterations, scheduled.d_lr_step) == (6000, 3000)
    assert schedule_in_iterations(resolve_preset("paper"), 10**6) == resolve_preset("paper")


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_autocast_is_bf16_only_where_the_cpu_has_amx(amx: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    layer, x = nn.Linear(8, 4), torch.randn(2, 8)
    with autocast_factory(torch.device("cpu"), enabled=True)():
        assert layer(x).dtype == (torch.bfloat16 if amx else torch.float32)
    with autocast_factory(torch.device("cpu"), enabled=False)():
        assert layer(x).dtype == torch.float32
