"""LLAMA and the Bayes helpers: K-FAC and diagonal curvature against explicit matrices, the
meta-gradient of the Laplace term against finite differences, early stopping as a prior, the
evidence of Bayesian linear regression, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlcourse import curvature
from mlcourse.analysis import evidence
from mlcourse.algorithms.llama import LLAMA
from mlcourse.nn import MLP, ConvNet
from mlcourse.tasks import Sinusoid, TaskBatch
from _helpers import flat_params, set_flat


def sinusoid_batch(tasks=2, shots=5, seed=0):
    batch = Sinusoid(shots, 6).sample(tasks, generator=torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.double() for t in batch))


def small_mlp(sizes=(1, 6, 5, 1), seed=0):
    torch.manual_seed(seed)
    return MLP(list(sizes)).double()


def exact_ggn(model, x, y):
    """sum_n J_n^T R_n R_n^T J_n with J from torch.func.jacrev over the flattened parameters."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def outputs(v):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = v[i:i + s.numel()].view(s)
            i += s.numel()
        return functional_call(model, params, (x,))

    J = torch.func.jacrev(outputs)(flat)  # (N, D, P)
    R = curvature.output_hessian_root(outputs(flat).detach(), y)  # (N, D, C)
    M = R @ R.transpose(1, 2)
    return torch.einsum("ndp,nde,neq->pq", J, M, J), names, shapes


def param_slices(names, shapes):
    out, i = {}, 0
    for n, s in zip(names, shapes):
        out[n] = (i, i + s.numel(), s)
        i += s.numel()
    return out


def augmented_index(sl, weight, bias):
    """Indices of vec(W_aug) (column-major, W_aug = [W | b]) in the flat parameter vector."""
    w0, _, shape = sl[weight]
    d_out, d_in = shape[0], int(torch.tensor(shape[1:]).prod())
    idx = []
    for i in range(d_in + (bias is not None)):
        for j in range(d_out):
            idx.append(w0 + j * d_in + i if i < d_in else sl[bias][0] + j)
    return torch.tensor(idx)


# --- K-FAC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows_a,rows_g", [(3, 4), (9, 12)])
def test_kfac_logdet_equals_explicit_kronecker(rows_a, rows_g):
    g = torch.Generator().manual_seed(rows_a)
    acts = torch.randn(rows_a, 1, 5, generator=g, dtype=torch.float64)  # few rows: A rank-deficient
    grads = torch.randn(rows_a, 2, 1, 3, generator=g, dtype=torch.float64)
    layer = curvature.LayerCurvature("w", None, acts, grads)
    A, G, scale = layer.factors()
    for tau in (1e-3, 0.7):
        explicit = torch.logdet(scale * torch.kron(A, G) + tau * torch.eye(15, dtype=torch.float64))
        assert torch.allclose(layer.kfac_logdet(tau), explicit, rtol=1e-10, atol=1e-9)


def test_kfac_block_is_exact_for_one_example():
    # With one example and one output, the Fisher block of a layer IS a Kronecker product.
    model = small_mlp()
    batch = sinusoid_batch(tasks=1, shots=1)
    x, y = batch.support_x[0], batch.support_y[0]
    H, names, shapes = exact_ggn(model, x, y)
    sl = param_slices(names, shapes)
    layers = curvature.collect_layer_curvature(model, dict(model.named_parameters()), x, y)
    for layer in layers:
        A, G, scale = layer.factors()
        idx = augmented_index(sl, layer.weight, layer.bias)
        assert torch.allclose(scale * torch.kron(A, G), H[idx][:, idx], atol=1e-12)


def test_kfac_transform_has_the_inverse_curvature_as_covariance():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, 2, generator=g, dtype=torch.float64)
    A, G, scale, tau = a.T @ a / 4, b.T @ b / 6, 4.0, 0.3
    basis = torch.eye(6, dtype=torch.float64).view(6, 2, 3)  # every E = unit matrix (d_out=2, d_in=3)
    T = torch.stack([curvature.kfac_transform(A, G, scale, tau, E).T.flatten() for E in basis], dim=1)  # column-major vec
    target = torch.linalg.inv(scale * torch.kron(A, G) + tau * torch.eye(6, dtype=torch.float64))
    assert torch.allclose(T @ T.T, target, atol=1e-12)


