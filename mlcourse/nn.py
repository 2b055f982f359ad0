"""Models: ordinary ``nn.Module``s that every algorithm runs through ``torch.func.functional_call``.

The sinusoid MLP (1-40-40-1, ReLU) and the four-block conv net of the MAML paper. The conv net
normalises with :class:`BatchNorm`, written from primitive tensor ops, because second-order
gradients through ``F.batch_norm`` under ``torch.func.vmap`` are inexact in current PyTorch
(functorch issue 534) and running statistics cannot be updated in place under vmap.
:class:`PerStepBatchNorm` is MAML++'s batch norm with one set of statistics and weights per
inner-loop step; :func:`batch_norm_step` says which set a forward pass uses.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class FiLM(nn.Module):
    """Feature-wise linear modulation, h -> gamma * h + beta over the channel dimension (dim 1: the
    features of a vector, the channels of an image). ``gamma`` and ``beta`` are non-persistent
    buffers at 1 and 0, so the layer is the identity until a modulation replaces them:
    ``functional_call`` takes buffers from the same dict as parameters, so running a model on
    ``{**phi, "<layer>.gamma": ..., "<layer>.beta": ...}`` modulates it, vmap-safe and with nothing
    written in place (MMAML, chapter 8; see :mod:`mlcourse.modulation`)."""

    def __init__(self, channels: int):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels={channels!r} is out of range: allowed an integer >= 1")
        self.channels = channels
        self.register_buffer("gamma", torch.ones(channels), persistent=False)
        self.register_buffer("beta", torch.zeros(channels), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = [-1] + [1] * (h.dim() - 2)
        return h * self.gamma.view(shape) + self.beta.view(shape)


class MLP(nn.Sequential):
    """A ReLU multilayer perceptron, ``MLP([1, 40, 40, 1])`` for the sinusoid tasks.

    ``film=True`` puts a :class:`FiLM` layer after each hidden linear layer, before its ReLU (the
    MMAML regression network is ``MLP([1, 100, 100, 100, 1], film=True)``); unmodulated, it computes
    what the plain MLP computes."""

    def __init__(self, sizes=(1, 40, 40, 1), film: bool = False):
        sizes = list(sizes)
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes={sizes} is invalid: need at least two positive layer widths")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers += [FiLM(fan_out), nn.ReLU()] if film else [nn.ReLU()]
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
    features whatever the image size. ``film=True`` puts a :class:`FiLM` layer after each batch
    norm, before the ReLU (MMAML's modulated conv net). ``ways=None`` builds it without the head:
    its output is then the ``hidden``-dimensional embedding (the metric-based learners' network).
    """

    def __init__(self, ways: int | None, in_channels: int = 1, hidden: int = 64, blocks: int = 4,
                 pool: str = "stride", batch_norm: type[nn.Module] = BatchNorm, film: bool = False):
        super().__init__()
        if pool not in ("stride", "max"):
            raise ValueError(f"pool={pool!r} is unknown: allowed 'stride' or 'max'")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(blocks):
            stride = 2 if pool == "stride" else 1
            layers += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1), batch_norm(hidden)]
            layers += [FiLM(hidden), nn.ReLU()] if film else [nn.ReLU()]
            if pool == "max":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, ways) if ways is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.features(x).mean(dim=(-2, -1))
        return embedding if self.head is None else self.head(embedding)


