"""
Segmentation model with a fixed number of class slots.

Why fixed slots: adding a class must change no tensor shape, so that an exported ONNX
graph keeps its signature and a TensorRT engine can be *refitted* with new weights
instead of rebuilt (minutes on a Jetson). A class is added by switching its slot on in
``slot_mask`` and writing its classifier row; inactive slots get a large negative logit
inside the graph, so they never win the argmax.

Structure: a timm backbone (``features_only``), a light LR-ASPP-style decoder (edge
friendly: one 1x1 branch with global-context gating on the deepest features, fused with
a stride-8 skip), and a 1x1 classifier over ``num_slots`` outputs. ``forward`` returns
the logits and the decoder features, which the LDKA losses (perturbation, feature
replay) need.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INACTIVE_LOGIT = -1.0e4  # added to inactive slots; finite so fp16 engines stay NaN-free


@dataclass
class ModelConfig:
    """Everything needed to rebuild the same network (stored in checkpoints)."""

    backbone: str = 'efficientnet_lite0'
    num_slots: int = 32
    decoder_channels: int = 128
    #: ``None`` (random init), ``'timm'`` (timm's hub weights, needs a network) or a
    #: path to a local state dict (see ``learning.pretrained``).
    pretrained: str | None = None
    #: Input size (H, W) for backbones that need it at build time (ViT position embeddings).
    img_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> 'ModelConfig':
        data = dict(data)
        if data.get('img_size') is not None:
            data['img_size'] = tuple(data['img_size'])
        for key in ('mean', 'std'):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class SegOutput(NamedTuple):
    """Model output: ``logits`` at input resolution, ``features`` at decoder resolution."""

    logits: torch.Tensor
    features: torch.Tensor


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LRASPPDecoder(nn.Module):
    """Deep features gated by global context, upsampled and fused with a stride-8 skip."""

    def __init__(self, low_channels: int, high_channels: int, channels: int) -> None:
        super().__init__()
        self.high = ConvBNReLU(high_channels, channels)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  nn.Conv2d(high_channels, channels, 1), nn.Sigmoid())
        self.low = ConvBNReLU(low_channels, channels // 2)
        self.fuse = ConvBNReLU(channels + channels // 2, channels, k=3)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.high(high) * self.gate(high)
        x = F.interpolate(x, size=low.shape[-2:], mode='bilinear', align_corners=False)
        return self.fuse(torch.cat([x, self.low(low)], dim=1))


class SegModel(nn.Module):
    """timm backbone + LR-ASPP decoder + slot classifier; see the module docstring."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        import timm  # imported here: importing this module stays cheap

        self.config = config or ModelConfig()
        cfg = self.config
        kwargs: dict = {'features_only': True, 'pretrained': cfg.pretrained == 'timm'}
        if cfg.img_size is not None and cfg.backbone.startswith(('vit', 'deit', 'eva')):
            kwargs['img_size'] = tuple(cfg.img_size)
        self.backbone = timm.create_model(cfg.backbone, **kwargs)
        info = self.backbone.feature_info
        channels, reductions = info.channels(), info.reduction()
        # Skip = the deepest feature map at stride <= 8 (or the shallowest one).
        skips = [i for i, r in enumerate(reductions) if r <= 8]
        self.low_index = skips[-1] if skips else 0
        self.decoder = LRASPPDecoder(channels[self.low_index], channels[-1], cfg.decoder_channels)
        self.classifier = nn.Conv2d(cfg.decoder_channels, cfg.num_slots, 1)
        mask = torch.zeros(cfg.num_slots, dtype=torch.bool)
        mask[0] = True  # background is always active
        self.register_buffer('slot_mask', mask)
        self.register_buffer('mean', torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(cfg.std).view(1, 3, 1, 1))
        if cfg.pretrained not in (None, 'timm'):
            from ldka_ros.learning.pretrained import load_backbone_weights

            load_backbone_weights(self.backbone, cfg.backbone, cfg.pretrained)

    # -- class slots -------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    def active_classes(self) -> list[int]:
        """Ids of active slots (always includes 0, background)."""
        return [int(i) for i in torch.nonzero(self.slot_mask).flatten()]

    def set_active(self, class_ids: list[int] | tuple[int, ...], active: bool = True) -> None:
        for cid in class_ids:
            if not 0 <= int(cid) < self.num_slots:
                raise ValueError(f'class id {cid} outside the {self.num_slots} slots')
            if int(cid) == 0 and not active:
                raise ValueError('background (slot 0) cannot be deactivated')
            self.slot_mask[int(cid)] = active

    def slot_offset(self) -> torch.Tensor:
        """0 for active slots, INACTIVE_LOGIT for inactive ones, shaped (1, S, 1, 1)."""
        offset = torch.where(self.slot_mask, 0.0, INACTIVE_LOGIT)
        return offset.to(self.classifier.weight.dtype).view(1, -1, 1, 1)

    # -- forward -----------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 1], NCHW -> normalised input."""
        return (images - self.mean) / self.std

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> decoder features (stride 8 for CNN backbones)."""
        feats = self.backbone(x)
        return self.decoder(feats[self.low_index], feats[-1])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Map decoder features to slot logits at feature resolution, inactive slots masked."""
        return self.classifier(features) + self.slot_offset()

    def forward(self, images: torch.Tensor) -> SegOutput:
        """``images``: float RGB in [0, 1], NCHW. Logits are upsampled to the input size."""
        features = self.extract(self.normalize(images))
        logits = F.interpolate(self.classify(features), size=images.shape[-2:],
                               mode='bilinear', align_corners=False)
        return SegOutput(logits, features)


def build_model(config: ModelConfig | dict | None = None) -> SegModel:
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return SegModel(config)
