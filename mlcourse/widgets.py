"""ipywidgets playgrounds for the exercises; each has a static twin for the rendered book."""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import torch

from .functional import flatten
from .plots import grid, sinusoid_fit
from .tasks import Sinusoid


#: The smallest font size, in points, of any text in a playground's figure (labels, ticks, legends).
MIN_FONT_SIZE = 9


def legible(fig, minimum: float = MIN_FONT_SIZE):
    """Raise every text of ``fig`` (titles, labels, tick labels, legends) to at least ``minimum``
    points, for figures whose helpers chose smaller legends. Returns ``fig``."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_fontsize() < minimum:
            text.set_fontsize(minimum)
    return fig


def _task(shots: int, seed: int):
    batch, amplitude, phase = Sinusoid(shots, 1).sample(1, torch.Generator().manual_seed(seed), return_params=True)
    return batch.support_x[0], batch.support_y[0], amplitude[0], phase[0]


def _with_lr(algorithm, inner_lr):
    clone = copy.copy(algorithm)  # shares the model: only the step size differs
    clone.inner_lr = inner_lr
    return clone


def draw_sinusoid_adaptation(algorithms: dict, inner_lr: float, inner_steps: int, shots: int, seed: int = 0):
    """Each algorithm's fit to one sinusoid task after 0 and ``inner_steps`` steps of size ``inner_lr``."""
    sx, sy, amplitude, phase = _task(shots, seed)
    fig, axes = grid(len(algorithms), cols=len(algorithms))
    for ax, (name, alg) in zip(axes, algorithms.items()):
        sinusoid_fit(_with_lr(alg, inner_lr), sx, sy, amplitude, phase, steps=(0, inner_steps), ax=ax,
                     title=f"{name}: alpha={inner_lr:g}, k={inner_steps}, K={shots}")
    legible(fig)
    fig.tight_layout()
    return fig


def sinusoid_static(algorithms: dict, settings, seed: int = 0):
    """The static twin of :func:`sinusoid_playground`: one figure per (inner_lr, steps, shots)."""
    for inner_lr, steps, shots in settings:
        draw_sinusoid_adaptation(algorithms, inner_lr, steps, shots, seed)
        plt.show()


def sinusoid_playground(algorithms: dict, inner_lr: float = 0.01, inner_steps: int = 10, shots: int = 10):
    """Sliders for the inner step size alpha, the number of inner steps k and K; redraws the fits."""
    import ipywidgets as w

    def show(inner_lr, inner_steps, shots, task):
        draw_sinusoid_adaptation(algorithms, inner_lr, inner_steps, shots, task)
        plt.show()

    return w.interactive(
        show,
        inner_lr=w.FloatLogSlider(value=inner_lr, base=10, min=-3, max=-0.5, step=0.1, description="alpha"),
        inner_steps=w.IntSlider(value=inner_steps, min=0, max=40, description="steps k"),
        shots=w.IntSlider(value=shots, min=1, max=40, description="K"),
        task=w.IntSlider(value=0, min=0, max=20, description="task seed"),
    )


# -- chapter 3: the geometry of Reptile, and the Taylor expansion ---------------------------------
def reptile_line_path(tasks, inner_steps: int, inner_lr: float = 0.25, outer_step_size: float = 0.5,
                      iterations: int = 150, start=(0.0, 0.0)) -> torch.Tensor:
    """The iterates of :func:`mlcourse.analysis.manifolds.reptile_path`, fast enough for a slider.

    On the line tasks the inner loop is gradient descent on quadratics, so Reptile's direction
    d(theta) = theta - mean_i W_i(theta) is affine in theta: d(theta) = D theta + c. Three calls of
    the package's ``Reptile.meta_gradient`` (at 0 and at the two unit vectors) give D and c, and
    the ``iterations`` updates theta <- theta - eps d(theta) are then 2 x 2 products, instead of
    ``iterations`` calls of k inner steps each (seconds at k = 60). The iterates are the same up
    to rounding (``benchmarks/widget_redraw.py`` compares them). Returns [iterations + 1, 2].
    """
    import torch.nn.functional as F

    from .algorithms.reptile import Reptile
    from .analysis import manifolds
    from .utils import check_int, check_positive

    check_int("inner_steps", inner_steps, 1)
    check_int("iterations", iterations, 1)
    eps = check_positive("outer_step_size", outer_step_size)
    model = manifolds.point_model(start)
    reptile = Reptile(model, F.mse_loss, inner_lr=inner_lr, inner_steps=inner_steps)

    def direction(point):
        with torch.no_grad():
            model.weight.copy_(point.view(1, 2))
        return reptile.meta_gradient(tasks)[1]["weight"].flatten()

    eye = torch.eye(2, dtype=torch.float64)
    c = direction(torch.zeros(2, dtype=torch.float64))
    D = torch.stack([direction(e) - c for e in eye], 1)   # column j: d(e_j) - d(0)
    step, shift = eye - eps * D, -eps * c                  # theta <- step theta + shift
    path = [torch.as_tensor(start, dtype=torch.float64).flatten()]
    for _ in range(iterations):
        path.append(step @ path[-1] + shift)
    return torch.stack(path)


