"""The paper's networks (Joyce & Verschelde), each with a blend weight `t` and a `linear` switch.

linear=True removes every nonlinearity: ReLU becomes the identity and max pooling becomes average
pooling (max pooling is not linear), so Theorem 3.1 applies and foldpass folds the whole network
into one Gemm. skips=False builds the same network written by hand without skip connections
(the reference for what `foldpass optimize` must reach at t = 0).
"""

import torch

from .cnn import CNN3, CNN6
from .resnet import ResNet, resnet18, resnet34

BUILDERS = {
    "cnn3": CNN3,
    "cnn6": CNN6,
    "resnet18": resnet18,
    "resnet34": resnet34,
}


def linear_resnet34(**kw) -> ResNet:
    """The paper's linear ResNet34 for 1x28x28 input (the built-in example)."""
    return resnet34(linear=True, **kw)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gives every batch norm non-trivial statistics and affine parameters (for examples and tests)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


__all__ = ["BUILDERS", "CNN3", "CNN6", "ResNet", "linear_resnet34", "randomize_batchnorm", "resnet18", "resnet34"]
