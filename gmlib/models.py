"""The paper's networks, built with random init (no weight downloads): one entry point, `create(name)`.

- "resnet50", "resnext50_32x4d": timm classifiers (Tables 3 and 4), with a small head of `num_classes` outputs.
- "fpn_resnest50": the paper's segmentation network ("DF-ResNeSt50", Table 5): a timm `resnest50d` encoder
  (features at strides 4-32) and the FPN decoder layout of segmentation_models_pytorch, written here.
- "fpn_mobilenet_v2": the real-data arm's segmentation network: segmentation_models_pytorch's FPN (widths as
  fpn_resnest14d's) on torchvision's MobileNetV2 encoder, which `pretrained=path` starts from torchvision's ImageNet
  file (`gmlib.pretrained`, checked by sha256 before use).
- "fpn_resnest14d": the quick profile's stand-in, small enough to train on a 2-core CPU in minutes: the same FPN on
  a `resnest14d` encoder (one split-attention bottleneck per stage), decoder widths halved (128 pyramid, 64
  segmentation channels).

Nothing is downloaded: `create(name, pretrained=path)` starts the classifier or the FPN's encoder from a timm weight
file you already have (e.g. resnest50d's ImageNet weights), through timm's `pretrained_cfg_overlay=dict(file=path)`.
"""
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["create", "NAMES", "TITLES", "ENCODERS", "FPN", "FPNDecoder"]

# Tables 3-5 count a Severstal-sized head: 4 defect classes.
DEFAULT_CLASSES = 4


class Conv3x3GNReLU(nn.Module):
    """3x3 conv -> GroupNorm(32) -> ReLU, optionally followed by a 2x bilinear upsample."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.norm(self.conv(x)))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return x


class FPNBlock(nn.Module):
    """Top-down step: upsample the coarser level 2x (nearest) and add the 1x1 lateral projection of the skip."""

    def __init__(self, pyramid_channels: int, skip_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, pyramid_channels, 1)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x + self.skip_conv(skip)


class SegmentationBlock(nn.Module):
    """n_upsamples Conv3x3GNReLU blocks that bring one pyramid level to stride 4 (one plain block when n = 0)."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int):
        super().__init__()
        blocks = [Conv3x3GNReLU(in_channels, out_channels, upsample=n_upsamples > 0)]
        blocks += [Conv3x3GNReLU(out_channels, out_channels, upsample=True) for _ in range(1, n_upsamples)]
        self.block = nn.Sequential(*blocks)

    def forward(self, x):
        return self.block(x)


class FPNDecoder(nn.Module):
    """Feature pyramid (1x1 laterals to `pyramid_channels`, nearest top-down adds), per-level segmentation blocks
    to stride 4 with `segmentation_channels`, merged by addition, then Dropout2d."""

    def __init__(self, encoder_channels, pyramid_channels: int = 256, segmentation_channels: int = 128,
                 dropout: float = 0.2):
        super().__init__()
        c2, c3, c4, c5 = encoder_channels
        self.p5 = nn.Conv2d(c5, pyramid_channels, 1)
        self.p4 = FPNBlock(pyramid_channels, c4)
        self.p3 = FPNBlock(pyramid_channels, c3)
        self.p2 = FPNBlock(pyramid_channels, c2)
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n) for n in (3, 2, 1, 0))
        self.dropout = nn.Dropout2d(p=dropout)

    def forward(self, features):
        c2, c3, c4, c5 = features
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        levels = [block(p) for block, p in zip(self.seg_blocks, (p5, p4, p3, p2))]
        x = levels[0] + levels[1] + levels[2] + levels[3]
        return self.dropout(x)


