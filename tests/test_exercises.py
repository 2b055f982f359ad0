"""The graded exercises: every check passes its reference solution and explains planted mistakes;
the references agree with the package's algorithms; notebooks are graded from their exercise cells
only; student copies lose their solutions; the stored notebook cells match the registry."""
import inspect
import json
import math
from itertools import permutations
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms import MAML, Reptile
from mlcourse.exercises import ALL, ch1, ch2, ch3, ch4, ch5, exercises_for
from mlcourse.exercises.checking import random_spd
from mlcourse.exercises.cells import HEADING, NOTEBOOKS, chapter_cells, solution_source, stub_source
from mlcourse.functional import forward, params_of
from mlcourse.grading import chapter_of, format_report, grade_notebook, main, strip_solutions
from mlcourse.implicit import conjugate_gradient, hvp
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid, TaskBatch

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"math": math, "torch": torch, "F": F}  # names every chapter's setup cell defines
CELLS = ROOT / "notebooks" / "_exercise_cells"


def _labels(ways, shots, queries):
    return ch1.episode_labels_solution(ways, shots, queries)


def _cg_few_iterations(support_loss, query_loss, phi, lam, cg_iters):
    phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
    v = dict(zip(phi, torch.autograd.grad(query_loss(phi), list(phi.values()))))

    def matvec(u):
        hu = hvp(support_loss, phi, u)
        return {k: u[k] + hu[k] / lam for k in u}

    return conjugate_gradient(matvec, v, max_iters=2, warn=False)[0]


def _swapped_coefficients(algorithm, avg_grad, avg_grad_inner, inner_lr, k):
    other = {"maml": "fomaml", "fomaml": "maml", "reptile": "reptile"}[algorithm]
    return ch3.predicted_gradient_solution(other, avg_grad, avg_grad_inner, inner_lr, k)


def _negate(fn, part=None):
    def wrong(*args):
        out = fn(*args)
        if isinstance(out, dict):
            return {k: -v for k, v in out.items()}
        if isinstance(out, tuple):
            return tuple(-v if i == part else v for i, v in enumerate(out))
        return -out
    return wrong


def _inplace_step(params, grads, inner_lr):
    for name in params:
        params[name] -= inner_lr * grads[name]
    return params


def _steepest(A, x, r, p):
    alpha = (r @ r) / (p @ A @ p)
    r_new = r - alpha * (A @ p)
    return x + alpha * p, r_new, r_new


def _residual_sign_flipped(A, x, r, p):
    alpha = (r @ r) / (p @ A @ p)
    r_new = r + alpha * (A @ p)
    return x + alpha * p, r_new, r_new + (r_new @ r_new) / (r @ r) * p


def _second_order(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    """MAML's gradient, differentiating through the inner steps: not what FOMAML asks for."""
    theta = {k: v.detach().requires_grad_() for k, v in params.items()}
    phi = theta
    for _ in range(inner_steps):
        grads = torch.autograd.grad(F.mse_loss(forward(model, phi, sx), sy), list(phi.values()),
                                    create_graph=True)
        phi = {k: v - inner_lr * g for (k, v), g in zip(phi.items(), grads)}
    loss = F.mse_loss(forward(model, phi, qx), qy)
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))


