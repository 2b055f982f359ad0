"""Curvature of a network's negative log-likelihood, per Linear / Conv2d layer (LLAMA's log det H).

* the Kronecker-factored approximation (K-FAC, Martens and Grosse, 2015; KFC for convolutions,
  Grosse and Martens, 2016) and the exact diagonal of the generalised Gauss-Newton (Fisher)
  matrix; log det of (curvature + tau I) from the factors' eigenvalues, differentiably; and
  samples from the Laplace posterior N(phi_hat, H_hat^-1) with the same structure.

Curvature conventions. The negative log-likelihood of a task's N support points is
sum_n l_n(phi), with l_n the per-example loss: cross-entropy (integer targets) or the mean
squared error over the output dimensions (real targets; a Gaussian likelihood with variance 1/2).
Its Fisher / generalised Gauss-Newton matrix is F = sum_n J_n^T R_n R_n^T J_n, where J_n is the
Jacobian of the outputs f_n w.r.t. phi and R_n R_n^T the Hessian of l_n w.r.t. f_n
(softmax: diag(p) - p p^T = (diag(sqrt p) - p sqrt(p)^T)(...)^T; MSE over D outputs: 2/D I).
For a layer s = W_aug a (W_aug = [W | b], a with a trailing 1 for the bias), the gradient of
f_n . R_n[:, c] w.r.t. s is g_{n,c}, and the block of F for vec(W_aug) (column-major) is
sum_n sum_c (a_n a_n^T) kron (g_{n,c} g_{n,c}^T) ~ N * (A kron G) with
A = 1/N sum_n a_n a_n^T and G = 1/N sum_{n,c} g_{n,c} g_{n,c}^T (K-FAC's independence
assumption). For a convolution every spatial position p is a row: A = 1/N sum_{n,p} a a^T,
G = 1/(N P) sum_{n,p,c} g g^T (KFC). Layers other than Linear / Conv2d (batch-norm scale and
shift) get no curvature term, as in the LLAMA paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .functional import Params, forward
from .utils import check_int, check_positive

CURVATURES = ("kfac", "diagonal")


# ---------------------------------------------------------------------------------------------
# Kronecker factors and their log det
# ---------------------------------------------------------------------------------------------

def factor_eigenvalues(rows: torch.Tensor, count: float) -> torch.Tensor:
    """Eigenvalues of M = rows^T rows / count (d x d), from the smaller of rows^T rows and rows rows^T.

    The nonzero eigenvalues of X^T X and X X^T coincide, so a factor built from m < d rows needs
    an m x m eigenproblem; the remaining d - m eigenvalues are zero. Differentiable.
    """
    m, d = rows.shape
    small = rows @ rows.T if m < d else rows.T @ rows
    # float64: single-precision LAPACK loses (or NaNs) the many near-zero eigenvalues of these factors
    evals = torch.linalg.eigvalsh(small.double() / count).clamp_min(0.0).to(rows.dtype)
    if m < d:
        evals = torch.cat([evals, evals.new_zeros(d - m)])
    return evals


def kfac_logdet(eig_a: torch.Tensor, eig_g: torch.Tensor, scale: float, tau: float) -> torch.Tensor:
    """log det(scale * A kron G + tau I) = sum_{i,j} log(scale a_i g_j + tau), from the factors' eigenvalues."""
    return torch.log(scale * eig_a.unsqueeze(1) * eig_g.unsqueeze(0) + tau).sum()


def kfac_transform(A: torch.Tensor, G: torch.Tensor, scale: float, tau: float, E: torch.Tensor) -> torch.Tensor:
    """Map standard normal E (d_out x d_in) to a draw from N(0, (scale A kron G + tau I)^-1) on W (d_out x d_in).

    With A = U_A diag(a) U_A^T and G = U_G diag(g) U_G^T, scale A kron G + tau I =
    (U_A kron U_G) diag(scale a_i g_j + tau) (U_A kron U_G)^T, and (U_A kron U_G) vec(M) = vec(U_G M U_A^T).
    """
    dtype = E.dtype
    # float64: single-precision eigh can return NaN eigenvectors for these rank-deficient factors
    a, Ua = torch.linalg.eigh((A + A.T).double() / 2)
    g, Ug = torch.linalg.eigh((G + G.T).double() / 2)
    lam = scale * g.clamp_min(0).unsqueeze(1) * a.clamp_min(0).unsqueeze(0) + tau  # (d_out, d_in)
    return (Ug @ (E.double() / lam.sqrt()) @ Ua.T).to(dtype)