def draw_manifolds(tasks, inner_steps: int, inner_lr: float = 0.25, iterations: int = 150, ax=None):
    """Reptile's iterates on the 2-D line tasks of :mod:`mlcourse.analysis.manifolds`, with the
    point closest to all lines and joint training's minimiser."""
    from .analysis import manifolds

    ax = ax or plt.subplots(figsize=(8.0, 6.0))[1]
    closest, joint = manifolds.closest_point(tasks), manifolds.joint_minimiser(tasks)
    path = reptile_line_path(tasks, inner_steps, inner_lr, iterations=iterations)
    u = torch.linspace(-4, 4, 2, dtype=torch.float64)
    for a, b in zip(tasks.support_x[:, 0], tasks.support_y[:, 0, 0]):
        n = a / a.norm()
        base, along = n * b / a.norm(), torch.stack([-n[1], n[0]])
        ends = base + u.unsqueeze(1) * along
        ax.plot(ends[:, 0], ends[:, 1], color="0.6", lw=1)
    ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=0.8, color="tab:blue",
            label=f"Reptile, k={inner_steps}")
    ax.plot(*closest, "*", ms=14, color="tab:green", label="closest to all lines")
    ax.plot(*joint, "x", ms=10, mew=2, color="tab:red", label="joint training")
    ax.set_xlim(-0.5, 3.0), ax.set_ylim(-0.5, 3.0), ax.set_aspect("equal")
    ax.set_xlabel("phi[0]"), ax.set_ylabel("phi[1]")
    ax.legend(fontsize=MIN_FONT_SIZE, loc="upper right")
    return ax


def manifolds_playground(tasks, inner_steps: int = 1):
    """A slider for the number of inner steps k of Reptile on the 2-D line tasks."""
    import ipywidgets as w

    def show(inner_steps):
        draw_manifolds(tasks, inner_steps)
        plt.show()

    return w.interactive(show, inner_steps=w.IntSlider(value=inner_steps, min=1, max=60, description="inner steps k"))