# id -> [(a wrong answer, a phrase its diagnosis must contain)]
PLANTED = {
    "1.1": [(lambda w, s, q: (torch.arange(w).repeat(s), torch.arange(w).repeat(q)),
             "cycle through the classes"),
            (lambda w, s, q: tuple(t.float() for t in _labels(w, s, q)), "wrong dtype"),
            (lambda w, s, q: _labels(w, q, s), "wrong shape")],
    "1.2": [(lambda s: (s.mean().item(), 1.96 * s.std(unbiased=False).item() / math.sqrt(len(s))),
             "biased standard deviation"),
            (lambda s: (s.mean().item(), 2 * 1.96 * s.std().item() / math.sqrt(len(s))), "full width")],
    "1.3": [(lambda x, a, b: a.view(-1, 1, 1) * torch.sin(x + b.view(-1, 1, 1)), "wrong sign"),
            (lambda x, a, b: a * torch.sin(x - b), "wrong shape")],
    "2.1": [(lambda p, g, a: {k: p[k] + a * g[k] for k in p}, "stepped up the gradient"),
            (_inplace_step, "in place")],
    "2.2": [(lambda w, sx, sy, qx, qy, a: 2 / len(qx) * qx.T @ (
        qx @ (w - a * 2 / len(sx) * sx.T @ (sx @ w - sy)) - qy), "first-order (FOMAML)"),
            (_negate(ch2.maml_meta_gradient_linear_solution), "sign error"),
            (lambda *args: ch2.maml_meta_gradient_linear_solution(*args)[:, None], "wrong shape")],
    "2.3": [(lambda m, p, sx, sy, qx, qy, a, k: ch2.fomaml_gradient_solution(m, p, sx, sy, qx, qy, a, 0),
             "without adapting"),
            (_negate(ch2.fomaml_gradient_solution), "sign error"),
            (_second_order, "full second-order MAML gradient")],
    "3.1": [(lambda t, ws, e: {k: t[k] + e * sum(w[k] - t[k] for w in ws) for k in t}, "summed"),
            (lambda t, ws, e: {k: t[k] - e * (sum(w[k] for w in ws) / len(ws) - t[k]) for k in t},
             "away from the adapted weights")],
    "3.2": [(lambda A, b, t: ((A @ t + b).mean(0), A.mean(0) @ (A @ t + b).mean(0)), "pairs i = j"),
            (_negate(ch3.avg_grad_terms_quadratic_solution, part=1), "sign error")],
    "3.3": [(_swapped_coefficients, "wrong coefficients")],
    "4.1": [(lambda H, k, b: torch.linalg.inv(ch4.early_stopping_prior_covariance_solution(H, k, b)),
             "prior precision"),
            (lambda H, k, b: 2 * ch4.early_stopping_prior_covariance_solution(H, k, b), "constant factor")],
    "4.2": [(lambda H, ps, t, Q: ch4.map_estimate_solution(H, t, ps, Q), "swapped")],
    "4.3": [(lambda f, H: f + H.shape[0] / 2 * math.log(2 * math.pi) + torch.logdet(H).item() / 2,
             "wrong sign"),
            (lambda f, H: f - torch.logdet(H).item() / 2, "is missing")],
    "5.1": [(_steepest, "steepest descent"),
            (_residual_sign_flipped, "residual update has the wrong sign")],
    "5.2": [(lambda H, v, lam: v, "first order"),
            (lambda H, v, lam: torch.linalg.solve(torch.eye(len(v), dtype=H.dtype) + lam * H, v),
             "wrong side")],
    "5.3": [(lambda sl, ql, phi, lam, it: _cg_few_iterations(sl, ql, phi, lam, it), "not yet converged")],
}


from test_chapter6 import PLANTED as _CHAPTER6_PLANTED  # noqa: E402
from test_chapter7 import PLANTED as _CHAPTER7_PLANTED  # noqa: E402
from test_chapter8 import PLANTED as _CHAPTER8_PLANTED  # noqa: E402
from test_chapter9 import PLANTED as _CHAPTER9_PLANTED  # noqa: E402
from test_chapter10 import PLANTED as _CHAPTER10_PLANTED  # noqa: E402
from test_chapter11 import PLANTED as _CHAPTER11_PLANTED  # noqa: E402

PLANTED.update(_CHAPTER6_PLANTED)
PLANTED.update(_CHAPTER7_PLANTED)
PLANTED.update(_CHAPTER8_PLANTED)
PLANTED.update(_CHAPTER9_PLANTED)
PLANTED.update(_CHAPTER10_PLANTED)
PLANTED.update(_CHAPTER11_PLANTED)


