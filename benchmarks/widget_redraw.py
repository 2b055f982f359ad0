"""How long each playground of ``mlcourse.widgets`` takes to redraw when a slider moves.

The aim (a reader on a CPU moves a slider and sees the new figure): every redraw under a second.
The script builds the inputs that chapters 1-5 pass to each playground (the same algorithm
classes, networks, tasks and recipe rows; the sinusoid learners are trained briefly at the
``smoke`` budget, which changes no cost of a redraw), then calls the playground's ``draw_*``
function for several slider settings. A redraw is timed as the widget does it: the draw function,
then rendering the figure to PNG at the book's resolution (what the inline backend sends to the
browser). One untimed call at the playground's start values comes first (what the cell draws when
it runs); the slider settings are timed after it. Figures are closed after each call.

Run from the repository root, on one thread as the chapters are run on small CPUs::

    OMP_NUM_THREADS=1 MLCOURSE_DATA=... python benchmarks/widget_redraw.py

It prints a Markdown table: widget, the slider settings tried, median and max seconds per redraw,
and OK or SLOW against one second. It is a script, not a test: timings depend on the machine.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mlcourse import recipes, widgets  # noqa: E402
from mlcourse.algorithms import FromScratch, Pretrained  # noqa: E402
from mlcourse.analysis import evidence, manifolds, taylor  # noqa: E402
from mlcourse.functional import forward, params_of  # noqa: E402
from mlcourse.nn import MLP  # noqa: E402
from mlcourse.notebook import FIGURE_DPI  # noqa: E402
from mlcourse.tasks import LinearRegression  # noqa: E402

LIMIT_S = 1.0  # a redraw slower than this is reported SLOW


def _render(fig) -> None:
    """What the inline backend does after a redraw: the figure as a PNG at the book's dpi."""
    fig.savefig(io.BytesIO(), format="png", dpi=FIGURE_DPI)


def _time_redraw(draw, kwargs) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # draw_llama_posterior prints its terms
        out = draw(**kwargs)
    fig = out if isinstance(out, matplotlib.figure.Figure) else plt.gcf()
    _render(fig)
    seconds = time.perf_counter() - start
    plt.close("all")
    return seconds


# -- the inputs of each chapter's playground --------------------------------------------------
def _brief(method: str) -> dict:
    """A sinusoid recipe row trained briefly (the chapters train it at their budget)."""
    return recipes.run(method, "sinusoid", None, 10, "smoke", progress=False, iterations=20,
                       eval_tasks=10)


def chapter1_models() -> dict:
    """Chapter 1: joint training (fine-tuned 10 steps) and a network trained from scratch."""
    pretrained = Pretrained(MLP([1, 40, 40, 1]), F.mse_loss, inner_lr=0.01, inner_steps=10)
    from_scratch = FromScratch(MLP([1, 40, 40, 1]), F.mse_loss, inner_lr=0.01)
    return {"joint training": pretrained, "from scratch": from_scratch}


def chapter2_models() -> dict:
    """Chapter 2: the MAML and pretrained sinusoid rows of the recipe table."""
    return {"MAML": _brief("maml")["algorithm"], "pretrained": _brief("pretrained")["algorithm"]}