class FPN(nn.Module):
    """Encoder features (strides 4, 8, 16, 32) -> FPN decoder -> 1x1 head -> 4x bilinear upsample to input size.

    Outputs raw logits of shape (N, num_classes, H, W); input H and W must be multiples of 32.
    """

    def __init__(self, encoder: str = "resnest50d", num_classes: int = DEFAULT_CLASSES, pyramid_channels: int = 256,
                 segmentation_channels: int = 128, dropout: float = 0.2, pretrained=None):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = _timm(encoder, pretrained, features_only=True, out_indices=(1, 2, 3, 4))
        self.decoder = FPNDecoder(self.encoder.feature_info.channels(), pyramid_channels, segmentation_channels,
                                  dropout)
        self.head = nn.Conv2d(segmentation_channels, num_classes, 1)
        self.upsample = nn.UpsamplingBilinear2d(scale_factor=4)

    def forward(self, x):
        if not isinstance(x, torch.fx.Proxy) and (x.shape[-2] % 32 or x.shape[-1] % 32):
            raise ValueError(f"FPN input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        return self.upsample(self.head(self.decoder(self.encoder(x))))


def _timm(timm_name, pretrained, **kwargs):
    """timm.create_model, from the weight file `pretrained` when given (its classifier is dropped where the head
    differs); a file that does not fit the architecture is an error naming both."""
    if pretrained is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {str(path)!r} not found (a timm weight file of {timm_name})")
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except (RuntimeError, KeyError, ValueError) as e:
        why = " ".join(str(e).split())[:300]
        raise ValueError(f"pretrained weights {str(path)!r} do not fit {timm_name}: {why}") from e


def _fpn_mobilenet_v2(num_classes, pretrained):
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ImportError("fpn_mobilenet_v2 needs segmentation_models_pytorch: pip install "
                          "segmentation-models-pytorch==0.6.0 (the project's test extra)") from None
    from . import pretrained as weights
    model = smp.FPN("mobilenet_v2", encoder_weights=None, classes=num_classes, decoder_pyramid_channels=128,
                    decoder_segmentation_channels=64)
    if pretrained is not None:
        state = weights.load_state_dict(pretrained, weights.MOBILENET_V2.sha256)
        model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")},
                                      strict=True)
    return model


def _classifier(timm_name):
    return lambda num_classes, pretrained: _timm(timm_name, pretrained, num_classes=num_classes)


_BUILDERS = {
    "resnet50": _classifier("resnet50"),
    "resnext50_32x4d": _classifier("resnext50_32x4d"),
    "resnest50d": _classifier("resnest50d"),
    "fpn_resnest50": lambda num_classes, pretrained: FPN("resnest50d", num_classes=num_classes, pretrained=pretrained),
    "fpn_resnest14d": lambda num_classes, pretrained: FPN("resnest14d", num_classes=num_classes, pyramid_channels=128,
                                                          segmentation_channels=64, pretrained=pretrained),
    "fpn_mobilenet_v2": _fpn_mobilenet_v2,
}
ENCODERS = {"resnet50": "resnet50", "resnext50_32x4d": "resnext50_32x4d", "resnest50d": "resnest50d",
            "fpn_resnest50": "resnest50d", "fpn_resnest14d": "resnest14d",
            "fpn_mobilenet_v2": "torchvision:mobilenet_v2"}  # the model a weight file is for
NAMES = tuple(_BUILDERS)
# How chapters name them in prose and figures.
TITLES = {"resnet50": "ResNet50", "resnext50_32x4d": "ResNeXt50 (32x4d)", "resnest50d": "ResNeSt50",
          "fpn_resnest50": "FPN-ResNeSt50", "fpn_resnest14d": "FPN-ResNeSt14d", "fpn_mobilenet_v2": "FPN-MobileNetV2"}


def create(name: str, num_classes: int = DEFAULT_CLASSES, seed: int | None = None, pretrained=None) -> nn.Module:
    """Build one of NAMES with random init (seeded if `seed` is given); train/eval mode is left to the caller.
    `pretrained`: a local timm weight file of ENCODERS[name] (the classifier, or the FPN's encoder) to start from;
    the head and the decoder stay random."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(NAMES)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _BUILDERS[name](num_classes, pretrained)
    else:
        model = _BUILDERS[name](num_classes, pretrained)
    model._gmlib_arch = name  # lets gmlib.save_pruned record the architecture without an arch= argument
    return model