def test_registry_is_complete():
    assert len(ALL) >= 10
    for chapter in range(1, 6):
        assert len(exercises_for(chapter)) >= 2
    for ex_id, ex in ALL.items():
        assert ex.id == ex_id and ex.chapter in NOTEBOOKS and ex.points >= 1
        assert ex.check.__name__ == f"check_{ex.function_name}"
        assert ex.solution.__name__ == f"{ex.function_name}_solution"
        module = inspect.getmodule(ex.solution)
        assert getattr(module, ex.check.__name__) is ex.check
    assert set(PLANTED) == set(ALL)


@pytest.mark.parametrize("ex_id", list(ALL))
def test_check_passes_the_reference_solution(ex_id, capsys):
    ex = ALL[ex_id]
    result = ex.check(ex.solution)
    assert result.passed and result.exercise == ex_id, result.message
    assert result.score == ex.points and result.status == "correct"
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("[PASS] Exercise " + ex_id)


@pytest.mark.parametrize("ex_id", list(ALL))
def test_check_explains_planted_mistakes(ex_id):
    ex = ALL[ex_id]
    for wrong, phrase in PLANTED[ex_id]:
        result = ex.check(wrong, verbose=False)
        assert not result.passed and result.attempted, ex_id
        assert phrase in result.message, f"{ex_id}: {phrase!r} not in {result.message!r}"
        assert "[case " in result.message  # which case failed, in words


@pytest.mark.parametrize("ex_id", list(ALL))
def test_check_reports_stubs_exceptions_and_non_functions(ex_id):
    ex = ALL[ex_id]
    namespace = dict(SETUP)
    exec(stub_source(ex), namespace)  # the stub of the notebook cell, still raising
    stub = namespace[ex.function_name]
    result = ex.check(stub, verbose=False)
    assert not result.passed and not result.attempted and result.status == "not attempted"
    assert result.message.startswith("not attempted yet:")

    def broken(*args):
        raise ValueError("boom")
    result = ex.check(broken, verbose=False)
    assert not result.passed and "raised ValueError: boom" in result.message
    assert "`raise ValueError(\"boom\")`" in result.message  # the failing line is shown

    result = ex.check(lambda *args: None, verbose=False)
    assert not result.passed and "forget the `return`" in result.message

    with pytest.raises(TypeError, match="expects a function"):
        ex.check(42)


def test_nan_and_factor_diagnoses():
    result = ch2.check_maml_meta_gradient_linear(lambda w, *rest: w * float("nan"), verbose=False)
    assert "NaN" in result.message
    result = ch5.check_implicit_meta_gradient(
        lambda H, v, lam: 3 * ch5.implicit_meta_gradient_solution(H, v, lam), verbose=False)
    assert "off by a constant factor" in result.message and "3 times" in result.message


# ---------------------------------------------------------------------------------------------
# The references agree with the package's algorithms and with the chapters' results

def test_fomaml_and_linear_meta_gradient_match_maml():
    torch.manual_seed(0)
    model = MLP([1, 8, 8, 1]).double()
    batch = Sinusoid(shots=5, queries=5).sample(1, generator=torch.Generator().manual_seed(1))
    batch = TaskBatch(*(t.double() for t in batch))
    sx, sy, qx, qy = (t[0] for t in batch)
    MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=2, first_order=True).meta_loss(batch).backward()
    ours = ch2.fomaml_gradient_solution(model, params_of(model), sx, sy, qx, qy, 0.05, 2)
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-10), name

    linear = torch.nn.Linear(3, 1, bias=False).double()
    g = torch.Generator().manual_seed(2)
    X_tr, X_te = torch.randn(6, 3, generator=g).double(), torch.randn(7, 3, generator=g).double()
    y_tr, y_te = torch.randn(6, generator=g).double(), torch.randn(7, generator=g).double()
    task = TaskBatch(X_tr[None], y_tr[None, :, None], X_te[None], y_te[None, :, None])
    MAML(linear, F.mse_loss, inner_lr=0.1, inner_steps=1).meta_loss(task).backward()
    ours = ch2.maml_meta_gradient_linear_solution(linear.weight.detach()[0], X_tr, y_tr, X_te, y_te, 0.1)
    assert torch.allclose(ours, linear.weight.grad[0], atol=1e-10)