def draw_taylor_error(loss_of, theta, tasks, inner_lr: float, k: int, terms=None):
    """Bars: |exact - predicted| expected gradient of MAML, FOMAML and Reptile, with and without
    the AvgGradInner term, for one step size alpha and k mini-batches.

    ``terms`` is ``(avg_grad, avg_grad_inner)`` when already computed (they depend on neither
    alpha nor k; :func:`taylor_playground` computes them once). Errors below 1e-16 (exact zeros:
    with k = 1 there is no inner step to predict) are drawn at 1e-16. The log axis spans whole
    decades, with a label at each power of ten only, so its tick labels never collide."""
    import numpy as np
    from matplotlib.ticker import LogLocator, NullFormatter

    from .analysis import taylor

    avg_grad, avg_inner = terms if terms is not None else taylor.avg_grad_terms(loss_of, theta, tasks)
    exact = taylor.exact_gradients(loss_of, theta, tasks, inner_lr, k)
    full = taylor.predicted_gradients(avg_grad, avg_inner, inner_lr, k)
    zero = {p: 0 * v for p, v in avg_inner.items()}
    lead = taylor.predicted_gradients(avg_grad, zero, inner_lr, k)
    names = list(taylor.ALGORITHMS)
    floor = 1e-16

    def err(pred):
        return [max((flatten(exact[n]) - flatten(pred[n])).norm().item(), floor) for n in names]

    errors = {"AvgGrad term only": err(lead), "with AvgGradInner": err(full)}
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    x = np.arange(len(names))
    for shift, (label, values) in zip((-0.2, 0.2), errors.items()):
        ax.bar(x + shift, values, 0.4, label=label)
        for position, value in zip(x + shift, values):
            if value <= floor:  # an exact zero: say so rather than draw nothing
                ax.text(position, 1.5 * floor, "0", ha="center", va="bottom")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    every = [v for values in errors.values() for v in values]
    low, high = np.floor(np.log10(min(every))), np.ceil(np.log10(max(every)))
    ax.set_ylim(10 ** low, 10 ** max(high, low + 1))
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("|exact - predicted|")
    ax.set_title(f"alpha={inner_lr:.3g}, k={k}", fontsize=11)
    ax.legend(fontsize=MIN_FONT_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    legible(fig)
    fig.tight_layout()
    return fig


def taylor_playground(loss_of, theta, tasks, inner_lr: float = 0.01, k: int = 2):
    """Sliders for alpha and k: how well the O(alpha^2) expansion predicts the exact gradients."""
    import ipywidgets as w

    from .analysis import taylor

    terms = taylor.avg_grad_terms(loss_of, theta, tasks)  # independent of the sliders

    def show(inner_lr, k):
        draw_taylor_error(loss_of, theta, tasks, inner_lr, k, terms=terms)
        plt.show()

    fewest = min(len(t) for t in tasks)
    return w.interactive(
        show,
        inner_lr=w.FloatLogSlider(value=inner_lr, base=10, min=-3.5, max=-0.5, step=0.1, description="alpha"),
        k=w.IntSlider(value=k, min=1, max=fewest, description="k"),
    )


# -- chapter 4: early stopping as a prior, and LLAMA's posterior on sinusoids ---------------------
def draw_early_stopping(H, phi_star, theta, k: int = 3, step: float = 0.5, ax=None):
    """k steps of gradient descent on the 2-D quadratic 1/2 (phi - phi*)^T H (phi - phi*) from
    theta, the prior N(theta, Q) they imply (1- and 2-sigma ellipses) and the MAP estimate under
    it, which lands on the k-th iterate. ``step`` is b lambda_max (b: the step size). Returns the
    figure.

    Q and the MAP estimate are computed in the eigenbasis of H (B = b I shares it):
    q_i = ((1 - b lambda_i)^-k - 1) / lambda_i and z_i = z0_i / (1 + lambda_i q_i). There they
    stay accurate over the sliders' whole range, where Q's stiff variance reaches about 1e51 and the
    matrix forms of ``evidence.early_stopping_prior_covariance`` and ``evidence.map_estimate``
    lose the smaller variance to rounding (at k = 40, b lambda_max = 0.95 the solve fails). The
    chapter checks the matrix forms, for a general B too, where they are well conditioned."""
    import numpy as np

    from .analysis import evidence
    from .utils import check_int

    check_int("k", k, 1)
    if H.shape != (2, 2):
        raise ValueError(f"H has shape {tuple(H.shape)}: allowed (2, 2), a quadratic in the plane")
    if not 0 < step < 1:
        raise ValueError(f"step={step!r} is out of range: allowed 0 < b lambda_max < 1")
    ax = ax or plt.subplots(figsize=(6.0, 5.4))[1]
    lam, O = torch.linalg.eigh(H)
    b = step / lam.max().item()
    u, v = np.meshgrid(np.linspace(-3, 3, 120), np.linspace(-3, 3, 120))
    d = np.stack([u - phi_star[0].item(), v - phi_star[1].item()], -1)
    loss = 0.5 * np.einsum("...i,ij,...j->...", d, H.numpy(), d)
    ax.contour(u, v, loss, levels=12, colors="0.75", linewidths=0.8)
    path = [evidence.gradient_descent_iterate(H, phi_star, theta, i, b) for i in range(k + 1)]
    ax.plot(*np.array([p.numpy() for p in path]).T, "k.-", ms=4, lw=0.8, label="gradient descent")
    exponent = -k * torch.log1p(-b * lam)
    growth = torch.exp(exponent)                            # (1 - b lambda_i)^-k = 1 + lambda_i q_i
    flat = lam.abs() < 1e-14 * lam.abs().max()              # a direction the loss does not see
    q = torch.where(flat, torch.full_like(lam, k * b),      # its limit k b, else:
                    torch.expm1(exponent) / torch.where(flat, torch.ones_like(lam), lam))
    t = np.linspace(0, 2 * np.pi, 200)
    circle = torch.tensor(np.stack([np.cos(t), np.sin(t)]))
    for r in (1, 2):
        ellipse = (O @ torch.diag(q.sqrt()) @ circle).numpy() * r
        ax.plot(theta[0].item() + ellipse[0], theta[1].item() + ellipse[1], color="tab:blue", lw=1)
    m = phi_star + O @ ((O.T @ (theta - phi_star)) / growth)   # argmin of loss + prior term
    ax.plot(*m.numpy(), "rx", ms=10, mew=2, label="MAP under N(theta, Q)")
    ax.plot(*phi_star.numpy(), "k*", ms=10, label="phi*")
    ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal")
    ax.legend(fontsize=MIN_FONT_SIZE, loc="lower right")
    ax.set_title(f"k={k}, b={step:g}/lambda_max", fontsize=10)
    return ax.figure


def early_stopping_playground(H, phi_star, theta, k: int = 3, step: float = 0.5):
    """Sliders for the number of steps k and the step size b lambda_max of :func:`draw_early_stopping`."""
    import ipywidgets as w

    def show(k, step):
        draw_early_stopping(H, phi_star, theta, k, step)
        plt.show()

    return w.interactive(
        show,
        k=w.IntSlider(value=k, min=1, max=40, description="steps k"),
        step=w.FloatSlider(value=step, min=0.05, max=0.95, step=0.05, description="b lambda_max"),
    )


def draw_llama_posterior(llama, maml, tau: float = 300.0, eta: float = 1e-3, points: int = 10,
                         x_range=(-5.0, 5.0), curvature: str = "kfac", seed: int = 11):
    """MAML's prediction and LLAMA's posterior samples on one sinusoid task seen through ``points``
    points in ``x_range``, with LLAMA's prior precision ``tau``, weight ``eta`` and ``curvature``
    replaced (the trained network is shared, not copied). Prints the two terms of LLAMA's
    objective for the task (query loss on 100 fresh points, eta log det H_hat); returns the figure."""
    from .algorithms.llama import LLAMA
    from .curvature import CURVATURES
    from .plots import sinusoid_posterior, sinusoid_task
    from .tasks import Sinusoid, TaskBatch
    from .utils import check_int, check_positive

    if not isinstance(llama, LLAMA):
        raise TypeError(f"llama must be a trained mlcourse LLAMA, got {type(llama).__name__}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is unknown: allowed {', '.join(map(repr, CURVATURES))}")
    check_int("points", points, 1)
    alg = copy.copy(llama)  # shares the trained network: only tau, eta and the curvature differ
    alg.prior_precision, alg.eta = check_positive("tau", tau), check_positive("eta", eta)
    alg.curvature = curvature
    x, y, amplitude, phase = sinusoid_task(seed, shots=points, x_range=x_range)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    where = f"{points} points in [{x_range[0]:g}, {x_range[1]:g}]"
    sinusoid_posterior(maml, x, y, amplitude, phase, title=f"MAML, {where}", ax=axes[0])
    sinusoid_posterior(alg, x, y, amplitude, phase, samples=16, title=f"LLAMA ({curvature}), tau={tau:g}",
                       ax=axes[1])
    legible(fig)
    fig.tight_layout()
    qx, *_ = sinusoid_task(seed + 1000, shots=100)
    qy = Sinusoid.function(qx[None], amplitude, phase)[0]
    device = next(alg.model.parameters()).device
    query, logdet = alg.task_terms(TaskBatch(x[None], y[None], qx[None], qy[None]).to(device))
    print(f"query loss {query.item():.3f}   log det H_hat {logdet.item():.1f}   "
          f"eta * log det {eta * logdet.item():.3f}")
    return fig


def llama_playground(llama, maml, tau: float = 300.0, eta: float = 1e-3, points: int = 10,
                     x_range=(-5.0, 5.0), curvature: str = "kfac", seed: int = 11):
    """Sliders for tau, eta, the number and range of the points, the curvature and the task of
    :func:`draw_llama_posterior`."""
    import ipywidgets as w

    def show(tau, eta, points, x_range, curvature, seed):
        draw_llama_posterior(llama, maml, tau, eta, points, x_range, curvature, seed)
        plt.show()

    return w.interactive(
        show,
        tau=w.FloatLogSlider(value=tau, base=10, min=0, max=4, step=0.1, description="tau"),
        eta=w.FloatLogSlider(value=eta, base=10, min=-6, max=0, step=0.5, description="eta"),
        points=w.IntSlider(value=points, min=1, max=40, description="points"),
        x_range=w.FloatRangeSlider(value=tuple(x_range), min=-5.0, max=5.0, step=0.25, description="x range"),
        curvature=w.Dropdown(options=["kfac", "diagonal"], value=curvature, description="curvature"),
        seed=w.IntSlider(value=seed, min=0, max=50, description="task seed"),
    )


# -- chapter 5: lambda and the conjugate-gradient steps of iMAML ----------------------------------
def _linear_features(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _proximal_linear(theta, batch, lam: float):
    """Alg*(theta) per task for a linear model with the mean squared error, in closed form:
    (H + lam I)^-1 (2/n Z^T y + lam theta), H = 2/n Z^T Z, Z the inputs with a column of ones."""
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    phis = []
    for sx, sy in zip(batch.support_x, batch.support_y):
        z = _linear_features(sx)
        h = 2.0 / len(z) * z.T @ z
        phis.append(torch.linalg.solve(h + lam * eye, 2.0 / len(z) * z.T @ sy[:, 0] + lam * theta))
    return torch.stack(phis)


def _mean_squared_error(xs, ys, phis) -> float:
    return sum(((_linear_features(x) @ p - y[:, 0]) ** 2).mean().item() for x, y, p in zip(xs, ys, phis)) / len(phis)


def draw_lambda_cg(model, batch, lam: float = 2.0, cg_steps: int = 5, max_cg_steps: int = 40):
    """iMAML on proximal linear-regression tasks (``model``: a ``torch.nn.Linear`` with one output,
    ``batch``: a TaskBatch of regression tasks, e.g. :class:`mlcourse.tasks.linear.LinearRegression`).

    Left: ||Alg*(theta) - theta|| and the support and query losses at Alg*(theta) against lambda
    (the inner problem solved exactly), ``lam`` marked. Right: the relative error of the first
    task's meta-gradient (I + H/lam)^-1 grad L_test after 1..``max_cg_steps`` CG steps
    (:func:`mlcourse.implicit.conjugate_gradient`), ``cg_steps`` marked. Returns the figure.
    """
    from .implicit import conjugate_gradient
    from .utils import check_int, check_positive

    lam = check_positive("lam", lam)
    check_int("max_cg_steps", max_cg_steps, 1)
    check_int("cg_steps", cg_steps, 1, max_cg_steps, why="the CG steps drawn")
    if not isinstance(model, torch.nn.Linear) or model.out_features != 1:
        raise TypeError(f"model must be a torch.nn.Linear with one output, got {model!r}")
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    lams = torch.logspace(-2, 2, 41, dtype=torch.float64).tolist()
    distance, support, query = [], [], []
    for value in lams:
        phis = _proximal_linear(theta, batch, value)
        distance.append((phis - theta).norm(dim=1).mean().item())
        support.append(_mean_squared_error(batch.support_x, batch.support_y, phis))
        query.append(_mean_squared_error(batch.query_x, batch.query_y, phis))
    phi = _proximal_linear(theta, batch, lam)[0]
    z, zq = _linear_features(batch.support_x[0]), _linear_features(batch.query_x[0])
    h = 2.0 / len(z) * z.T @ z
    v = {"w": 2.0 / len(zq) * zq.T @ (zq @ phi - batch.query_y[0][:, 0])}
    exact = torch.linalg.solve(torch.eye(len(h), dtype=h.dtype) + h / lam, v["w"])
    steps = list(range(1, max_cg_steps + 1))
    errors = []
    for j in steps:
        g, _, _ = conjugate_gradient(lambda u: {"w": u["w"] + h @ u["w"] / lam}, v, max_iters=j, tol=1e-14,
                                     warn=False)
        errors.append(((g["w"] - exact).norm() / exact.norm()).item())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    axes[0].loglog(lams, distance, label="||Alg*(theta) - theta||")
    axes[0].loglog(lams, support, label="support loss")
    axes[0].loglog(lams, query, label="query loss")
    axes[0].axvline(lam, color="k", ls=":")
    axes[0].set_xlabel("lambda"), axes[0].legend(fontsize=MIN_FONT_SIZE)
    axes[1].semilogy(steps, errors, marker=".")
    axes[1].axvline(cg_steps, color="k", ls=":")
    axes[1].set_xlabel("CG steps"), axes[1].set_ylabel("relative meta-gradient error")
    axes[1].set_title(f"lambda = {lam:.3g}: error {errors[cg_steps - 1]:.2g} after {cg_steps} CG steps",
                      fontsize=10)
    fig.tight_layout()
    return fig


def lambda_cg_playground(model, batch, lam: float = 2.0, cg_steps: int = 5):
    """Sliders for lambda and the number of CG steps of :func:`draw_lambda_cg`."""
    import ipywidgets as w

    def show(lam, cg_steps):
        draw_lambda_cg(model, batch, lam, cg_steps)
        plt.show()

    return w.interactive(
        show,
        lam=w.FloatLogSlider(value=lam, base=10, min=-2, max=2, step=0.1, description="lambda"),
        cg_steps=w.IntSlider(value=cg_steps, min=1, max=40, description="CG steps"),
    )


# -- chapter 7: PLATIPUS's hypotheses from a few points ------------------------------------------

def draw_platipus_samples(platipus, maml=None, points: int = 3, x_range=(-1.0, 1.0), kind: str = "line",
                          samples: int = 10, seed: int = 0):
    """PLATIPUS's sampled functions (and, if given, MAML's single answer) on one sinusoid-or-line
    task seen through ``points`` noisy points in ``x_range``; each sample is coloured by the family
    that fits it best (:meth:`SinusoidOrLine.closest_kind`). Returns the figure."""
    from .algorithms import PLATIPUS
    from .tasks import SinusoidOrLine, TaskBatch
    from .tasks.ambiguous import LINE, SINUSOID
    from .utils import check_int

    if not isinstance(platipus, PLATIPUS):
        raise TypeError(f"platipus must be a trained mlcourse PLATIPUS, got {type(platipus).__name__}")
    if kind not in ("line", "sinusoid"):
        raise ValueError(f"kind={kind!r} is unknown: allowed 'line', 'sinusoid'")
    check_int("points", points, 1)
    check_int("samples", samples, 1)
    sampler = SinusoidOrLine(points, 1, support_range=tuple(x_range))
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):  # draw tasks until one of the wanted family comes up
        batch, params = sampler.sample(1, g, return_params=True)
        if params["kind"][0].item() == (LINE if kind == "line" else SINUSOID):
            break
    xs = torch.linspace(-5, 5, 101).view(1, -1, 1)
    device = next(platipus.model.parameters()).device
    task = TaskBatch(batch.support_x, batch.support_y, xs, SinusoidOrLine.function(xs, params)).to(device)
    curves = platipus.sample_predictions(task, samples).cpu()[:, 0]          # (samples, 101, 1)
    kinds = SinusoidOrLine.closest_kind(xs.expand(samples, -1, -1), curves)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for curve, k in zip(curves, kinds):
        ax.plot(xs[0, :, 0], curve[:, 0], color="C0" if k == SINUSOID else "C2", lw=0.9, alpha=0.8)
    if maml is not None:
        with torch.no_grad():
            answer = maml.predict(task).cpu()[0]
        ax.plot(xs[0, :, 0], answer[:, 0], color="C1", lw=2, label="MAML's one answer")
    ax.plot(xs[0, :, 0], task.query_y.cpu()[0, :, 0], "k--", lw=1.2, label=f"the true {kind}")
    ax.scatter(batch.support_x[0, :, 0], batch.support_y[0, :, 0], color="C3", zorder=3,
               label=f"{points} noisy points")
    ax.axvspan(*x_range, color="0.92", zorder=0)
    ax.plot([], [], color="C0", label="samples closest to a sinusoid")
    ax.plot([], [], color="C2", label="samples closest to a line")
    lines = int(kinds.sum())
    ax.set_title(f"PLATIPUS: {samples} samples, {lines} line-like and {samples - lines} sinusoid-like",
                 fontsize=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_ylim(-8, 8)
    ax.legend(fontsize=9, loc="upper left", ncol=2)
    legible(fig)
    fig.tight_layout()
    return fig


def platipus_playground(platipus, maml=None, points: int = 3, x_range=(-1.0, 1.0), kind: str = "line",
                        samples: int = 10, seed: int = 0):
    """Sliders for the number and position of the points, the task's family, the number of samples
    and the task of :func:`draw_platipus_samples`."""
    import ipywidgets as w

    def show(points, x_range, kind, samples, seed):
        draw_platipus_samples(platipus, maml, points, x_range, kind, samples, seed)
        plt.show()

    return w.interactive(
        show,
        points=w.IntSlider(value=points, min=1, max=20, description="points"),
        x_range=w.FloatRangeSlider(value=tuple(x_range), min=-5.0, max=5.0, step=0.25, description="x range"),
        kind=w.Dropdown(options=["line", "sinusoid"], value=kind, description="true family"),
        samples=w.IntSlider(value=samples, min=1, max=30, description="samples"),
        seed=w.IntSlider(value=seed, min=0, max=50, description="task seed"),
    )


def draw_multimodal_adaptation(learners: dict, modes, family: str, inner_steps: int | None = None,
                               noise: float = 0.3, shots: int = 5, seed: int = 0, ax=None):
    """One task of ``family`` seen through ``shots`` noisy points, and each learner's prediction
    after its modulation and ``inner_steps`` adaptation steps (None: each learner's own test-time
    setting). ``learners`` maps a label to an algorithm trained on the families ``modes`` (Multi-
    MAML is told the task's mode). Returns the figure."""
    from .tasks import Multimodal, TaskBatch
    from .utils import check_int

    modes = tuple(modes)
    if family not in modes:
        raise ValueError(f"family={family!r} is not one the learners were trained on: allowed {', '.join(modes)}")
    check_int("shots", shots, 1)
    sampler = Multimodal((family,), shots, 1, noise)
    batch, params = sampler.sample(1, torch.Generator().manual_seed(seed), return_params=True)
    xs = torch.linspace(-5, 5, 121).view(1, -1, 1)
    mode = torch.tensor([modes.index(family)])
    task = TaskBatch(batch.support_x, batch.support_y, xs, sampler.function(xs, params), mode=mode)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3.8))
    fig = ax.figure
    for i, (label, learner) in enumerate(learners.items()):
        device = next(learner.model.parameters()).device
        with torch.no_grad():
            curve = learner.predict(task.to(device), inner_steps=inner_steps).cpu()[0, :, 0]
        ax.plot(xs[0, :, 0], curve, color=f"C{i}", lw=1.6, label=label)
    ax.plot(xs[0, :, 0], task.query_y[0, :, 0], "k--", lw=1.2, label=f"true {family}")
    ax.scatter(batch.support_x[0, :, 0], batch.support_y[0, :, 0], color="k", zorder=3, label=f"{shots} noisy points")
    steps = "each learner's own steps" if inner_steps is None else f"{inner_steps} steps"
    ax.set_title(f"a {family} task, {len(modes)} modes in training, {steps}", fontsize=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    low, high = task.query_y.min().item(), task.query_y.max().item()
    ax.set_ylim(min(low, -1.0) - 2.0, max(high, 1.0) + 2.0)
    ax.legend(fontsize=9, loc="upper left", ncol=3)
    legible(fig)
    fig.tight_layout()
    return fig


def multimodal_playground(learners_by_modes: dict, noise: float = 0.3, inner_steps: int = 5, seed: int = 0):
    """Sliders for :func:`draw_multimodal_adaptation`: which trained set (number of modes), the
    task's family, the noise, the adaptation steps and the task. ``learners_by_modes`` maps a
    number of modes to ``(modes, {label: learner})``."""
    import ipywidgets as w

    counts = sorted(learners_by_modes)
    family = w.Dropdown(options=list(learners_by_modes[counts[0]][0]), description="family")
    number = w.Dropdown(options=counts, value=counts[0], description="modes")

    def refresh(change):  # a smaller set may not hold the chosen family
        family.options = list(learners_by_modes[change["new"]][0])

    number.observe(refresh, names="value")

    def show(num_modes, family, noise, inner_steps, seed):
        modes, learners = learners_by_modes[num_modes]
        if family in modes:
            draw_multimodal_adaptation(learners, modes, family, inner_steps, noise, seed=seed)
            plt.show()

    return w.interactive(show, num_modes=number, family=family,
                         noise=w.FloatSlider(value=noise, min=0.0, max=2.0, step=0.1, description="noise sd"),
                         inner_steps=w.IntSlider(value=inner_steps, min=0, max=20, description="steps"),
                         seed=w.IntSlider(value=seed, min=0, max=50, description="task seed"))


# -- chapter 9: MAML++'s schedules, and adaptation with learned step sizes -----------------------

def draw_maml_plus_plus_schedules(inner_steps: int = 5, msl_fraction: float = 0.1, first_order_fraction: float = 0.5,
                                  min_outer_lr_factor: float = 0.01, iterations: int = 100,
                                  iteration: int | None = None):
    """MAML++'s three schedules over ``iterations`` meta-iterations, as the package computes them
    (a :class:`~mlcourse.algorithms.MAMLPlusPlus` is asked at every iteration): the multi-step loss's
    weights v_s of each inner step (MSL), the order of the meta-gradient (DA) and the outer step size's
    factor beta_t / beta (CA). With ``iteration``, a fourth panel shows the weights at that iteration.
    Returns the figure."""
    import torch.nn.functional as F

    from .algorithms import MAMLPlusPlus
    from .nn import MLP
    from .utils import check_int

    check_int("inner_steps", inner_steps, 1)
    check_int("iterations", iterations, 1)
    if iteration is not None:
        check_int("iteration", iteration, 0)
        if iteration >= iterations:
            raise ValueError(f"iteration={iteration} is out of range: allowed 0..{iterations - 1}")
    alg = MAMLPlusPlus(MLP([1, 2, 1]), F.mse_loss, 0.1, inner_steps, per_step_bn_stats=False,
                       per_step_bn_weights=False, msl_annealing_fraction=msl_fraction,
                       first_order_fraction=first_order_fraction, min_outer_lr_factor=min_outer_lr_factor)
    its = list(range(iterations))
    weights, orders, factors = [], [], []
    for it in its:
        alg.start_iteration(it, iterations)
        weights.append(alg.step_weights())
        orders.append(1 if alg.first_order else 2)
        factors.append(alg.outer_lr_factor(it, iterations))
    fig, grid = plt.subplots(2, 2, figsize=(8, 5.5))  # a 2 x 2 grid fits a book page
    axes = list(grid.flat)
    if iteration is None:  # three panels: the fourth cell of the grid stays empty
        fig.delaxes(axes.pop())
    if inner_steps > 1:  # the earlier steps share one weight: one line for all of them
        earlier = "v_0" if inner_steps == 2 else f"v_0 ... v_{inner_steps - 2} (each)"
        axes[0].plot(its, [w[0] for w in weights], lw=1.6, color="C0", label=earlier)
    axes[0].plot(its, [w[-1] for w in weights], lw=1.6, color="C4", label=f"v_{inner_steps - 1} (last step)")
    axes[0].set_title("MSL: weight of each step's query loss", fontsize=10)
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=9, loc="center right")
    axes[1].step(its, orders, where="post", color="C3", lw=1.8)
    axes[1].set_yticks([1, 2], ["first", "second"])
    axes[1].set_ylim(0.7, 2.3)
    axes[1].set_title("DA: order of the meta-gradient", fontsize=10)
    axes[2].plot(its, factors, color="C2", lw=1.8, label="MAML++ (CA)")
    axes[2].axhline(1.0, color="0.5", ls="--", lw=1.2, label="MAML (constant)")
    axes[2].set_ylim(0, 1.08)
    axes[2].set_title("CA: outer step size / beta", fontsize=10)
    axes[2].legend(fontsize=9, loc="lower left")
    for ax in axes[:3]:
        ax.set_xlabel("meta-iteration")
        if iteration is not None:
            ax.axvline(iteration, color="k", lw=0.8, ls=":")
    if iteration is not None:
        axes[3].bar(range(inner_steps), weights[iteration], color=[f"C{s}" for s in range(inner_steps)])
        axes[3].set_xticks(range(inner_steps))
        axes[3].set_xlabel("inner step s")
        axes[3].set_ylim(0, 1.03)
        order = "first" if orders[iteration] == 1 else "second"
        axes[3].set_title(f"iteration {iteration}: v_s ({order} order, "
                          f"beta x {factors[iteration]:.2f})", fontsize=10)
    legible(fig)
    fig.tight_layout()
    return fig


