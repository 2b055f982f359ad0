"""Task-aware modulation (MMAML, Vuorio et al. 2019, sec. 4.1): task encoders and generators.

A task network holds :class:`mlcourse.nn.FiLM` layers (``MLP(..., film=True)``,
``ConvNet(..., film=True)``), each computing ``gamma * h + beta`` per channel with buffers at 1 and
0, so that the network computes what it computes without them until a modulation replaces them:
``functional_call`` takes buffers from the same dict as parameters, so ``{**phi, **tau}`` runs the
task network with parameters phi under modulation tau, vmap-safe and with no state changed in
place.

The modulation network of the paper (eq. 1-2) is :class:`Modulator`: a task encoder h reads the
support set and emits a task embedding v, and one generator g_i per FiLM layer turns v into
tau_i = (gamma_i, beta_i). Encoders take one task's support set (no task dimension):
:class:`RecurrentEncoder` (a bidirectional LSTM over the points sorted by x, the paper's choice for
regression), :class:`SetEncoder` (mean of per-point features: order-free) and
:class:`ConvSetEncoder` (a small conv net averaged over the support images, for classification).
"""
from __future__ import annotations

import torch
from torch import nn

from .nn import FiLM
from .utils import check_int

MODULATIONS = ("film", "softmax")


def film_layers(model: nn.Module) -> list[tuple[str, int]]:
    """(name, channels) of every FiLM layer of ``model``, in the order the forward pass meets them."""
    return [(name, m.channels) for name, m in model.named_modules() if isinstance(m, FiLM)]


class _LSTMCell(nn.Module):
    """One LSTM cell from linear layers (``nn.LSTM`` has no vmap rule; this is plain tensor ops)."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(inputs + hidden, 4 * hidden)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """(steps, inputs) -> hidden states (steps, hidden)."""
        h = sequence.new_zeros(self.hidden)
        c = sequence.new_zeros(self.hidden)
        states = []
        for x in sequence:
            i, f, g, o = self.gates(torch.cat([x, h])).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        return torch.stack(states)


class RecurrentEncoder(nn.Module):
    """The paper's regression encoder: a bidirectional LSTM (``layers`` deep, ``hidden`` units per
    direction) over the support pairs (x, y) sorted by x; v = [last forward state, first backward
    state], of size 2 * hidden."""

    def __init__(self, in_features: int = 2, hidden: int = 40, layers: int = 2):
        super().__init__()
        check_int("hidden", hidden, 1)
        check_int("layers", layers, 1)
        self.forward_cells = nn.ModuleList()
        self.backward_cells = nn.ModuleList()
        width = in_features
        for _ in range(layers):
            self.forward_cells.append(_LSTMCell(width, hidden))
            self.backward_cells.append(_LSTMCell(width, hidden))
            width = 2 * hidden
        self.embedding_dim = 2 * hidden

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([support_x.flatten(1), support_y.flatten(1).to(support_x.dtype)], dim=1)
        sequence = pairs[support_x[:, 0].argsort()]  # the paper feeds the points in order of x
        for fwd, bwd in zip(self.forward_cells, self.backward_cells):
            sequence = torch.cat([fwd(sequence), bwd(sequence.flip(0)).flip(0)], dim=1)
        hidden = sequence.shape[1] // 2
        return torch.cat([sequence[-1, :hidden], sequence[0, hidden:]])


class SetEncoder(nn.Module):
    """An order-free encoder (Deep Sets): v = rho(mean_k psi(x_k, y_k))."""

    def __init__(self, in_features: int = 2, hidden: int = 64, embedding_dim: int = 64):
        super().__init__()
        self.psi = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.rho = nn.Sequential(nn.Linear(hidden, embedding_dim), nn.ReLU())
        self.embedding_dim = embedding_dim

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat([support_x.flatten(1), support_y.flatten(1).to(support_x.dtype)], dim=1)
        return self.rho(self.psi(pairs).mean(0))


class ConvSetEncoder(nn.Module):
    """For images: a small conv net (``blocks`` of 3x3 conv, ReLU, 2x2 max-pool) on each support
    image, averaged over the support set, then a linear layer to ``embedding_dim``. The labels are
    not read: the mode of an image task shows in its images."""

    def __init__(self, in_channels: int = 1, hidden: int = 32, blocks: int = 3, embedding_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(check_int("blocks", blocks, 1)):
            layers += [nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(support_x).mean(dim=(0, 2, 3)))


class Modulator(nn.Module):
    """h and {g_i} of the paper: v = encoder(support), tau_i = g_i(v) for each FiLM layer i.

    ``kind="film"``: gamma_i = 1 + W_i v, beta_i = U_i v (FiLM, sec. 4.1; the 1 + is the authors' code). ``kind="softmax"``:
    gamma_i = C_i softmax(W_i v) over the C_i channels, beta_i = 0 (attention over channels; the
    factor C_i makes uniform attention the identity). The generators start at zero, so an untrained
    modulator leaves the task network unchanged: MMAML starts as MAML.
    """

    def __init__(self, encoder: nn.Module, layers: list[tuple[str, int]], kind: str = "film"):
        super().__init__()
        if kind not in MODULATIONS:
            raise ValueError(f"modulation {kind!r} is unknown: allowed {', '.join(MODULATIONS)}")
        if not layers:
            raise ValueError("the task network has no FiLM layers to modulate: build it with FiLM layers "
                             "(MLP(..., film=True) or ConvNet(..., film=True) from mlcourse.nn)")
        self.kind = kind
        self.encoder = encoder
        self.names = [name for name, _ in layers]
        self.channels = [c for _, c in layers]
        per_channel = 2 if kind == "film" else 1
        self.generators = nn.ModuleList(nn.Linear(encoder.embedding_dim, per_channel * c) for c in self.channels)
        for g in self.generators:
            nn.init.zeros_(g.weight)
            nn.init.zeros_(g.bias)

    def embed(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """The task embedding v of one task's support set."""
        return self.encoder(support_x, support_y)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict:
        """tau as a dict ``{"<layer>.gamma": ..., "<layer>.beta": ...}`` to merge into phi."""
        v = self.embed(support_x, support_y)
        tau = {}
        for name, channels, generator in zip(self.names, self.channels, self.generators):
            out = generator(v)
            if self.kind == "film":
                gamma, beta = 1.0 + out[:channels], out[channels:]
            else:
                gamma, beta = channels * torch.softmax(out, dim=0), torch.zeros_like(out)
            tau[name + ".gamma"], tau[name + ".beta"] = gamma, beta
        return tau


ENCODERS = ("lstm", "set", "conv")


def make_encoder(name: str) -> nn.Module:
    """An encoder by name, as a recipe row names it: "lstm" (the paper's regression encoder, 2 layers
    of 40 units each way, over (x, y) pairs), "set" (:class:`SetEncoder` over (x, y) pairs) or
    "conv" (:class:`ConvSetEncoder` for one-channel images)."""
    if name == "lstm":
        return RecurrentEncoder(2, 40, 2)
    if name == "set":
        return SetEncoder(2)
    if name == "conv":
        return ConvSetEncoder(1)
    raise ValueError(f"encoder {name!r} is unknown: allowed {', '.join(ENCODERS)} or an nn.Module")