def test_reptile_outer_step_matches_the_package():
    torch.manual_seed(0)
    model = MLP([1, 6, 1])
    batch = Sinusoid(shots=5, queries=5).sample(3, generator=torch.Generator().manual_seed(3))
    reptile = Reptile(model, F.mse_loss, inner_lr=0.02, inner_steps=1)
    _, direction = reptile.meta_gradient(batch)
    theta = {k: v.detach() for k, v in params_of(model).items()}
    weights = []
    for i in range(3):
        leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
        loss = F.mse_loss(forward(model, leaves, batch.support_x[i]), batch.support_y[i])
        grads = torch.autograd.grad(loss, list(leaves.values()))
        weights.append({k: theta[k] - 0.02 * gr for k, gr in zip(theta, grads)})
    ours = ch3.reptile_outer_step_solution(theta, weights, 0.5)
    for k in theta:  # meta_train applies theta <- theta - eps * direction
        assert torch.allclose(ours[k], theta[k] - 0.5 * direction[k], atol=1e-6), k


def _exact_expected_gradients(A, b, theta, alpha, k):
    """E[g] of MAML, FOMAML and Reptile over ordered k-tuples of distinct quadratic mini-batches."""
    def loss(j, t):
        return 0.5 * t @ A[j] @ t + b[j] @ t

    sums = {"maml": 0, "fomaml": 0, "reptile": 0}
    orders = list(permutations(range(A.shape[0]), k))
    for order in orders:
        t0 = theta.clone().requires_grad_()
        phi = t0
        for j in order[:-1]:
            phi = phi - alpha * torch.autograd.grad(loss(j, phi), phi, create_graph=True)[0]
        sums["maml"] = sums["maml"] + torch.autograd.grad(loss(order[-1], phi), t0, retain_graph=True)[0]
        phi_fixed = phi.detach().requires_grad_()
        sums["fomaml"] = sums["fomaml"] + torch.autograd.grad(loss(order[-1], phi_fixed), phi_fixed)[0]
        w = theta.clone()
        for j in order:
            w = w - alpha * (A[j] @ w + b[j])
        sums["reptile"] = sums["reptile"] + (theta - w) / alpha
    return {name: s / len(orders) for name, s in sums.items()}


def test_taylor_coefficients_match_autograd_to_second_order():
    g = torch.Generator().manual_seed(4)
    A = torch.stack([random_spd(3, 0.5, 2.0, g) for _ in range(4)])
    b, theta = torch.randn(4, 3, generator=g).double(), torch.randn(3, generator=g).double()
    avg_grad, inner = ch3.avg_grad_terms_quadratic_solution(A, b, theta)
    for k in (2, 3):
        errors = []
        for alpha in (0.02, 0.01):
            exact = _exact_expected_gradients(A, b, theta, alpha, k)
            errors.append(max((exact[a] - ch3.predicted_gradient_solution(a, avg_grad, inner, alpha, k))
                              .abs().max().item() for a in ch3.ALGORITHMS))
        assert 3.0 < errors[0] / errors[1] < 5.0  # O(alpha^2): halving alpha quarters the error