def maml_plus_plus_schedule_playground(inner_steps: int = 5, msl_fraction: float = 0.1,
                                       first_order_fraction: float = 0.5, min_outer_lr_factor: float = 0.01,
                                       iterations: int = 100):
    """Sliders for :func:`draw_maml_plus_plus_schedules`: the inner steps, the three schedules' settings,
    the length of meta-training and the iteration whose weights are shown."""
    import ipywidgets as w

    def show(inner_steps, msl_fraction, first_order_fraction, min_outer_lr_factor, iterations, position):
        draw_maml_plus_plus_schedules(inner_steps, msl_fraction, first_order_fraction, min_outer_lr_factor,
                                      iterations, min(iterations - 1, int(position * iterations)))
        plt.show()

    return w.interactive(
        show,
        inner_steps=w.IntSlider(value=inner_steps, min=1, max=10, description="inner steps"),
        msl_fraction=w.FloatSlider(value=msl_fraction, min=0.0, max=1.0, step=0.05, description="MSL span"),
        first_order_fraction=w.FloatSlider(value=first_order_fraction, min=0.0, max=1.0, step=0.05,
                                           description="DA first-order"),
        min_outer_lr_factor=w.FloatSlider(value=min_outer_lr_factor, min=0.0, max=1.0, step=0.01,
                                          description="CA floor"),
        iterations=w.IntSlider(value=iterations, min=10, max=1000, step=10, description="iterations"),
        position=w.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.01, description="at (fraction)"),
    )


