"""VGG for 32x32 inputs, as in the paper's tables 10 (VGG13) and 11 (VGG8).

Five stages of 3x3 conv + BN + ReLU; 2x2 max-pools after the first three stages; the
last two stages both run at 4x4; global average pool and one linear layer. Stage ends
are the modules ``stage1`` .. ``stage5``: the paper cuts VGG after stages 2, 3, 4 and 5.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from splicer.models.cifar.common import init_conv_bn

# Channels of each conv, stage by stage (the CIFAR-100 benchmark's configurations).
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class ConvBNReLU(nn.Sequential):
    """3x3 conv (with bias, as the benchmark's VGG) followed by BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(inplace=True),
            )
        )


class VGG(nn.Module):
    """VGG with BN for CIFAR; ``stage{k}`` modules end where the paper cuts blocks."""

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        channels = in_channels
        for index, widths in enumerate(config, start=1):
            layers = []
            for width in widths:
                layers.append(ConvBNReLU(channels, width))
                channels = width
            setattr(self, f"stage{index}", nn.Sequential(*layers))
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.stage1(x))
        x = self.pool2(self.stage2(x))
        x = self.pool3(self.stage3(x))
        x = self.stage5(self.stage4(x))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def _factory(name: str):
    def make(num_classes: int = 100, **kwargs) -> VGG:
        return VGG(VGG_CONFIGS[name], num_classes=num_classes, **kwargs)

    make.__name__ = name
    make.__doc__ = f"{name.upper()} with BN for 32x32 inputs."
    return make


vgg8 = _factory("vgg8")
vgg11 = _factory("vgg11")
vgg13 = _factory("vgg13")
vgg16 = _factory("vgg16")
vgg19 = _factory("vgg19")