def test_early_stopping_prior_and_laplace_evidence():
    g = torch.Generator().manual_seed(5)
    H = random_spd(4, 0.3, 2.0, g)
    phi_star, theta = torch.randn(4, generator=g).double(), torch.randn(4, generator=g).double()
    b, k = 0.4, 6
    Q = ch4.early_stopping_prior_covariance_solution(H, k, b)
    iterate = theta.clone()
    for _ in range(k):
        iterate = iterate - b * H @ (iterate - phi_star)
    assert torch.allclose(ch4.map_estimate_solution(H, phi_star, theta, Q), iterate, atol=1e-9)

    # Bayesian linear regression: the Laplace evidence is the exact evidence
    X, y = torch.randn(8, 3, generator=g).double(), torch.randn(8, generator=g).double()
    tau, sigma2 = 2.0, 0.3
    hessian = X.T @ X / sigma2 + tau * torch.eye(3, dtype=torch.float64)
    mode = torch.linalg.solve(hessian, X.T @ y / sigma2)
    log_joint = (-0.5 * ((y - X @ mode) ** 2).sum() / sigma2 - 4 * math.log(2 * math.pi * sigma2)
                 - 0.5 * tau * mode @ mode + 1.5 * math.log(tau / (2 * math.pi))).item()
    cov = sigma2 * torch.eye(8, dtype=torch.float64) + X @ X.T / tau
    exact = torch.distributions.MultivariateNormal(torch.zeros(8, dtype=torch.float64), cov).log_prob(y)
    assert abs(ch4.laplace_log_evidence_solution(log_joint, hessian) - exact.item()) < 1e-9


