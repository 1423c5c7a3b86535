"""MTGAN's networks (paper Table 1), as pure modules: explicit arguments, no I/O, no config.

Images enter both networks as float tensors (N, 3, H, W) in [-1, 1].

Generator (`Generator`, defaults = Table 1): conv 9x9 64 + PReLU; 5 residual blocks
(conv 3x3 64 - BN - PReLU - conv 3x3 64 - BN, plus the skip); conv 3x3 64 - BN, plus a skip from
the first conv (as in SRGAN, whose design the paper follows); two "de-conv 256, 3x3, 2x" layers;
conv 9x9 3; tanh. Our reading of "de-conv": the paper calls them "fractionally-strided conv
layers", so each is a transposed convolution (kernel 3, stride 2, padding 1, output padding 1)
with 256 output channels followed by PReLU. 16x16 in, 64x64 out. Weights ~ N(0, 0.02), biases 0.

Discriminator (`Discriminator`): a torchvision ResNet (50 or 101 as in the paper; 18/34 for small
presets) without its classifier, global average pooling, then three parallel fc heads:
`gan` (1 logit: real HR vs super-resolved), `cls` (K+1 logits), `reg` (4 box offsets,
class-agnostic). Heads can be left out (the ablations). fc weights ~ N(0, 0.1), biases 0. The
input is normalised with ImageNet's mean and std inside the network.

`BilinearUpsampler` is the SBU ablation's fixed, parameter-free stand-in for the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from jobs.weights import torchvision_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """LR (N, 3, s, s) -> SR (N, 3, 4s, 4s), both in [-1, 1]."""

    def __init__(self, channels: int = 64, residual_blocks: int = 5, upsample_channels: int = 256, upsample_layers: int = 2) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU(channels))
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(residual_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        ups: list[nn.Module] = []
        cin = channels
        for _ in range(upsample_layers):
            ups += [nn.ConvTranspose2d(cin, upsample_channels, 3, stride=2, padding=1, output_padding=1), nn.PReLU(upsample_channels)]
            cin = upsample_channels
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(cin, 3, 9, padding=4)
        self.scale = 2**upsample_layers
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = self.head(lr)
        x = x + self.body_tail(self.blocks(x))
        return torch.tanh(self.tail(self.upsample(x)))


class BilinearUpsampler(nn.Module):
    """The SBU ablation: plain bilinear up-sampling, nothing to learn."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)


class Discriminator(nn.Module):
    """Image (N, 3, 64, 64) in [-1, 1] -> {"gan": (N,), "cls": (N, K+1), "reg": (N, 4)} (heads present)."""

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, heads: tuple[str, ...] = ("gan", "cls", "reg")) -> None:
        super().__init__()
        unknown = set(heads) - {"gan", "cls", "reg"}
        if unknown or "cls" not in heads:
            raise ValueError(f"heads must include cls and be among gan, cls, reg; got {heads}")
        self.backbone = backbone
        sizes = {"gan": 1, "cls": num_classes, "reg": 4}
        self.heads = nn.ModuleDict({name: nn.Linear(features, sizes[name]) for name in heads})
        for fc in self.heads.values():
            nn.init.normal_(fc.weight, 0.0, 0.1)
            nn.init.zeros_(fc.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        features = self.backbone(x)
        out = {name: head(features) for name, head in self.heads.items()}
        if "gan" in out:
            out["gan"] = out["gan"].squeeze(1)
        return out


def resnet_backbone(arch: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """A torchvision ResNet trunk with global average pooling (its fc replaced by identity) and its
    feature width. `weights`: None (random) or "torchvision" (ImageNet, from the torch hub cache)."""
    if arch not in RESNETS:
        raise ValueError(f"discriminator backbone must be one of {RESNETS}, got {arch!r}")
    model = torchvision.models.get_model(arch, weights=None)
    if weights == "torchvision":
        model.load_state_dict(torchvision_state_dict(torchvision.models.get_model_weights(arch).DEFAULT.url))
    features = model.fc.in_features
    model.fc = nn.Identity()
    return model, features
