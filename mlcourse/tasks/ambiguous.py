"""Ambiguous tasks (PLATIPUS, Finn et al. 2018, sec. 6): a few examples fit several explanations.

* :class:`SinusoidOrLine`, regression: half the tasks are sinusoids and half are lines; from a few
  noisy points both can fit, so a good few-shot learner should answer with several hypotheses.
* :class:`AmbiguousShapes`, classification: generated images with eight binary attributes; the
  support positives share three of them, the query positives two, and the support set does not
  say which two (the paper builds the same tasks from celebA's annotated faces).
"""
from __future__ import annotations

import itertools
import math

import torch

from .base import TaskBatch, check_int
from .sinusoid import Sinusoid

SINUSOID, LINE = 0, 1


class SinusoidOrLine:
    """Tasks y = A sin(x - b) (A ~ U[0.1, 5], b ~ U[0, pi], as :class:`Sinusoid`) or y = a x + c
    (a, c ~ U[-3, 3]), each with probability 1/2, observed with Gaussian noise of standard deviation
    ``noise_std``; x ~ U[-5, 5], and the support points from ``support_range`` (narrower makes the
    task more ambiguous). The paper mixes sinusoids and lines observed with noise; the ranges of
    slope and intercept, the noise level and the support range here are ours.

    ``sample(meta_batch, generator, return_params=True)`` also returns a dict with ``kind`` (0 for a
    sinusoid, 1 for a line) and the parameters (amplitude, phase, slope, intercept; the ones a task
    does not use are NaN), for plotting the true functions with :meth:`function`.
    """

    slope_range = (-3.0, 3.0)
    intercept_range = (-3.0, 3.0)
    x_range = Sinusoid.x_range

    def __init__(self, shots: int = 5, queries: int = 10, noise_std: float = 0.3,
                 support_range: tuple[float, float] | None = None):
        self.shots = check_int("shots", shots, 1)
        self.queries = check_int("queries", queries, 1)
        if not (isinstance(noise_std, (int, float)) and 0 <= noise_std < math.inf):
            raise ValueError(f"noise_std={noise_std!r} is out of range: allowed a finite number >= 0")
        self.noise_std = float(noise_std)
        lo, hi = self.x_range
        support_range = (lo, hi) if support_range is None else tuple(support_range)
        if not (len(support_range) == 2 and lo <= support_range[0] < support_range[1] <= hi):
            raise ValueError(f"support_range={support_range!r} is out of range: allowed (a, b) with "
                             f"{lo} <= a < b <= {hi}")
        self.support_range = support_range

    @staticmethod
    def function(x: torch.Tensor, params: dict) -> torch.Tensor:
        """The noiseless y of each task at x of shape (tasks, n, 1)."""
        view = lambda t: t.view(-1, 1, 1)  # noqa: E731
        sine = view(params["amplitude"].nan_to_num()) * torch.sin(x - view(params["phase"].nan_to_num()))
        line = view(params["slope"].nan_to_num()) * x + view(params["intercept"].nan_to_num())
        return torch.where(view(params["kind"]) == SINUSOID, sine, line)

    @staticmethod
    def closest_kind(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which family fits each curve better, by least squares: 0 a sinusoid, 1 a line.

        x and y are (curves, n, 1) or (curves, n). Both families are linear in their coefficients:
        a line is a x + c, and A sin(x - b) = (A cos b) sin x - (A sin b) cos x; each is fitted by
        ``torch.linalg.lstsq`` and the smaller residual wins. (A sinusoid's family has no
        intercept, a line's no curvature, so neither contains the other.)"""
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        ones = torch.ones_like(x)
        residuals = []
        for basis in ((torch.sin(x), torch.cos(x)), (x, ones)):
            design = torch.stack(basis, dim=-1)                        # (curves, n, 2)
            coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution
            residuals.append(((design @ coef).squeeze(-1) - y).pow(2).mean(-1))
        return (residuals[1] < residuals[0]).long()

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_params: bool = False):
        check_int("meta_batch", meta_batch, 1)

        def uniform(bounds, *shape):
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=generator)

        kind = (torch.rand(meta_batch, generator=generator) < 0.5).long()  # 1: a line
        is_line = kind == LINE
        nan = torch.full((meta_batch,), math.nan)
        params = {"kind": kind,
                  "amplitude": torch.where(is_line, nan, uniform(Sinusoid.amplitude_range, meta_batch)),
                  "phase": torch.where(is_line, nan, uniform(Sinusoid.phase_range, meta_batch)),
                  "slope": torch.where(is_line, uniform(self.slope_range, meta_batch), nan),
                  "intercept": torch.where(is_line, uniform(self.intercept_range, meta_batch), nan)}
        x = torch.cat([uniform(self.support_range, meta_batch, self.shots, 1),
                       uniform(self.x_range, meta_batch, self.queries, 1)], dim=1)
        y = self.function(x, params) + self.noise_std * torch.randn(x.shape, generator=generator)
        k = self.shots
        batch = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        return (batch, params) if return_params else batch