class _ScaledStepSizes:
    """Within the block, every inner step size of ``algorithm`` is multiplied by ``scale``: MAML's
    ``inner_lr``, MAML++'s LSLR rates or Meta-SGD's alpha (restored on exit)."""

    def __init__(self, algorithm, scale: float):
        self.algorithm, self.scale = algorithm, float(scale)

    def __enter__(self):
        alg = self.algorithm
        self.saved = [(p, p.detach().clone()) for p in self._tensors()]
        with torch.no_grad():
            for p, _ in self.saved:
                p.mul_(self.scale)
        self.inner_lr = None
        if not self.saved:
            self.inner_lr = alg.inner_lr
            alg.inner_lr = self.inner_lr * self.scale
        return alg

    def __exit__(self, *exc):
        with torch.no_grad():
            for p, value in self.saved:
                p.copy_(value)
        if self.inner_lr is not None:
            self.algorithm.inner_lr = self.inner_lr
        return False

    def _tensors(self):
        alg = self.algorithm
        if isinstance(getattr(alg, "alpha", None), dict):  # Meta-SGD
            return list(alg.alpha.values())
        return list(getattr(alg, "inner_lrs", {}).values())  # MAML++ with LSLR (empty otherwise)


def adaptation_by_step(learners: dict, batch, max_steps: int = 10, lr_scale: float = 1.0) -> dict:
    """``{label: [mean query accuracy after 0, 1, ..., max_steps inner steps]}`` on ``batch`` (a
    TaskBatch), each learner adapting with its own inner step sizes multiplied by ``lr_scale``."""
    from .train import score_batch
    from .utils import check_int

    check_int("max_steps", max_steps, 0)
    if not lr_scale >= 0:
        raise ValueError(f"lr_scale={lr_scale!r} is out of range: allowed a number >= 0")
    curves = {}
    for label, learner in learners.items():
        device = next(learner.model.parameters()).device
        tasks = batch.to(device)
        with _ScaledStepSizes(learner, lr_scale):
            curves[label] = [score_batch(learner, tasks, inner_steps=k)[1].mean().item()
                             for k in range(max_steps + 1)]
    return curves


