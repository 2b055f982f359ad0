"""The playgrounds' fast paths (precomputed so that a slider redraws in under a second) draw what
the package's reference functions compute."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mlcourse import widgets  # noqa: E402
from mlcourse.analysis import evidence, manifolds  # noqa: E402


@pytest.mark.parametrize("k", [1, 8, 60])
def test_reptile_line_path_equals_the_reference_path(k):
    lines = manifolds.line_tasks([[0.4, 0.0], [1.0, 1.0], [-0.9, 1.6]], [1.0, 2.0, 1.5])
    fast = widgets.reptile_line_path(lines, k, 0.25, iterations=150)
    slow = manifolds.reptile_path(lines, k, 0.25, iterations=150)
    assert (fast - slow).abs().max().item() < 1e-9


@pytest.mark.parametrize("k, step", [(1, 0.05), (3, 0.5), (12, 0.5), (40, 0.95)])
def test_early_stopping_figure_marks_the_kth_gradient_descent_iterate(k, step):
    H = torch.tensor([[3.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
    phi_star = torch.tensor([1.0, 1.5], dtype=torch.float64)
    theta = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    b = step / torch.linalg.eigvalsh(H).max().item()
    fig = widgets.draw_early_stopping(H, phi_star, theta, k, step)
    drawn = torch.tensor(fig.axes[0].lines[-2].get_xydata()[0], dtype=torch.float64)
    plt.close(fig)
    # the MAP point of the early-stopping prior is the k-th iterate (chapter 4's result), even
    # where the matrix form of the prior's covariance is too ill-conditioned to solve with
    assert (drawn - evidence.gradient_descent_iterate(H, phi_star, theta, k, b)).abs().max() < 1e-9