# ---------------------------------------------------------------------------------------------
# Ambiguous classification (PLATIPUS, sec. 6: ambiguous celebA), on generated images instead

#: The binary attributes every generated image has, with what value 1 looks like (value 0 is the
#: opposite: a square, small, dim, filled, no frame, plain background, no line).
SHAPE_ATTRIBUTES = {
    "round": "the object is a disc (else a square)",
    "large": "the object is large (else small)",
    "bright": "the object is bright (else dim)",
    "hollow": "the object is an outline (else filled)",
    "framed": "a frame runs round the image",
    "striped": "the background has diagonal stripes (else it is plain)",
    "h_line": "a horizontal line crosses the image",
    "v_line": "a vertical line crosses the image",
}


def render_shapes(attributes: torch.Tensor, image_size: int = 28, noise_std: float = 0.05,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one grey-scale image per row of ``attributes`` ((n, 8) of 0/1, the columns in the order
    of :data:`SHAPE_ATTRIBUTES`): (n, 1, image_size, image_size) floats in [0, 1].

    One object (a disc or a square) on a dark background, with a random position, and a size and
    brightness drawn within the range its attributes allow; the stripes and lines at random
    offsets, the frame along the border; pixel noise of standard deviation ``noise_std`` is added last. Every
    random choice comes from ``generator``, so a seeded generator draws the same images. Edges
    are anti-aliased (a pixel is covered in proportion to its distance to the edge)."""
    a = attributes.bool()
    if a.dim() != 2 or a.shape[1] != len(SHAPE_ATTRIBUTES):
        raise ValueError(f"attributes has shape {tuple(a.shape)}; expected (n, {len(SHAPE_ATTRIBUTES)}): "
                         f"one column per attribute {', '.join(SHAPE_ATTRIBUTES)}")
    n, s = a.shape[0], image_size
    scale = s / 28.0
    col = {name: a[:, i].view(n, 1, 1) for i, name in enumerate(SHAPE_ATTRIBUTES)}

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=generator)

    def pick(flag, if_true, if_false):
        return torch.where(flag, if_true, if_false)

    pixel = torch.arange(s, dtype=torch.float32)
    y, x = pixel.view(1, s, 1), pixel.view(1, 1, s)
    # the object: radius (half-side for a square), centre, brightness
    radius = scale * pick(col["large"], uniform(7.0, 8.5), uniform(3.5, 5.0))
    margin = radius + 2.5 * scale
    cy = margin + (s - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=generator)
    cx = margin + (s - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=generator)
    dy, dx = (y - cy).abs(), (x - cx).abs()
    distance = pick(col["round"], (dy ** 2 + dx ** 2).sqrt(), torch.maximum(dy, dx))
    inside = (radius - distance + 0.5).clamp(0, 1)
    ring = (distance - (radius - 1.6 * scale) + 0.5).clamp(0, 1)
    shape = pick(col["hollow"], inside * ring, inside)
    brightness = pick(col["bright"], uniform(0.85, 1.0), uniform(0.35, 0.5))
    image = shape * brightness
    # the background: stripes, frame, lines (under the object: a pixel keeps the brightest layer)
    phase = torch.randint(0, 6, (n, 1, 1), generator=generator)
    stripes = (((x + y + phase) % 6) < 2).float() * 0.25 * col["striped"]
    edge = torch.minimum(torch.minimum(x, y), torch.minimum(s - 1 - x, s - 1 - y))
    frame = (edge < max(1.0, scale)).float() * 0.7 * col["framed"]
    row = torch.randint(2, s - 3, (n, 1, 1), generator=generator)
    column = torch.randint(2, s - 3, (n, 1, 1), generator=generator)
    width = max(2, round(2 * scale))
    h_line = ((y >= row) & (y < row + width)).float() * 0.6 * col["h_line"]
    v_line = ((x >= column) & (x < column + width)).float() * 0.6 * col["v_line"]
    for layer in (stripes, frame, h_line, v_line):
        image = torch.maximum(image, layer)
    image = image + noise_std * torch.randn(n, s, s, generator=generator)
    return image.clamp(0, 1).unsqueeze(1)


class AmbiguousShapes:
    """Ambiguous binary classification of generated images: the support set does not say which of
    several explanations is the task's (PLATIPUS, Finn et al. 2018, sec. 6, there on celebA faces).

    Every image has the eight binary attributes of :data:`SHAPE_ATTRIBUTES` (drawn by
    :func:`render_shapes`, each value with probability 1/2 unless the task fixes it). A task picks
    ``task_attributes`` = m of them (3 by default) and a target value for each ("has the
    attribute" below means "takes its target value"), and one of the m subsets of m - 1 of them as
    its hypothesis (uniformly):

    * support set: ``shots`` positives that have all m attributes and ``shots`` negatives that have
      none of them (label 1 and 0; the other attributes random), so every subset of m - 1
      attributes explains the support labels equally well;
    * query set: ``queries`` positives and ``queries`` negatives (a multiple of m), labelled 1 when
      the image has every attribute of the task's hypothesis. They come in groups of 2m images
      whose patterns (which of the m attributes an image has) are the same for every hypothesis,
      so the query images alone do not give the hypothesis away: m - 1 images with all m
      attributes, one image missing each attribute in turn, and one with none. Under any
      hypothesis the group holds m positives (all m attributes, or the hypothesis's m - 1) and m
      negatives (the m - 1 other images missing one attribute, and the one with none); the
      images missing one attribute tell the hypotheses apart. For m = 3, out of each six
      queries: "negative" to everything scores 50%, "positive" only to all three attributes (the
      best single answer while the hypothesis is unknown) 5/6, the right hypothesis 6/6 and a
      wrong one 4/6.

    With m = 3 the support set is the paper's construction (positives share three attributes,
    negatives have none; the query positives share two of them); the composition of the query
    set is ours, and celebA's faces with 40 annotated attributes are replaced by images drawn
    here with eight exactly known, independent attributes. ``sample(meta_batch, generator,
    return_info=True)`` also returns a dict: ``attributes`` (T, m) indices into
    :data:`SHAPE_ATTRIBUTES`, ``values`` (T, m) their target values, ``hypothesis`` (T,) the index
    into :meth:`hypotheses` of each task's, and ``support_has``/``query_has`` ((T, examples, m)
    bool: which of the task's m attributes each image has), from which
    :meth:`hypothesis_labels` gives every hypothesis's query labels.
    """

    attribute_names = tuple(SHAPE_ATTRIBUTES)

    def __init__(self, shots: int = 5, queries: int = 3, task_attributes: int = 3,
                 image_size: int = 28, noise_std: float = 0.05):
        self.shots = check_int("shots", shots, 1)
        available = len(self.attribute_names)
        self.task_attributes = check_int(
            "task_attributes", task_attributes, 2, available,
            why=f"the generator draws {available} attributes: {', '.join(self.attribute_names)}")
        self.queries = check_int("queries", queries, 1)
        if queries % task_attributes:
            raise ValueError(f"queries={queries} is not a multiple of task_attributes={task_attributes}: the "
                             f"query set comes in groups of {task_attributes} positives and "
                             f"{task_attributes} negatives")
        self.image_size = check_int("image_size", image_size, 16, 256,
                                    why="smaller images cannot hold the shapes")
        if not (isinstance(noise_std, (int, float)) and 0 <= noise_std < math.inf):
            raise ValueError(f"noise_std={noise_std!r} is out of range: allowed a finite number >= 0")
        self.noise_std = float(noise_std)

    def hypotheses(self) -> list[tuple[int, ...]]:
        """The m possible explanations: subsets of m - 1 of a task's m attributes (positions 0..m-1),
        for m = 3: (0, 1), (0, 2), (1, 2)."""
        return list(itertools.combinations(range(self.task_attributes), self.task_attributes - 1))

    def hypothesis_labels(self, has: torch.Tensor) -> torch.Tensor:
        """(T, m, examples) int64: each hypothesis's label for each image, from ``has`` (T, examples, m)."""
        return torch.stack([has[..., list(h)].all(-1) for h in self.hypotheses()], dim=1).long()

    def sample(self, meta_batch: int, generator: torch.Generator | None = None, return_info: bool = False):
        check_int("meta_batch", meta_batch, 1)
        m, k, total = self.task_attributes, self.shots, len(self.attribute_names)
        chosen = torch.rand(meta_batch, total, generator=generator).argsort(dim=1)[:, :m]   # (T, m)
        values = (torch.rand(meta_batch, m, generator=generator) < 0.5).long()
        hypothesis = torch.randint(0, m, (meta_batch,), generator=generator)
        # which of the task's attributes each image has: support none/all; query groups of m - 1
        # images with all, one without attribute j for each j, one with none
        support_has = torch.cat([torch.zeros(k, m, dtype=torch.bool), torch.ones(k, m, dtype=torch.bool)])
        group = torch.cat([torch.ones(m - 1, m, dtype=torch.bool), ~torch.eye(m, dtype=torch.bool),
                           torch.zeros(1, m, dtype=torch.bool)])                                # (2m, m)
        query_has = group.repeat(self.queries // m, 1)
        support_has = support_has.expand(meta_batch, -1, -1)
        query_has = query_has.expand(meta_batch, -1, -1)
        has = torch.cat([support_has, query_has], dim=1)                                       # (T, n, m)
        n = has.shape[1]
        attrs = (torch.rand(meta_batch, n, total, generator=generator) < 0.5).long()
        fixed = torch.where(has, values.unsqueeze(1), 1 - values.unsqueeze(1))                 # (T, n, m)
        attrs.scatter_(2, chosen.unsqueeze(1).expand(-1, n, -1), fixed)
        images = render_shapes(attrs.view(-1, total), self.image_size, self.noise_std, generator)
        images = images.view(meta_batch, n, *images.shape[1:])
        labels = self.hypothesis_labels(has)                                                   # (T, m, n)
        y = labels.gather(1, hypothesis.view(-1, 1, 1).expand(-1, 1, n)).squeeze(1)
        batch = TaskBatch(images[:, :2 * k].contiguous(), y[:, :2 * k].contiguous(),
                          images[:, 2 * k:].contiguous(), y[:, 2 * k:].contiguous())
        if not return_info:
            return batch
        info = {"attributes": chosen, "values": values, "hypothesis": hypothesis,
                "support_has": support_has.clone(), "query_has": query_has.clone(),
                "image_attributes": attrs}
        return batch, info
