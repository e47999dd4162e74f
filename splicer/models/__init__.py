"""Model sources: our CIFAR zoo, timm, torchvision and user factories."""

from splicer.models.registry import check_model_reference, create_model

__all__ = ["check_model_reference", "create_model"]
