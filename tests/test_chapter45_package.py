"""What chapters 4 and 5 now take from the package: the linear-regression task sampler (the same
draws as the chapter's former ``linear_tasks``, bit for bit, and clear errors on bad input), the
sinusoid posterior helpers of mlcourse.plots, and the widgets' draw functions (static twins),
run on tiny inputs with the Agg backend."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from mlcourse import plots, widgets  # noqa: E402
from mlcourse.algorithms.llama import LLAMA  # noqa: E402
from mlcourse.algorithms.maml import MAML  # noqa: E402
from mlcourse.nn import MLP  # noqa: E402
from mlcourse.tasks import Sinusoid, TaskBatch  # noqa: E402
from mlcourse.tasks.linear import LinearRegression  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# LinearRegression against a copy of chapter 5's former sampler

def old_linear_tasks(tasks, dim, shots, queries, seed=0, scales=None):
    """Chapter 5's ``linear_tasks`` as it was in the notebook, kept verbatim as the reference."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.ones(dim, dtype=torch.float64) if scales is None else scales
    w = torch.randn(tasks, dim, 1, generator=g, dtype=torch.float64)
    sx = torch.randn(tasks, shots, dim, generator=g, dtype=torch.float64) * scales
    qx = torch.randn(tasks, queries, dim, generator=g, dtype=torch.float64) * scales
    noise = lambda n: 0.1 * torch.randn(tasks, n, 1, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(sx, sx @ w + noise(shots), qx, qx @ w + noise(queries))


def assert_identical(a: TaskBatch, b: TaskBatch):
    for name, x, y in zip(("support_x", "support_y", "query_x", "query_y"), a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), f"{name} differs"


@pytest.mark.parametrize("tasks, dim, shots, queries, seed, scaled", [
    (4, 5, 8, 10, 0, False),     # section 5.4's exact check
    (4, 20, 40, 40, 1, True),    # section 5.5 (Figure 2a), badly scaled features
    (1, 1, 1, 1, 7, False),
    (3, 20, 10, 40, 1, True),    # the exercise's 10 support points
])
def test_linear_regression_equals_the_former_linear_tasks(tasks, dim, shots, queries, seed, scaled):
    scales = torch.logspace(-1, 0.5, dim, dtype=torch.float64) if scaled else None
    expected = old_linear_tasks(tasks, dim, shots, queries, seed=seed, scales=scales)
    sampler = LinearRegression(dim, shots, queries, scales=scales)
    assert_identical(sampler.sample(tasks, torch.Generator().manual_seed(seed)), expected)


def test_linear_regression_consecutive_samples_continue_the_generator():
    sampler = LinearRegression(3, 4, 5)
    gen = torch.Generator().manual_seed(2)
    first, second = sampler.sample(2, gen), sampler.sample(2, gen)
    assert not torch.equal(first.support_x, second.support_x)
    again = torch.Generator().manual_seed(2)
    assert_identical(sampler.sample(2, again), first)
    assert_identical(sampler.sample(2, again), second)


def test_linear_regression_labels_follow_the_returned_weights():
    sampler = LinearRegression(4, 6, 7, noise=0.0)
    batch, w = sampler.sample(3, torch.Generator().manual_seed(0), return_params=True)
    assert w.shape == (3, 4, 1)
    assert torch.equal(batch.support_y, batch.support_x @ w)
    assert torch.equal(batch.query_y, batch.query_x @ w)
    assert batch.support_x.shape == (3, 6, 4) and batch.query_y.shape == (3, 7, 1)


def test_linear_regression_float32_and_list_scales():
    sampler = LinearRegression(2, 3, 3, scales=[1.0, 10.0], dtype=torch.float32)
    batch = sampler.sample(2, torch.Generator().manual_seed(0))
    assert all(t.dtype == torch.float32 for t in batch)
    assert sampler.scales.tolist() == [1.0, 10.0]


@pytest.mark.parametrize("kwargs, words", [
    (dict(dim=0, shots=2, queries=2), ["dim=0", ">= 1"]),
    (dict(dim=3, shots=0, queries=2), ["shots=0", ">= 1"]),
    (dict(dim=3, shots=2, queries=-1), ["queries=-1", ">= 1"]),
    (dict(dim=3, shots=2, queries=2, noise=-0.1), ["noise=-0.1", ">= 0"]),
    (dict(dim=3, shots=2, queries=2, noise=float("nan")), ["noise=nan", "finite"]),
    (dict(dim=3, shots=2, queries=2, scales=torch.ones(2)), ["scales", "(3,)", "dim=3"]),
    (dict(dim=2, shots=2, queries=2, scales=[1.0, 0.0]), ["scales=[1.0, 0.0]", "> 0"]),
    (dict(dim=2, shots=2, queries=2, dtype=torch.int64), ["dtype=torch.int64", "floating-point"]),
])
def test_linear_regression_rejects_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        LinearRegression(**kwargs)
    message = str(err.value)
    for word in words:
        assert word in message, (word, message)
    assert "allowed" in message


def test_linear_regression_rejects_bad_types_and_meta_batch():
    with pytest.raises(TypeError, match="dim must be an integer"):
        LinearRegression(2.0, 3, 3)
    with pytest.raises(TypeError, match="noise must be a number"):
        LinearRegression(2, 3, 3, noise="0.1")
    with pytest.raises(ValueError, match=r"meta_batch=0 is out of range: allowed >= 1"):
        LinearRegression(2, 3, 3).sample(0)


# ---------------------------------------------------------------------------------------------
# mlcourse.plots: the sinusoid posterior helpers of chapter 4

def test_sinusoid_task_is_seeded_and_stays_in_its_range():
    x, y, amplitude, phase = plots.sinusoid_task(11, shots=5, x_range=(-5.0, -2.0))
    again = plots.sinusoid_task(11, shots=5, x_range=(-5.0, -2.0))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert x.shape == (5, 1) and y.shape == (5, 1)
    assert ((x >= -5.0) & (x <= -2.0)).all()
    assert torch.allclose(y, Sinusoid.function(x[None], amplitude, phase)[0])
    with pytest.raises(ValueError, match="x_range"):
        plots.sinusoid_task(0, x_range=(1.0, -1.0))


def tiny_llama_and_maml():
    torch.manual_seed(0)
    llama = LLAMA(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01, inner_steps=1, prior_precision=300.0, eta=1e-3,
                  noise_variance=0.01)
    maml = MAML(MLP([1, 8, 1]), F.mse_loss, inner_lr=0.01, inner_steps=1)
    return llama, maml


def test_sinusoid_posterior_draws_samples_for_llama_and_one_curve_for_maml():
    llama, maml = tiny_llama_and_maml()
    x, y, amplitude, phase = plots.sinusoid_task(3, shots=4)
    ax = plots.sinusoid_posterior(llama, x, y, amplitude, phase, samples=5, steps=2)
    assert len(ax.lines) == 1 + 5  # the truth and five samples
    ax = plots.sinusoid_posterior(maml, x, y, amplitude, phase, steps=2)
    assert len(ax.lines) == 2


# ---------------------------------------------------------------------------------------------
# mlcourse.widgets: chapter 4

H2 = torch.tensor([[3.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
STAR2 = torch.tensor([1.0, 1.5], dtype=torch.float64)
THETA2 = torch.tensor([-1.5, -1.0], dtype=torch.float64)


def test_draw_early_stopping_returns_a_figure():
    fig = widgets.draw_early_stopping(H2, STAR2, THETA2, k=2, step=0.5)
    assert isinstance(fig, Figure)
    fig, axes = plt.subplots(1, 2)
    assert widgets.draw_early_stopping(H2, STAR2, THETA2, 4, 0.3, ax=axes[1]) is fig
    assert axes[1].get_title() == "k=4, b=0.3/lambda_max"


@pytest.mark.parametrize("kwargs, match", [(dict(k=0), "k=0"), (dict(step=1.0), "step=1.0"),
                                           (dict(step=0.0), "step=0.0")])
def test_draw_early_stopping_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        widgets.draw_early_stopping(H2, STAR2, THETA2, **kwargs)


def test_draw_llama_posterior_returns_a_figure_and_prints_the_objective(capsys):
    llama, maml = tiny_llama_and_maml()
    fig = widgets.draw_llama_posterior(llama, maml, tau=100.0, eta=1e-2, points=3, x_range=(-1.0, 1.0),
                                       curvature="diagonal", seed=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    out = capsys.readouterr().out
    assert out.startswith("query loss ") and "eta * log det" in out
    # the trained algorithm is shared but its settings are left alone
    assert (llama.prior_precision, llama.eta, llama.curvature) == (300.0, 1e-3, "kfac")


def test_draw_llama_posterior_rejects_bad_settings():
    llama, maml = tiny_llama_and_maml()
    with pytest.raises(ValueError, match="curvature='exact'"):
        widgets.draw_llama_posterior(llama, maml, curvature="exact")
    with pytest.raises(ValueError, match="tau=0"):
        widgets.draw_llama_posterior(llama, maml, tau=0)
    with pytest.raises(TypeError, match="LLAMA"):
        widgets.draw_llama_posterior(maml, maml)


# ---------------------------------------------------------------------------------------------
# mlcourse.widgets: chapter 5

def tiny_linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    batch = LinearRegression(3, 6, 5).sample(2, torch.Generator().manual_seed(0))
    return model, batch


def test_draw_lambda_cg_returns_a_figure():
    model, batch = tiny_linear_problem()
    fig = widgets.draw_lambda_cg(model, batch, lam=1.0, cg_steps=2, max_cg_steps=6)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "after 2 CG steps" in fig.axes[1].get_title()


def test_draw_lambda_cg_solves_the_proximal_problem():
    """At a huge lambda Alg*(theta) stays at theta; at a tiny one it fits the support set."""
    model, batch = tiny_linear_problem()
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    near = widgets._proximal_linear(theta, batch, 1e8)
    assert torch.allclose(near, theta.expand_as(near), atol=1e-6)
    far = widgets._proximal_linear(theta, batch, 1e-10)
    z = torch.cat([batch.support_x[0], torch.ones(6, 1, dtype=torch.float64)], 1)
    least_squares = torch.linalg.lstsq(z, batch.support_y[0]).solution[:, 0]
    assert torch.allclose(far[0], least_squares, atol=1e-6)


def test_draw_lambda_cg_rejects_bad_settings():
    model, batch = tiny_linear_problem()
    with pytest.raises(ValueError, match="cg_steps=41 is out of range"):
        widgets.draw_lambda_cg(model, batch, cg_steps=41)
    with pytest.raises(ValueError, match="lam=-1"):
        widgets.draw_lambda_cg(model, batch, lam=-1)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        widgets.draw_lambda_cg(MLP([3, 1]), batch)


# ---------------------------------------------------------------------------------------------
# The playgrounds themselves (when ipywidgets is installed)

def test_playgrounds_build_their_sliders():
    pytest.importorskip("ipywidgets")
    llama, maml = tiny_llama_and_maml()
    model, batch = tiny_linear_problem()
    playgrounds = {
        "early stopping": (widgets.early_stopping_playground(H2, STAR2, THETA2, k=2), {"k", "step"}),
        "llama": (widgets.llama_playground(llama, maml, points=3),
                  {"tau", "eta", "points", "x_range", "curvature", "seed"}),
        "lambda/cg": (widgets.lambda_cg_playground(model, batch, lam=1.0, cg_steps=3), {"lam", "cg_steps"}),
    }
    for name, (playground, sliders) in playgrounds.items():
        assert {child.description for child in playground.children[:-1]}, name
        assert set(playground.kwargs) == sliders, name