# ---------------------------------------------------------------------------------------------
# Collecting activations and output gradients per layer
# ---------------------------------------------------------------------------------------------

@dataclass
class LayerCurvature:
    """One Linear / Conv2d layer: its parameter names and the per-example statistics.

    ``acts``: (N, P, d_in) layer inputs (conv: unfolded patches; P positions, 1 for Linear) with a
    trailing 1 if the layer has a bias. ``grads``: (N, C, P, d_out) gradients of f_n . R_n[:, c]
    w.r.t. the layer's output.
    """

    weight: str
    bias: str | None
    acts: torch.Tensor
    grads: torch.Tensor

    @property
    def num_examples(self) -> int:
        return self.acts.shape[0]

    def factors(self):
        """(A, G, scale): A = 1/N sum a a^T, G = 1/(N P) sum g g^T, block ~ scale * A kron G, scale = N."""
        n, p, din = self.acts.shape
        a = self.acts.reshape(-1, din)
        g = self.grads.reshape(-1, self.grads.shape[-1])
        return a.T @ a / n, g.T @ g / (n * p), float(n)

    def kfac_logdet(self, tau: float) -> torch.Tensor:
        n, p, din = self.acts.shape
        eig_a = factor_eigenvalues(self.acts.reshape(-1, din), n)
        eig_g = factor_eigenvalues(self.grads.reshape(-1, self.grads.shape[-1]), n * p)
        return kfac_logdet(eig_a, eig_g, float(n), tau)

    def diagonal(self) -> torch.Tensor:
        """Exact diagonal of sum_n sum_c (per-example gradient)^2, shaped like W_aug (d_out, d_in)."""
        per_example = torch.einsum("ncpo,npi->ncoi", self.grads, self.acts)
        return (per_example ** 2).sum(dim=(0, 1))


def curvature_layers(model: nn.Module):
    """(module name, module) for every Linear / Conv2d layer: the layers K-FAC covers."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _prefixed(name: str, leaf: str) -> str:
    return f"{name}.{leaf}" if name else leaf


def output_hessian_root(outputs: torch.Tensor, targets: torch.Tensor, noise_variance: float | None = None) -> torch.Tensor:
    """R_n with R_n R_n^T = Hessian of the per-example negative log-likelihood w.r.t. the outputs: (N, D, C).

    Integer targets: cross-entropy, R = diag(sqrt p) - p sqrt(p)^T (C = D classes).
    Real targets: a Gaussian likelihood with variance sigma^2 = ``noise_variance`` per output,
    R = I / sigma; the default sigma^2 = D / 2 makes the negative log-likelihood the mean squared
    error over the D outputs (up to a constant), R = sqrt(2 / D) I.
    """
    if targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        p = torch.softmax(outputs, dim=-1)
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        return (eye - p.unsqueeze(-1)) * p.sqrt().unsqueeze(-2)
    d = outputs.shape[-1]
    eye = torch.eye(d, dtype=outputs.dtype, device=outputs.device)
    sigma2 = d / 2.0 if noise_variance is None else check_positive("noise_variance", noise_variance)
    return (eye / math.sqrt(sigma2)).expand(outputs.shape[0], d, d)


def collect_layer_curvature(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                            noise_variance: float | None = None):
    """Per Linear / Conv2d layer of ``model`` run with ``params`` on ``x``: inputs and output gradients.

    Forward hooks record each covered layer's input and add a zero perturbation delta to its
    output; ``torch.func.vjp`` w.r.t. the deltas then gives the gradients w.r.t. the layer outputs
    for each column of R (one vector-Jacobian product per column). Everything stays differentiable
    w.r.t. ``params`` (and works inside ``vmap``). Returns a list of :class:`LayerCurvature`.
    """
    layers = curvature_layers(model)
    if not layers:
        raise ValueError("the model has no Linear or Conv2d layer: K-FAC and the diagonal cover only those")
    shapes, inputs = {}, {}

    def run(deltas):
        handles = []
        for name, module in layers:
            def hook(mod, inp, out, name=name):
                inputs[name] = inp[0]
                if deltas is None:
                    shapes[name] = out.shape
                    return out
                return out + deltas[name]
            handles.append(module.register_forward_hook(hook))
        try:
            return forward(model, params, x)
        finally:
            for h in handles:
                h.remove()

    with torch.no_grad():  # shapes of the layer outputs, to build the zero perturbations
        run(None)
    ref = next(iter(params.values()))
    zeros = {name: torch.zeros(shapes[name], dtype=ref.dtype, device=ref.device) for name, _ in layers}

    def with_aux(deltas):
        out = run(deltas)
        return out, dict(inputs)

    out, vjp_fn, acts_of = torch.func.vjp(with_aux, zeros, has_aux=True)
    out2 = out.reshape(out.shape[0], -1)
    R = output_hessian_root(out2, y, noise_variance)
    # one batched vector-Jacobian product for all columns of R (vmap over the cotangents)
    cotangents = R.permute(2, 0, 1).reshape((R.shape[-1],) + out.shape)
    stacked = torch.func.vmap(lambda r: vjp_fn(r)[0])(cotangents)
    cols = [{name: t[c] for name, t in stacked.items()} for c in range(R.shape[-1])]

    result = []
    for name, module in layers:
        a = acts_of[name]
        n = a.shape[0]
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ValueError(f"layer {name}: K-FAC here supports Conv2d with groups=1, zero padding given as numbers")
            patches = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # (N, d_in, P)
            a = patches.transpose(1, 2)
            g = torch.stack([c[name].flatten(2).transpose(1, 2) for c in cols], dim=1)  # (N, C, P, d_out)
        else:
            a = a.reshape(n, -1, a.shape[-1])
            g = torch.stack([c[name].reshape(n, -1, c[name].shape[-1]) for c in cols], dim=1)
        if module.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
        result.append(LayerCurvature(_prefixed(name, "weight"),
                                     _prefixed(name, "bias") if module.bias is not None else None, a, g))
    return result


def laplace_logdet(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, tau: float,
                   curvature: str = "kfac", noise_variance: float | None = None) -> torch.Tensor:
    """log det H_hat, H_hat = (approximate curvature of sum_n l_n at ``params``) + tau I over the covered layers.

    ``curvature``: "kfac" (block diagonal over layers, each block N A kron G) or "diagonal" (the
    exact diagonal of the Fisher / generalised Gauss-Newton matrix). ``noise_variance``: see
    :func:`output_hessian_root` (regression only). Differentiable w.r.t. ``params``.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is unknown: allowed {', '.join(map(repr, CURVATURES))}")
    layers = collect_layer_curvature(model, params, x, y, noise_variance)
    if curvature == "kfac":
        return sum(layer.kfac_logdet(tau) for layer in layers)
    return sum(torch.log(layer.diagonal() + tau).sum() for layer in layers)


