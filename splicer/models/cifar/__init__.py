"""Our CIFAR model zoo: the architectures of the paper and its CIFAR-100 benchmark.

``CIFAR_MODELS`` maps a ``cifar:NAME`` to a factory ``f(num_classes=100, **kwargs)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from splicer.models.cifar import vgg

CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": vgg.vgg8,
    "vgg11": vgg.vgg11,
    "vgg13": vgg.vgg13,
    "vgg16": vgg.vgg16,
    "vgg19": vgg.vgg19,
}