def chapter3_taylor():
    """Chapter 3, section 3.3: a 1-16-1 tanh network in float64 and three sinusoid tasks of
    four mini-batches of five points."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 1)).double()
    theta0 = {n: p.detach() for n, p in params_of(net).items()}

    def minibatch_loss(params, minibatch):
        x, y = minibatch
        return F.mse_loss(forward(net, params, x), y)

    g = torch.Generator().manual_seed(0)
    tasks = []
    for amplitude, phase in [(1.0, 0.5), (3.0, 2.0), (4.5, 1.2)]:
        xs = [torch.rand(5, 1, generator=g, dtype=torch.float64) * 10 - 5 for _ in range(4)]
        tasks.append([(x, amplitude * torch.sin(x - phase)) for x in xs])
    return minibatch_loss, theta0, tasks


def chapter3_lines():
    """Chapter 3, section 3.4: three lines in the plane."""
    return manifolds.line_tasks([[0.4, 0.0], [1.0, 1.0], [-0.9, 1.6]], [1.0, 2.0, 1.5])


def chapter4_quadratic():
    """Chapter 4, section 4.2: the 2-D quadratic of the early-stopping picture."""
    H2 = torch.tensor([[3.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
    star2 = torch.tensor([1.0, 1.5], dtype=torch.float64)
    theta2 = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    return H2, star2, theta2


def chapter4_learners():
    """Chapter 4, section 4.5: the LLAMA and MAML sinusoid rows of the recipe table."""
    return _brief("llama")["algorithm"], _brief("maml")["algorithm"]


def chapter5_linear():
    """Chapter 5, section 5.5: badly scaled linear regression (20 features, 4 tasks)."""
    dim = 20
    scales = torch.logspace(-1, 0.5, dim, dtype=torch.float64)
    batch = LinearRegression(dim, shots=40, queries=40, scales=scales).sample(
        4, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    model = torch.nn.Linear(dim, 1).double()
    return model, batch


# -- the slider settings --------------------------------------------------------------------------
def cases():
    """(widget, draw function, start kwargs, [(label, kwargs), ...]) for every playground."""
    out = []
    for chapter, models in (("ch1", chapter1_models()), ("ch2", chapter2_models())):
        start = dict(algorithms=models, inner_lr=0.01, inner_steps=10, shots=10, seed=0)
        tried = [("alpha=0.001, k=0, K=1", dict(inner_lr=0.001, inner_steps=0, shots=1)),
                 ("alpha=0.01, k=10, K=10", dict(inner_lr=0.01, inner_steps=10, shots=10)),
                 ("alpha=0.1, k=20, K=20, seed 5", dict(inner_lr=0.1, inner_steps=20, shots=20,
                                                         seed=5)),
                 ("alpha=0.3, k=40, K=40, seed 20", dict(inner_lr=0.3, inner_steps=40, shots=40,
                                                          seed=20))]
        out.append((f"sinusoid_playground ({chapter})", widgets.draw_sinusoid_adaptation, start,
                    [(label, {**start, **kw}) for label, kw in tried]))

    lines = chapter3_lines()
    start = dict(tasks=lines, inner_steps=1)
    out.append(("manifolds_playground (ch3)", widgets.draw_manifolds, start,
                [(f"k={k}", dict(tasks=lines, inner_steps=k)) for k in (1, 8, 30, 60)]))

    loss_of, theta0, tasks = chapter3_taylor()
    terms = taylor.avg_grad_terms(loss_of, theta0, tasks)  # as taylor_playground does, once
    start = dict(loss_of=loss_of, theta=theta0, tasks=tasks, inner_lr=0.01, k=2, terms=terms)
    tried = [(f"alpha={a:.3g}, k={k}", {**start, "inner_lr": a, "k": k})
             for a, k in itertools.product((10 ** -3.5, 0.05, 10 ** -0.5), (1, 2, 3, 4))]
    out.append(("taylor_playground (ch3)", widgets.draw_taylor_error, start, tried))

    H2, star2, theta2 = chapter4_quadratic()
    start = dict(H=H2, phi_star=star2, theta=theta2, k=3, step=0.5)
    tried = [(f"k={k}, b={s:g}", {**start, "k": k, "step": s})
             for k, s in ((1, 0.05), (3, 0.5), (12, 0.5), (40, 0.95))]
    out.append(("early_stopping_playground (ch4)", widgets.draw_early_stopping, start, tried))

    llama, maml = chapter4_learners()
    start = dict(llama=llama, maml=maml)
    tried = [("defaults (tau=300, eta=1e-3, 10 points)", {}),
             ("tau=1, eta=1", dict(tau=1.0, eta=1.0)),
             ("tau=1e4, 40 points", dict(tau=1e4, points=40)),
             ("4 points in [-1, 1]", dict(points=4, x_range=(-1.0, 1.0))),
             ("diagonal curvature, 40 points", dict(curvature="diagonal", points=40)),
             ("1 point, task seed 50", dict(points=1, seed=50))]
    out.append(("llama_playground (ch4)", widgets.draw_llama_posterior, start,
                [(label, {**start, **kw}) for label, kw in tried]))

    model, batch = chapter5_linear()
    start = dict(model=model, batch=batch, lam=2.0, cg_steps=5)
    tried = [(f"lambda={lam:g}, CG steps={cg}", {**start, "lam": lam, "cg_steps": cg})
             for lam, cg in ((0.01, 1), (2.0, 5), (10.0, 20), (100.0, 40))]
    out.append(("lambda_cg_playground (ch5)", widgets.draw_lambda_cg, start, tried))
    return out


def check_precomputed() -> None:
    """The fast paths of the playgrounds draw what the package's reference functions compute."""
    lines = chapter3_lines()
    for k in (1, 8, 60):
        fast = widgets.reptile_line_path(lines, k, 0.25, iterations=150)
        slow = manifolds.reptile_path(lines, k, 0.25, iterations=150)
        gap = (fast - slow).abs().max().item()
        print(f"  Reptile path on the lines, k={k}: largest gap to manifolds.reptile_path "
              f"{gap:.1e}", file=sys.stderr)
        assert gap < 1e-9, (k, gap)
    H2, star2, theta2 = chapter4_quadratic()
    lam_max = torch.linalg.eigvalsh(H2).max().item()
    for k, step in ((1, 0.05), (3, 0.5), (12, 0.5), (20, 0.8), (40, 0.95)):
        b = step / lam_max
        fig = widgets.draw_early_stopping(H2, star2, theta2, k, step)
        drawn = torch.tensor(fig.axes[0].lines[-2].get_xydata()[0], dtype=torch.float64)
        iterate = evidence.gradient_descent_iterate(H2, star2, theta2, k, b)
        to_iterate = (drawn - iterate).abs().max().item()
        try:
            Q = evidence.early_stopping_prior_covariance(H2, k, b)
            to_matrix = (drawn - evidence.map_estimate(H2, star2, theta2, Q)).abs().max().item()
        except RuntimeError as error:  # torch.linalg.solve: a singular matrix
            to_matrix = f"fails ({type(error).__name__})"
        else:
            if k <= 12:  # where the matrix forms are well conditioned they must agree
                assert to_matrix < 1e-9, (k, step, to_matrix)
            to_matrix = f"{to_matrix:.1e}"
        print(f"  early stopping k={k}, b={step}/lambda_max: drawn MAP vs k-th iterate "
              f"{to_iterate:.1e}, vs evidence.map_estimate (matrix form) {to_matrix}",
              file=sys.stderr)
        assert to_iterate < 1e-9, (k, step, to_iterate)
        plt.close("all")


def main() -> int:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; a redraw = draw_* "
          f"+ PNG at {FIGURE_DPI} dpi; limit {LIMIT_S:g} s\n", file=sys.stderr)
    check_precomputed()
    rows, slow = [], 0
    for widget, draw, start, tried in cases():
        _time_redraw(draw, start)  # the cell's own first drawing, not a slider move
        seconds = [_time_redraw(draw, kwargs) for _, kwargs in tried]
        median, worst = statistics.median(seconds), max(seconds)
        verdict = "OK" if worst < LIMIT_S else "SLOW"
        slow += verdict == "SLOW"
        rows.append((widget, "; ".join(label for label, _ in tried), median, worst, verdict))
        print(f"  {widget}: median {median:.3f} s, max {worst:.3f} s", file=sys.stderr)
    print("| widget | slider values tried | median s / redraw | max s / redraw | < 1 s |")
    print("|---|---|---:|---:|---|")
    for widget, tried, median, worst, verdict in rows:
        print(f"| {widget} | {tried} | {median:.3f} | {worst:.3f} | {verdict} |")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