def _split_augmented(W_aug: torch.Tensor, layer: LayerCurvature, params: Params) -> Dict[str, torch.Tensor]:
    shape = params[layer.weight].shape
    out = {layer.weight: W_aug[..., :-1].reshape(W_aug.shape[:-2] + shape) if layer.bias else
           W_aug.reshape(W_aug.shape[:-2] + shape)}
    if layer.bias:
        out[layer.bias] = W_aug[..., -1]
    return out


def sample_laplace_posterior(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, tau: float,
                             num_samples: int, curvature: str = "kfac",
                             generator: torch.Generator | None = None, noise_variance: float | None = None) -> Params:
    """Draws from N(phi_hat, H_hat^-1), phi_hat = ``params``, H_hat as in :func:`laplace_logdet`.

    Returns ``{name: (num_samples, *shape)}``. Parameters outside Linear / Conv2d layers (batch
    norm) get no curvature term and are kept at phi_hat in every sample.
    """
    check_int("num_samples", num_samples, 1)
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is unknown: allowed {', '.join(map(repr, CURVATURES))}")
    params = {k: v.detach() for k, v in params.items()}
    with torch.no_grad():
        layers = collect_layer_curvature(model, params, x, y, noise_variance)
    samples = {k: v.unsqueeze(0).expand((num_samples,) + v.shape).clone() for k, v in params.items()}
    for layer in layers:
        d_out, d_in = layer.grads.shape[-1], layer.acts.shape[-1]
        E = torch.randn(num_samples, d_out, d_in, generator=generator, dtype=torch.float64).to(
            dtype=layer.acts.dtype, device=layer.acts.device)
        if curvature == "kfac":
            A, G, scale = layer.factors()
            noise = kfac_transform(A, G, scale, tau, E)
        else:
            noise = E / (layer.diagonal() + tau).sqrt()
        for name, delta in _split_augmented(noise, layer, params).items():
            samples[name] = samples[name] + delta
    return samples