# --- diagonal --------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["regression", "classification"])
def test_diagonal_equals_exact_ggn_diagonal(task):
    if task == "regression":
        model = small_mlp()
        batch = sinusoid_batch(tasks=1, shots=5)
        x, y = batch.support_x[0], batch.support_y[0]
    else:
        model = small_mlp((4, 6, 3))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (7,), generator=g)
    H, names, shapes = exact_ggn(model, x, y)
    sl = param_slices(names, shapes)
    diag = torch.diagonal(H)
    tau, total = 0.05, 0.0
    for layer in curvature.collect_layer_curvature(model, dict(model.named_parameters()), x, y):
        idx = augmented_index(sl, layer.weight, layer.bias)
        ours = layer.diagonal().T.flatten()  # column-major, like idx
        assert torch.allclose(ours, diag[idx], atol=1e-12)
        total = total + torch.log(diag[idx] + tau).sum()
    assert torch.allclose(curvature.laplace_logdet(model, dict(model.named_parameters()), x, y, tau, "diagonal"), total)


def test_conv_kfac_factors_match_unfolded_definition():
    torch.manual_seed(0)
    model = ConvNet(ways=3, hidden=4, blocks=2).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    layers = curvature.collect_layer_curvature(model, dict(model.named_parameters()), x, y)
    assert [l.weight for l in layers] == ["features.0.weight", "features.3.weight", "head.weight"]
    conv = layers[0]
    assert conv.acts.shape == (3, 16, 10) and conv.grads.shape == (3, 3, 16, 4)  # 4x4 positions, 9+1 inputs
    # sum over positions and examples of g a^T is the gradient of sum_n f_n . R_n[:, c] w.r.t. W_aug
    out = model(x)
    R = curvature.output_hessian_root(out, y)
    w = model.features[0].weight
    for c in range(3):
        grad_w = torch.autograd.grad((out * R[:, :, c].detach()).sum(), w, retain_graph=True)[0]
        ours = torch.einsum("npo,npi->oi", conv.grads[:, c], conv.acts)[:, :-1].reshape(w.shape)
        assert torch.allclose(ours.detach(), grad_w, atol=1e-12)


# --- the meta-gradient ------------------------------------------------------------------------