def draw_adaptation_by_step(learners: dict, batch, max_steps: int = 10, lr_scale: float = 1.0,
                            trained_steps: int | None = None, ax=None):
    """The query accuracy after 0..``max_steps`` inner steps of each learner on the tasks of ``batch``,
    their inner step sizes scaled by ``lr_scale`` (:func:`adaptation_by_step`); a dotted line marks
    ``trained_steps``, the steps of meta-training. Returns the figure."""
    curves = adaptation_by_step(learners, batch, max_steps, lr_scale)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 3.8))
    fig = ax.figure
    ways = int(batch.query_y.max()) + 1
    for i, (label, accuracy) in enumerate(curves.items()):
        ax.plot(range(max_steps + 1), [100 * a for a in accuracy], marker="o", ms=4, color=f"C{i}", label=label)
    ax.axhline(100 / ways, color="0.5", ls="--", lw=1.0, label=f"chance ({100 / ways:.0f}%)")
    if trained_steps is not None:
        ax.axvline(trained_steps, color="k", ls=":", lw=1.0, label=f"steps in meta-training ({trained_steps})")
    ax.set_xlabel("inner steps at test time")
    ax.set_ylabel("query accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{batch.num_tasks} test tasks, {ways}-way; step sizes x {lr_scale:g}", fontsize=10)
    ax.legend(fontsize=9, loc="upper left", ncol=2)
    legible(fig)
    fig.tight_layout()
    return fig


def adaptation_playground(learners: dict, batch, max_steps: int = 10, lr_scale: float = 1.0,
                          trained_steps: int | None = None):
    """Sliders for :func:`draw_adaptation_by_step`: the number of test-time steps and the factor on
    every learner's inner step sizes."""
    import ipywidgets as w

    def show(max_steps, lr_scale):
        draw_adaptation_by_step(learners, batch, max_steps, lr_scale, trained_steps)
        plt.show()

    return w.interactive(
        show,
        max_steps=w.IntSlider(value=max_steps, min=0, max=20, description="max steps"),
        lr_scale=w.FloatLogSlider(value=lr_scale, base=10, min=-1, max=1, step=0.1, description="step x"),
    )