def test_cg_steps_solve_and_implicit_gradient_agree():
    g = torch.Generator().manual_seed(6)
    A, b = random_spd(5, 0.5, 3.0, g), torch.randn(5, generator=g).double()
    x, r, p = torch.zeros(5, dtype=torch.float64), b.clone(), b.clone()
    for _ in range(5):
        x, r, p = ch5.cg_step_solution(A, x, r, p)
    assert torch.allclose(A @ x, b, atol=1e-9)

    torch.manual_seed(0)
    model = MLP([1, 4, 1]).double()
    sx, sy, qx, qy = (t[0].double() for t in Sinusoid(6, 6).sample(1, generator=g))

    def support_loss(p):
        return ((torch.func.functional_call(model, p, (sx,)) - sy) ** 2).mean()

    def query_loss(p):
        return ((torch.func.functional_call(model, p, (qx,)) - qy) ** 2).mean()

    phi = {k: v.detach() for k, v in model.named_parameters()}
    _, H = ch5._dense(support_loss, phi)
    v, _ = ch5._dense(query_loss, phi)
    lam = max(2.0, -2 * torch.linalg.eigvalsh(H).min().item())
    dense = ch5.implicit_meta_gradient_solution(H, v, lam)
    ours = ch5.implicit_gradient_cg_solution(support_loss, query_loss, phi, lam, 40)
    assert torch.allclose(torch.cat([t.reshape(-1) for t in ours.values()]), dense, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# The notebook cells

@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_stored_cells_match_the_registry(chapter):
    stored = json.loads((CELLS / f"ch{chapter}.json").read_text())
    assert stored == chapter_cells(chapter), "regenerate: python -m mlcourse.exercises.cells"
    assert stored[0]["source"][0].startswith(HEADING)
    assert f"python -m mlcourse grade notebooks/{NOTEBOOKS[chapter]}" in "".join(stored[0]["source"])
    for cell in stored:
        nbformat.validate(nbformat.v4.new_notebook(cells=[nbformat.from_dict(cell)]))
        for line in "".join(cell["source"]).splitlines():
            assert len(line) <= 88, (cell["id"], line)
    by_id = {c["id"]: c for c in stored}
    for ex in exercises_for(chapter):
        stub, solution = by_id[f"{ex.label}-stub"], by_id[f"{ex.label}-solution"]
        assert stub["metadata"]["tags"] == ["exercise"] and solution["metadata"]["tags"] == ["solution"]
        assert "raise NotImplementedError" in "".join(stub["source"])
        assert "# your code here" in "".join(stub["source"])
        assert "".join(solution["source"]) == solution_source(ex).rstrip("\n")
        namespace = dict(SETUP)  # what every chapter's setup cell has imported
        exec("".join(solution["source"]), namespace)  # the cell's own text, as a reader sees it
        assert ex.check(namespace[ex.function_name], verbose=False).passed
        start = "".join(by_id[f"{ex.label}-task"]["source"])
        assert start.startswith("```{exercise-start}") and f":label: {ex.label}" in start
        assert f"{{solution-start}} {ex.label}\n:class: dropdown" in "".join(
            by_id[f"{ex.label}-solution-start"]["source"])


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def _code(source, tags=()):
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def test_grade_notebook_runs_only_setup_and_exercise_cells(tmp_path, capsys):
    right = stub_source(ALL["2.1"]).replace(
        "    # your code here\n    raise NotImplementedError",
        "    return {k: params[k] - inner_lr * grads[k] for k in params}")
    wrong = ("def maml_meta_gradient_linear(w, sx, sy, qx, qy, alpha):\n"
             "    phi = w - alpha * 2 / len(sx) * sx.T @ (sx @ w - sy)\n"
             "    return 2 / len(qx) * qx.T @ (qx @ phi - qy)\n")
    path = _notebook(tmp_path / "02_tiny.ipynb", [
        nbformat.v4.new_markdown_cell("# A tiny chapter"),
        _code("import torch\nprint('budget: smoke')"),
        _code("raise RuntimeError('the training ran')"),  # untagged: must not run
        _code(right, ["exercise"]),
        _code(wrong, ["exercise"]),
        _code(solution_source(ALL["2.3"]), ["solution"]),  # a solution cell: must not run either
    ])
    assert chapter_of(path) == 2
    results = grade_notebook(path)
    assert [r.exercise for r in results] == ["2.1", "2.2", "2.3"]
    assert [r.status for r in results] == ["correct", "wrong", "not attempted"]
    assert "first-order (FOMAML)" in results[1].message
    assert "no function named `fomaml_gradient`" in results[2].message
    report = format_report(results)
    assert "total: 1/5 points (1 of 3 exercises correct)" in report
    assert "2.2: this is the first-order" in report
    assert [line.split()[-1] for line in report.splitlines()[2:5]] == ["correct", "wrong", "attempted"]
    assert main(["grade", str(path)]) == 1
    assert "total: 1/5" in capsys.readouterr().out

    setup = "import math\nimport torch\nimport torch.nn.functional as F\nimport mlcourse"
    solved = _notebook(tmp_path / "lesson.ipynb", [_code(setup)] + [
        _code(solution_source(ex), ["exercise"]) for ex in exercises_for(2)])
    with pytest.raises(ValueError, match="chapter"):
        grade_notebook(solved)
    assert all(r.passed for r in grade_notebook(solved, chapter=2))
    assert main(["grade", str(solved), "--chapter", "2"]) == 0


def test_grade_notebook_reports_a_broken_exercise_cell(tmp_path):
    path = _notebook(tmp_path / "05_broken.ipynb", [
        _code("import torch"), _code("def cg_step(A, x, r, p)\n    pass", ["exercise"]),
        _code("%matplotlib inline\n" + solution_source(ALL["5.2"]), ["exercise"])])
    results = {r.exercise: r for r in grade_notebook(path)}
    assert results["5.2"].passed  # a line magic is skipped, not a syntax error
    assert not results["5.1"].attempted and "SyntaxError" in results["5.1"].message


def test_strip_solutions_makes_a_gradable_student_copy(tmp_path):
    cells = [nbformat.from_dict(c) for c in json.loads((CELLS / "ch3.json").read_text())]
    teacher = _notebook(tmp_path / "03_reptile.ipynb", [_code("import torch")] + cells)
    student = tmp_path / "student" / "03_reptile.ipynb"
    assert main(["student-copy", str(teacher), str(student)]) == 0
    kept = nbformat.read(student, as_version=4).cells
    assert len(kept) == len(cells) + 1 - 4 * len(exercises_for(3))
    text = json.dumps([c.source for c in kept])
    assert "solution-start" not in text and "solution-end" not in text
    assert all("solution" not in c.metadata.get("tags", []) for c in kept)
    assert sum("exercise" in c.metadata.get("tags", []) for c in kept) == len(exercises_for(3))
    assert [r.status for r in grade_notebook(student)] == ["not attempted"] * 3
    with pytest.raises(ValueError):
        strip_solutions(teacher, teacher)
