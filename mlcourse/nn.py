"""Models: ordinary ``nn.Module``s that every algorithm runs through ``torch.func.functional_call``.

The sinusoid MLP (1-40-40-1, ReLU) and the four-block conv net of the MAML paper. The conv net
normalises with :class:`BatchNorm`, written from primitive tensor ops, because second-order
gradients through ``F.batch_norm`` under ``torch.func.vmap`` are inexact in current PyTorch
(functorch issue 534) and running statistics cannot be updated in place under vmap.
"""
from __future__ import annotations


import torch
from torch import nn


class MLP(nn.Sequential):
    """A ReLU multilayer perceptron, ``MLP([1, 40, 40, 1])`` for the sinusoid tasks."""

    def __init__(self, sizes=(1, 40, 40, 1)):
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes={sizes} is invalid: need at least two positive layer widths")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class BatchNorm(nn.Module):
    """Batch normalisation from primitive ops (mean, var, affine) over all but the channel dim.

    It always normalises with the statistics of the batch it is given, as the MAML paper's
    implementation does at meta-training and meta-test time (the "transductive" setting).
    Unlike ``nn.BatchNorm2d`` it keeps no running statistics, so it is safe under ``vmap``
    and its double backward is plain autograd, hence exact.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as in F.batch_norm
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


class ConvNet(nn.Module):
    """Four blocks of (3x3 conv, 64 filters, batch norm, ReLU, downsampling), then a linear head.

    ``pool="stride"`` downsamples with stride-2 convolutions (the MAML paper's Omniglot net);
    ``pool="max"`` uses stride 1 and 2x2 max-pooling (its miniImageNet net, there with
    ``hidden=32``). The last feature map is averaged over space, so the head sees ``hidden``
    features whatever the image size.
    """

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, blocks: int = 4,
                 pool: str = "stride", batch_norm: type[nn.Module] = BatchNorm):
        super().__init__()
        if pool not in ("stride", "max"):
            raise ValueError(f"pool={pool!r} is unknown: allowed 'stride' or 'max'")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(blocks):
            stride = 2 if pool == "stride" else 1
            layers += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1), batch_norm(hidden), nn.ReLU()]
            if pool == "max":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))


def has_torch_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` contains PyTorch's own batch-norm layers (unsafe under vmap)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
