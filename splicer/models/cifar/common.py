"""Building blocks shared by the zoo's models (VGG keeps its own: its convs have biases)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


class ConvBN(nn.Sequential):
    """Bias-free conv, BN and (optionally) ReLU: the unit every benchmark CNN is built from.

    Padding keeps the spatial size for odd kernels, so only ``stride`` changes resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            bn=nn.BatchNorm2d(out_channels),
        )
        if relu:
            layers["relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups, so the next grouped conv mixes them.

    Written with ``unflatten``/``flatten`` so that tracing needs no tensor sizes.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)


def init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) convs and identity BNs, as the benchmark initialises its CNNs.

    Linear layers keep PyTorch's default; models whose benchmark code differs adjust theirs.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