@pytest.mark.parametrize("curvature", ["kfac", "diagonal"])
@pytest.mark.parametrize("vectorise", [True, False])
def test_laplace_term_gradient_matches_finite_differences(curvature, vectorise):
    model = small_mlp()
    batch = sinusoid_batch(tasks=2, shots=4)
    alg = LLAMA(model, F.mse_loss, inner_lr=0.05, inner_steps=2, prior_precision=0.1, eta=0.5,
                curvature=curvature, vectorise=vectorise)

    def logdet_term():  # mean eta log det H_hat alone: the part MAML does not have
        return alg.eta * alg.task_terms(batch)[1].mean()

    model.zero_grad()
    logdet_term().backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    alg.meta_loss(batch).backward()
    full = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert (full - grad).abs().max() > 1e-3  # the query loss contributes too: both terms are live
    base = flat_params(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = torch.randn(base.numel(), generator=g, dtype=torch.float64)
        values = []
        for sign in (1, -1):
            set_flat(model, base + sign * 1e-6 * d)
            with torch.no_grad():
                values.append(logdet_term().item())
        set_flat(model, base)
        fd = (values[0] - values[1]) / 2e-6
        assert abs(fd - grad @ d) < 1e-6 * max(1.0, abs(fd)), (fd, (grad @ d).item())


def test_vectorised_and_loop_agree():
    model = small_mlp()
    batch = sinusoid_batch(tasks=3)
    grads = []
    for vectorise in (True, False):
        alg = LLAMA(model, F.mse_loss, 0.05, 1, prior_precision=0.1, eta=0.5, vectorise=vectorise)
        model.zero_grad()
        alg.meta_loss(batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_posterior_samples_keep_batch_norm_and_spread_with_weak_prior():
    torch.manual_seed(0)
    model = ConvNet(ways=3, hidden=4, blocks=2).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    alg = LLAMA(model, F.cross_entropy, 0.1, 1, prior_precision=10.0, eta=1e-3)
    samples = alg.sample_posterior(x, y, 5, torch.Generator().manual_seed(0))
    phi = alg.adapt(x, y)
    assert torch.equal(samples["features.1.weight"][0], phi["features.1.weight"].detach())  # BN: no curvature
    spread = samples["head.weight"].std(0).mean()
    weaker = LLAMA(model, F.cross_entropy, 0.1, 1, prior_precision=0.1, eta=1e-3)
    spread_weak = weaker.sample_posterior(x, y, 5, torch.Generator().manual_seed(0))["head.weight"].std(0).mean()
    assert spread_weak > 3 * spread
    preds = alg.predictive_samples(x, y, x, 4, torch.Generator().manual_seed(1))
    assert preds.shape == (4, 3, 3)


# --- early stopping as a prior, and the evidence -----------------------------------------------

def random_quadratic(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    H = M @ M.T + 0.1 * torch.eye(n, dtype=torch.float64)
    return H, torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64), g


@pytest.mark.parametrize("k", [1, 3, 20])
def test_early_stopping_is_map_under_implied_prior(k):
    H, phi_star, theta, g = random_quadratic()
    b = 0.5 / torch.linalg.eigvalsh(H).max().item()
    Q = evidence.early_stopping_prior_covariance(H, k, b)
    gd = evidence.gradient_descent_iterate(H, phi_star, theta, k, b)
    assert torch.allclose(gd, evidence.map_estimate(H, phi_star, theta, Q), atol=1e-10)
    # the formula as written, O Lambda^-1 ((I - b Lambda)^-k - I) O^T
    lam, O = torch.linalg.eigh(H)
    assert torch.allclose(Q, O @ torch.diag(((1 - b * lam) ** -k - 1) / lam) @ O.T, rtol=1e-10, atol=1e-10)
    # a general (non-commuting) preconditioner B
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    B = M @ M.T + torch.eye(6, dtype=torch.float64)
    B = 0.5 * B / torch.linalg.eigvals(B @ H).real.max()
    QB = evidence.early_stopping_prior_covariance(H, k, B)
    assert torch.allclose(evidence.gradient_descent_iterate(H, phi_star, theta, k, B),
                          evidence.map_estimate(H, phi_star, theta, QB), atol=1e-10)


def test_prior_covariance_grows_with_k_and_rejects_large_steps():
    H, *_ = random_quadratic()
    b = 0.5 / torch.linalg.eigvalsh(H).max().item()
    traces = [torch.trace(evidence.early_stopping_prior_covariance(H, k, b)).item() for k in (1, 2, 5)]
    assert traces[0] < traces[1] < traces[2]
    with pytest.raises(ValueError, match="reduce the step size"):
        evidence.early_stopping_prior_covariance(H, 2, 1.5 / torch.linalg.eigvalsh(H).max().item())


def test_linear_regression_evidence_exact_and_laplace_agree():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(8, generator=g, dtype=torch.float64)
    tau, sigma2, m = 2.0, 0.25, torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    exact = evidence.linear_regression_log_evidence(X, y, tau, sigma2, m)
    mvn = torch.distributions.MultivariateNormal(X @ m, sigma2 * torch.eye(8, dtype=torch.float64) + X @ X.T / tau)
    assert torch.allclose(exact, mvn.log_prob(y), atol=1e-12)

    def log_joint(w):
        lik = torch.distributions.Normal(X @ w, math.sqrt(sigma2)).log_prob(y).sum()
        prior = torch.distributions.Normal(m, 1 / math.sqrt(tau)).log_prob(w).sum()
        return lik + prior

    laplace = evidence.laplace_log_evidence(log_joint, torch.zeros(3, dtype=torch.float64))
    assert abs(laplace["log_evidence"].item() - exact.item()) < 1e-10


def test_laplace_is_not_exact_for_a_non_gaussian_integrand():
    # f(phi) = -phi^4 / 4: integral exp(f) = 2 Gamma(1/4) 4^(1/4) / 4; Laplace around a quartic fails,
    # so use f = -cosh(phi): integral = 2 K_0(1); Laplace gives -1 + 1/2 log(2 pi).
    value = evidence.laplace_log_evidence(lambda u: -torch.cosh(u).sum(), torch.tensor([0.3], dtype=torch.float64))
    grid = torch.linspace(-20, 20, 200001, dtype=torch.float64)
    numeric = math.log(torch.trapezoid(torch.exp(-torch.cosh(grid)), grid).item())
    assert abs(value["log_evidence"].item() - (-1 + 0.5 * math.log(2 * math.pi))) < 1e-12
    assert abs(value["log_evidence"].item() - numeric) > 1e-2


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(prior_precision=0.0), "prior_precision"),
    (dict(prior_precision=-1.0), "prior_precision"),
    (dict(eta=0.0), "eta"),
    (dict(eta=-1e-6), "eta"),
    (dict(curvature="full"), "curvature='full' is unknown"),
    (dict(inner_lr=0.0), "inner_lr"),
])
def test_bad_input(kwargs, match):
    args = dict(inner_lr=0.01, inner_steps=1, prior_precision=1.0, eta=1.0, curvature="kfac")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LLAMA(small_mlp(), F.mse_loss, **args)


def test_bad_input_helpers():
    with pytest.raises(ValueError, match="curvature"):
        curvature.laplace_logdet(small_mlp(), dict(small_mlp().named_parameters()), torch.zeros(2, 1, dtype=torch.float64),
                             torch.zeros(2, 1, dtype=torch.float64), 1.0, "exact")
    with pytest.raises(ValueError, match="prior_precision"):
        evidence.linear_regression_log_evidence(torch.eye(2), torch.zeros(2), 0.0, 1.0)
    with pytest.raises(ValueError, match="k=0"):
        evidence.early_stopping_prior_covariance(torch.eye(2), 0, 0.1)