def has_torch_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` contains PyTorch's own batch-norm layers (unsafe under vmap)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class PerStepBatchNorm(nn.Module):
    """Batch normalisation with one set of statistics (and of weights and biases) per inner-loop step:
    MAML++'s BNRS and BNWB (Antoniou, Edwards and Storkey, 2019, sec. 4).

    It keeps ``running_mean`` and ``running_var`` of shape ``[steps, C]`` and, with
    ``per_step_weights``, ``weight`` and ``bias`` of shape ``[steps, C]`` (else ``[C]``, shared by the
    steps). Which row a forward pass uses is the step index ``step``, a plain Python int that
    :func:`batch_norm_step` sets around the call: ``torch.func`` transforms (vmap, grad) run the
    Python of a forward once, eagerly, so the index is read exactly and nothing about it is traced.
    ``step`` is 0 outside that context.

    It normalises with the statistics of the batch it is given (as :class:`BatchNorm`, from
    primitive ops, so it is exact under vmap and double backward), or with the running statistics
    of its step when :func:`batch_norm_step` says ``running_stats=True``. It never writes its
    buffers while it runs: with ``record`` it hands its batch statistics (detached, the variance
    unbiased as in ``nn.BatchNorm2d``) back to the caller, who averages them over tasks outside any
    transform and calls :meth:`update_running_statistics` (moving average with ``momentum``).

    Build a conv net with it by ``ConvNet(ways, batch_norm=functools.partial(PerStepBatchNorm, steps=5))``.
    """

    def __init__(self, channels: int, steps: int, per_step_weights: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} is out of range: allowed an integer >= 1 (one set per inner step)")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum!r} is out of range: allowed a number in (0, 1]")
        self.steps, self.per_step_weights, self.eps, self.momentum = steps, bool(per_step_weights), eps, momentum
        shape = (steps, channels) if per_step_weights else (channels,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(steps, channels))
        self.register_buffer("running_var", torch.ones(steps, channels))
        # set by batch_norm_step around a forward pass; plain Python values, never tensors
        self.step, self.use_running_stats, self.record, self.record_key = 0, False, None, ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.step
        if not 0 <= s < self.steps:
            raise ValueError(f"step={s} is out of range: allowed 0..{self.steps - 1} (one set per inner step)")
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.use_running_stats:
            mean, var = self.running_mean[s].view(shape), self.running_var[s].view(shape)
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as in F.batch_norm
            if self.record is not None:
                n = x.numel() // x.shape[1]
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.record[self.record_key] = torch.stack([mean.flatten(), unbiased.flatten()]).detach()
        weight, bias = (self.weight[s], self.bias[s]) if self.per_step_weights else (self.weight, self.bias)
        return (x - mean) * torch.rsqrt(var + self.eps) * weight.view(shape) + bias.view(shape)

    @torch.no_grad()
    def update_running_statistics(self, step: int, mean: torch.Tensor, var: torch.Tensor):
        """running <- (1 - momentum) running + momentum * batch statistics, for set ``step``."""
        self.running_mean[step].lerp_(mean.to(self.running_mean), self.momentum)
        self.running_var[step].lerp_(var.to(self.running_var), self.momentum)

    @classmethod
    def from_batch_norm(cls, layer: BatchNorm, steps: int, per_step_weights: bool = True) -> "PerStepBatchNorm":
        """A per-step layer that starts where ``layer`` is: its weight and bias copied to every step."""
        new = cls(layer.weight.numel(), steps, per_step_weights, eps=layer.eps)
        new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(layer.weight.expand_as(new.weight))
            new.bias.copy_(layer.bias.expand_as(new.bias))
        return new

    def extra_repr(self) -> str:
        return (f"{self.running_mean.shape[1]}, steps={self.steps}, per_step_weights={self.per_step_weights}, "
                f"momentum={self.momentum}")


def per_step_layers(model: nn.Module) -> dict[str, PerStepBatchNorm]:
    """The model's :class:`PerStepBatchNorm` layers by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PerStepBatchNorm)}


@contextmanager
def batch_norm_step(model: nn.Module, step: int, running_stats: bool = False, record: dict | None = None):
    """Within the block, every :class:`PerStepBatchNorm` of ``model`` uses set ``step``: its running
    statistics if ``running_stats`` (else the batch's), and its weights of that step.

    With ``record`` (a dict), each layer stores its batch statistics there under ``"<layer>/<step>"``
    as a ``[2, C]`` tensor (mean, unbiased variance). A model without such layers is unaffected.
    The previous settings come back on exit, so blocks nest.
    """
    layers = per_step_layers(model)
    saved = {name: (m.step, m.use_running_stats, m.record, m.record_key) for name, m in layers.items()}
    for name, m in layers.items():
        m.step, m.use_running_stats, m.record, m.record_key = step, running_stats, record, f"{name}/{step}"
    try:
        yield
    finally:
        for name, m in layers.items():
            m.step, m.use_running_stats, m.record, m.record_key = saved[name]


def use_per_step_batch_norm(model: nn.Module, steps: int, per_step_weights: bool = True) -> nn.Module:
    """Replace, in place, every :class:`BatchNorm` of ``model`` by a :class:`PerStepBatchNorm` with ``steps``
    sets, starting from its weights; check that per-step layers already there agree. Returns ``model``."""
    if has_torch_batchnorm(model):
        raise ValueError("per-step batch norm replaces mlcourse.nn.BatchNorm layers, but this model has "
                         "torch.nn.BatchNorm layers: build it with mlcourse.nn.BatchNorm")
    for name, m in per_step_layers(model).items():
        if m.steps != steps or m.per_step_weights != bool(per_step_weights):
            raise ValueError(f"layer {name} has steps={m.steps}, per_step_weights={m.per_step_weights}: "
                             f"allowed steps={steps}, per_step_weights={bool(per_step_weights)} (the algorithm's)")
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is BatchNorm:
                setattr(parent, child_name, PerStepBatchNorm.from_batch_norm(child, steps, per_step_weights))
    return model


class RelationModule(nn.Module):
    """The Relation Network's g (Sung et al., 2018, sec. 3.2): the relation score in (0, 1) of a pair
    of feature vectors, concatenated: ``[..., 2 * features] -> [...]``.

    The paper's module reads concatenated feature maps with two conv blocks (conv, batch norm, ReLU), then
    a hidden layer of ``hidden`` = 8 units and a sigmoid output. Our embedding is already a vector (the conv
    net averages over space), so a linear layer of ``features`` units with batch norm (over all the pairs
    it is given, as the paper's blocks normalise over their batch) stands in for the two conv blocks."""

    def __init__(self, features: int, hidden: int = 8):
        super().__init__()
        for name, value in (("features", features), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is out of range: allowed an integer >= 1")
        self.net = nn.Sequential(nn.Linear(2 * features, features), BatchNorm(features), nn.ReLU(),
                                 nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        scores = self.net(pairs.reshape(-1, pairs.shape[-1]))  # batch norm's channels are dim 1
        return torch.sigmoid(scores).reshape(pairs.shape[:-1])


class CausalAttention(nn.Module):
    """SNAIL's attention block (Mishra et al., 2018, sec. 3): soft attention of each step over itself and
    the steps before it (a causal mask), its ``value`` read-out appended to the input features."""

    def __init__(self, features: int, key: int, value: int):
        super().__init__()
        self.query, self.key = nn.Linear(features, key), nn.Linear(features, key)
        self.value = nn.Linear(features, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, steps, features]
        scores = self.query(x) @ self.key(x).transpose(-1, -2) / self.key.out_features ** 0.5
        steps = x.shape[-2]
        future = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return torch.cat([x, weights @ self.value(x)], dim=-1)


class TemporalConvolutions(nn.Module):
    """SNAIL's TC block: causal convolutions of kernel 2 with growing dilations, each a gated activation
    tanh(f) * sigmoid(g) of ``filters`` channels appended to its input (a dense block)."""

    def __init__(self, features: int, filters: int, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.convs = nn.ModuleList(nn.Conv1d(features + i * filters, 2 * filters, 2, dilation=d)
                                   for i, d in enumerate(self.dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, steps, features]
        for d, conv in zip(self.dilations, self.convs):
            h = conv(nn.functional.pad(x.transpose(-1, -2), (d, 0)))  # left padding: step t sees t - d and t
            f, g = h.chunk(2, dim=-2)
            x = torch.cat([x, (torch.tanh(f) * torch.sigmoid(g)).transpose(-1, -2)], dim=-1)
        return x


class SNAILSequence(nn.Module):
    """A small SNAIL over a sequence of example tokens: attention, temporal convolutions, attention, then
    a linear read-out per step (``[batch, steps, in_features] -> [batch, steps, outputs]``). The paper's
    Omniglot model interleaves three attention and two TC blocks of more channels; this one is sized for
    a CPU."""

    def __init__(self, in_features: int, outputs: int, key: int = 16, value: int = 16, filters: int = 32,
                 dilations=(1, 2, 4, 8)):
        super().__init__()
        for name, v in (("in_features", in_features), ("outputs", outputs), ("key", key), ("value", value),
                        ("filters", filters)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} is out of range: allowed an integer >= 1")
        width = in_features + value
        self.blocks = nn.Sequential(CausalAttention(in_features, key, value),
                                    TemporalConvolutions(width, filters, dilations),
                                    CausalAttention(width + filters * len(tuple(dilations)), key, value))
        self.readout = nn.Linear(width + filters * len(tuple(dilations)) + value, outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(self.blocks(tokens))
