"""MTGAN's networks (paper Table 1), as pure modules: explicit arguments, no I/O, no config.

Images enter both networks as float tensors (N, 3, H, W) in [-1, 1].

Generator (`Generator`, defaults = Table 1): conv 9x9 64 + PReLU; 5 residual blocks
(conv 3x3 64 - BN - PReLU - conv 3x3 64 - BN, plus the skip); conv 3x3 64 - BN, plus a skip from
the first conv (as in SRGAN, whose design the paper follows); two "de-conv 256, 3x3, 2x" layers;
conv 9x9 3; tanh. Our reading of "de-conv": the paper calls them "fractionally-strided conv
layers", so each is a transposed convolution (kernel 3, stride 2, padding 1, output padding 1)
with 256 output channels followed by PReLU. 16x16 in, 64x64 out. Weights ~ N(0, 0.02), biases 0.

Discriminator (`Discriminator`): a ResNet trunk (`ResNetTrunk`: 50 or 101 as in the paper; 18/34,
and narrower widths, for small presets) with the strides of Table 1: a stride-2 stem, layer1 at
stride 1, layer2-4 at stride 2, and no max-pool, so its output stride is 16 and a 64x64 input ends
as a 4x4 map (torchvision's stock ResNet adds a max-pool: output stride 32, a 2x2 map that loses the
detail G is there to supply). Then global average pooling and three parallel fc heads: `gan`
(1 logit: real HR vs super-resolved), `cls` (K+1 logits), `reg` (4 box offsets, class-agnostic).
Heads can be left out (the ablations). fc weights ~ N(0, 0.1), biases 0 (paper); the regression
head's std is an argument (see `Preset.reg_init_std`). The input is normalised with ImageNet's mean
and std inside the network.

The stem: Table 1 gives conv 64 3x3 stride 2 (`stem="3x3"`, for a D trained from scratch). With
ImageNet weights the stem is torchvision's pretrained conv 7x7 stride 2 (`stem="7x7"`), so that
every pretrained weight loads (a 3x3 conv would start untrained); the max-pool, which has no
weights, is left out either way. ImageNet weights need `stem="7x7"` and width 64.

`BilinearUpsampler` is the SBU ablation's fixed, parameter-free stand-in for the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from core.errors import InputError
from jobs.weights import torchvision_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FewOutputConv(nn.Conv2d):
    """nn.Conv2d (stride 1, no dilation or groups) for a layer with few output channels, G's 9x9
    conv to RGB: on the CPU computed as the transposed convolution with the kernel flipped and its
    channel axes swapped, the same sums (the forward gave identical numbers on the AMD VM; the
    backward sums in another order), whose backward pass oneDNN runs about 3x faster there (bench/output_conv.py:
    32 -> 3 channels at 64x64, 60 against 22 ms). Elsewhere, and in its weights, it is nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return F.conv_transpose2d(x, self.weight.flip(2, 3).transpose(0, 1), self.bias, padding=self.padding)


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
        self.tail = FewOutputConv(cin, 3, 9, padding=4)
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


class ResNetTrunk(nn.Module):
    """A ResNet without max-pool and classifier, output stride 16: (N, 3, H, W) -> (N, C, H/16, W/16).

    Module names match torchvision's ResNet (conv1, bn1, layer1-4), so its ImageNet state dict loads
    into the 7x7-stem, width-64 trunk unchanged. `width` scales every layer's channels (64 in
    torchvision: 64-128-256-512 planes)."""

    LAYERS = {
        "resnet18": (BasicBlock, (2, 2, 2, 2)),
        "resnet34": (BasicBlock, (3, 4, 6, 3)),
        "resnet50": (Bottleneck, (3, 4, 6, 3)),
        "resnet101": (Bottleneck, (3, 4, 23, 3)),
    }

    def __init__(self, arch: str = "resnet50", width: int = 64, stem: str = "7x7") -> None:
        super().__init__()
        if arch not in self.LAYERS:
            raise ValueError(f"discriminator backbone must be one of {list(self.LAYERS)}, got {arch!r}")
        if stem not in ("3x3", "7x7"):
            raise ValueError(f"stem must be 3x3 or 7x7, got {stem!r}")
        block, counts = self.LAYERS[arch]
        kernel = int(stem[0])
        self.conv1 = nn.Conv2d(3, width, kernel, stride=2, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, counts[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, counts[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, counts[3], stride=2)
        self.out_channels = 8 * width * block.expansion
        for m in self.modules():  # as torchvision initialises its ResNets
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (N, out_channels)."""
        return self.feature_map(x).mean(dim=(2, 3))


class Discriminator(nn.Module):
    """Image (N, 3, 64, 64) in [-1, 1] -> {"gan": (N,), "cls": (N, K+1), "reg": (N, 4)} (heads present)."""

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, heads: tuple[str, ...] = ("gan", "cls", "reg"), reg_init_std: float = 0.1) -> None:
        super().__init__()
        unknown = set(heads) - {"gan", "cls", "reg"}
        if unknown or "cls" not in heads:
            raise ValueError(f"heads must include cls and be among gan, cls, reg; got {heads}")
        self.backbone = backbone
        sizes = {"gan": 1, "cls": num_classes, "reg": 4}
        self.heads = nn.ModuleDict({name: nn.Linear(features, sizes[name]) for name in heads})
        for name, fc in self.heads.items():
            nn.init.normal_(fc.weight, 0.0, reg_init_std if name == "reg" else 0.1)
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


def resnet_backbone(arch: str, weights: str | None = None, width: int = 64, stem: str = "7x7") -> tuple[ResNetTrunk, int]:
    """D's trunk (output stride 16, globally pooled) and its feature width. `weights`: None (random)
    or "torchvision" (ImageNet, from the torch hub cache, read safely; needs width 64 and the 7x7 stem)."""
    trunk = ResNetTrunk(arch, width, stem)
    if weights == "torchvision":
        if width != 64 or stem != "7x7":
            raise InputError(f"ImageNet weights fit the 7x7 stem at width 64, not stem {stem} at width {width}")
        state = torchvision_state_dict(torchvision.models.get_model_weights(arch).DEFAULT.url)
        trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    elif weights is not None:
        raise ValueError(f"discriminator weights must be none or torchvision, got {weights!r}")
    return trunk, trunk.out_channels
