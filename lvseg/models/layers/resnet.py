"""ResNet backbones with frozen batch norm (DETR style), returning the four stride-4..32 feature maps."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError

__all__ = ["ResNetBackbone", "RESNET_DEPTHS"]

RESNET_DEPTHS = {"resnet50": 50, "resnet101": 101}


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50/101 (no dilation) with ``FrozenBatchNorm2d`` (eps 1e-5); no classifier.

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so ImageNet or DETR-family
    weights load without renaming.
    """

    def __init__(self, name: str = "resnet50", gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if name not in RESNET_DEPTHS:
            raise ConfigError(f"unknown ResNet {name!r}; use one of {sorted(RESNET_DEPTHS)}")
        # imported here: torchvision.ops pulls in torch._dynamo (about a second), which models without a ResNet
        # (the bundled one among them) should not pay for at load time
        import torchvision
        from torchvision.ops import FrozenBatchNorm2d

        net = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_channels = [256, 512, 1024, 2048]
        self.strides = [4, 8, 16, 32]
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, 3, H, W] -> four maps [N, C_i, ceil(H / s_i), ceil(W / s_i)] for strides 4, 8, 16, 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.gradient_checkpointing and self.training and x.requires_grad:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            outs.append(x)
        return outs
