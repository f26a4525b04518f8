"""
Loss terms for class-incremental segmentation: MiB baselines and LDKA.

Every function here is a pure tensor function (or a small stateful helper with an
explicit ``state_dict``), so each term can be tested on hand-made tensors and ablated
on its own. Shapes: ``logits`` ``(B, S, H, W)`` over all class slots (inactive slots
carry a large negative offset, see ``learning.model``), ``target`` ``(B, H, W)`` long
with ``IGNORE`` (255) for pixels that carry no label, ``features`` ``(B, C, h, w)``.

The formulas follow ``docs/METHOD.md`` (shared); each docstring repeats the one it
implements, because the constants and reductions matter when comparing methods.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

IGNORE = 255
EPS = 1e-6

ClassifyFn = Callable[[torch.Tensor], torch.Tensor]


def _ids(classes: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor([int(c) for c in classes], dtype=torch.long, device=device)


def valid_mask(target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``valid`` if given, else the pixels whose target is not ``IGNORE``."""
    if valid is not None:
        return valid.bool()
    return target != IGNORE


def class_balance_weights(target: torch.Tensor, power: float,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    Return per-pixel weights ``w_i = n_{y_i}^-power`` rescaled so that ``sum w = N``.

    ``n_c`` counts the valid pixels of class ``c`` in the batch. An operator's label
    covers a few hundred pixels of a frame whose remaining tens of thousands are
    background; with plain averaging the new class then receives about one percent of
    the gradient and a short on-robot step does not learn it. ``power = 0`` is plain
    averaging (all weights 1), ``1`` gives every present class the same total weight,
    ``0.5`` (square-root balancing) lies between. The total stays ``N`` (the number of
    valid pixels), so loss scales and learning rates keep their meaning; invalid pixels
    get weight 0. No gradient flows through the weights.
    """
    valid = valid_mask(target, valid)
    weights = valid.float()
    count = int(valid.sum())
    if count == 0 or power == 0:
        return weights
    labels = target[valid].long()
    freq = torch.bincount(labels, minlength=int(labels.max()) + 1).float()
    per_pixel = freq[labels].pow(-float(power))
    weights[valid] = per_pixel * (count / per_pixel.sum())
    return weights


def split_balance_weights(step_target: torch.Tensor, target: torch.Tensor,
                          power: float) -> torch.Tensor:
    """
    Return class-balancing weights in two levels: step labels first, then the target.

    Why: balancing over the pseudo-labelled ``target`` hands a single new class
    ``1/(|old| + 1)`` of the CE (every old class the old model sees is present again);
    balancing over the step's labels alone (``step_target``: new classes and
    background) restores MiB's share but lets the frequent old classes crowd out the
    rare ones inside background's part. Here every pixel labelled background in the
    step keeps, as a group, the total weight the step labels give background, and that
    total is shared out over the group by ``class_balance_weights(target, power)``
    (old classes and the remaining background balanced among themselves); new-class
    pixels keep their step-label weights. Pixels the target ignores get 0.
    """
    w_step = class_balance_weights(step_target, power)
    if power == 0:
        return torch.where(target != IGNORE, w_step, torch.zeros_like(w_step))
    w_target = class_balance_weights(target, power)
    background = step_target == 0
    group = background & (target != IGNORE)
    group_sum = w_target[group].sum()  # 0 when the group is empty
    if float(group_sum) <= 0:
        return torch.where(background, torch.zeros_like(w_step), w_step)
    scale = w_step[background].sum() / group_sum
    shared = torch.where(group, w_target * scale, torch.zeros_like(w_target))
    return torch.where(background, shared, w_step)


def weighted_mean(pixel_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Return ``sum(w l) / sum(valid)`` (weights from ``class_balance_weights``)."""
    count = (weights > 0).sum().clamp(min=1)
    return (pixel_loss * weights).sum() / count


def logit_margin(logits: torch.Tensor, target: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    Return the per-pixel logit margin ``m = s_y - max_{j != y} s_j``, shape ``(B, H, W)``.

    The margin is the quantity LDKA is built on: ``m ~ 0`` marks the pixels whose
    prediction a small update can flip. Invalid pixels (ignore label) get margin 0;
    gradients flow through both logits, so callers detach where the method says sg[.].
    """
    valid = valid_mask(target, valid)
    safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    s_y = logits.gather(1, safe)
    others = logits.scatter(1, safe, torch.finfo(logits.dtype).min)
    s_c = others.amax(dim=1, keepdim=True)
    return torch.where(valid, (s_y - s_c).squeeze(1), torch.zeros_like(s_y.squeeze(1)))


def unbiased_margin(logits: torch.Tensor, target: torch.Tensor, old_classes: Sequence[int],
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    Return the margin that matches ``unbiased_ce``: on background pixels "old against new".

    A background pixel under the unbiased CE is right when background or any old class
    wins, so its margin is ``logsumexp_{c in old} s_c - max_{j not in old} s_j`` (the
    log-sum is the folded logit the CE reads); other pixels keep ``logit_margin``. Why:
    PML hands its fixed budget to low-margin pixels late in a step; with the plain
    margin a background pixel that an old class rightly wins looks hard (``s_0`` far
    below ``s_c``) and draws budget it cannot use, as its unbiased CE is already ~0.
    """
    valid = valid_mask(target, valid)
    plain = logit_margin(logits, target, valid)
    old = _ids(sorted(set(old_classes) | {0}), logits.device)
    rest = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    rest[old] = False
    if not bool(rest.any()):
        return plain
    folded = torch.logsumexp(logits.index_select(1, old), dim=1)
    others = logits[:, rest].amax(dim=1)
    return torch.where(valid & (target == 0), folded - others, plain)


def pml_beta(progress: float, beta0: float) -> float:
    """Return the PML schedule ``beta = beta0 * (2 p - 1)`` for progress ``p`` in [0, 1]."""
    progress = min(max(float(progress), 0.0), 1.0)
    return float(beta0) * (2.0 * progress - 1.0)


def pml_weights(margins: torch.Tensor, progress: float, beta0: float,
                valid: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """
    Return the Progressive Margin Learning pixel weights (no gradient).

    ``m~_i = sg[m_i] / (std_j sg[m_j] + eps)``,
    ``w_i = N exp(-beta m~_i) / sum_j exp(-beta m~_j)``, ``beta = beta0 (2 p - 1)``,
    over the N valid pixels; invalid pixels get weight 0, so ``sum w = N`` always (a
    constant budget that early in the step favours high-margin, easy pixels and late
    in the step low-margin ones).
    """
    margins = margins.detach()
    if valid is None:
        valid = torch.ones_like(margins, dtype=torch.bool)
    valid = valid.bool()
    weights = torch.zeros_like(margins)
    count = int(valid.sum())
    if count == 0:
        return weights
    m = margins[valid].float()
    std = m.std(unbiased=False) if count > 1 else m.new_tensor(0.0)
    scaled = m / (std + eps)
    beta = pml_beta(progress, beta0)
    w = count * torch.softmax(-beta * scaled, dim=0)
    weights[valid] = w.to(weights.dtype)
    return weights


def pml_loss(logits: torch.Tensor, target: torch.Tensor, progress: float, beta0: float,
             valid: torch.Tensor | None = None,
             pixel_loss: torch.Tensor | None = None,
             margins: torch.Tensor | None = None) -> torch.Tensor:
    """
    Return ``L_PML = (1/N) sum_i w_i l_i`` with PML weights ``w`` (see ``pml_weights``).

    ``l_i`` is the per-pixel cross-entropy on ``target`` unless ``pixel_loss`` (for
    example MiB's unbiased CE per pixel) is given; the weights come from ``margins``
    when given (``unbiased_margin`` for that CE), else from ``logit_margin``.
    """
    valid = valid_mask(target, valid)
    if pixel_loss is None:
        pixel_loss = F.cross_entropy(logits, torch.where(valid, target, IGNORE),
                                     ignore_index=IGNORE, reduction='none')
    count = int(valid.sum())
    if count == 0:
        return logits.sum() * 0.0
    if margins is None:
        margins = logit_margin(logits, target, valid)
    weights = pml_weights(margins, progress, beta0, valid)
    return (weights * torch.where(valid, pixel_loss, 0.0)).sum() / count


def unbiased_ce(logits: torch.Tensor, target: torch.Tensor, old_classes: Sequence[int],
                reduction: str = 'mean') -> torch.Tensor:
    """
    Return MiB's unbiased cross-entropy.

    A background-labelled pixel may really show an old class, so its background
    probability is replaced by the total probability of background and every old
    class: ``-log sum_{c in old} p_c`` (``old`` includes background 0). Pixels of new
    classes get the ordinary ``-log p_y``. ``reduction``: ``'mean'`` over valid pixels
    or ``'none'`` (per pixel, 0 where ignored).
    """
    valid = target != IGNORE
    log_z = torch.logsumexp(logits, dim=1)
    old = _ids(sorted(set(old_classes) | {0}), logits.device)
    log_old = torch.logsumexp(logits.index_select(1, old), dim=1) - log_z
    safe = torch.where(valid, target, torch.zeros_like(target))
    log_p = logits.gather(1, safe.unsqueeze(1)).squeeze(1) - log_z
    per_pixel = -torch.where(safe == 0, log_old, log_p)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    if reduction == 'none':
        return per_pixel
    if reduction != 'mean':
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    return per_pixel.sum() / valid.sum().clamp(min=1)


def unbiased_kd(logits: torch.Tensor, old_logits: torch.Tensor, old_classes: Sequence[int],
                new_classes: Sequence[int], valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    Return MiB's unbiased knowledge distillation loss.

    The old model only knows ``old`` (background included); what the new model puts on
    the new classes is folded into background before matching:
    ``p~_0 = p_0 + sum_{n in new} p_n``, ``p~_c = p_c`` for old ``c != 0``, and
    ``L = -(1/N) sum_i (1/|old|) sum_{c in old} q_c log p~_c`` with
    ``q = softmax(s^old restricted to old)``. The ``1/|old|`` factor is MiB's, so that
    its ``lambda_KD = 10`` keeps its meaning. With no new classes this is plain KD.
    """
    device = logits.device
    old = sorted({int(c) for c in old_classes} | {0})
    old_ids = _ids(old, device)
    q = torch.softmax(old_logits.detach().index_select(1, old_ids).float(), dim=1)
    log_z = torch.logsumexp(logits.float(), dim=1, keepdim=True)
    log_p = logits.float().index_select(1, old_ids) - log_z
    new = [int(c) for c in new_classes if int(c) not in old]
    if new:
        bg_and_new = _ids([0] + new, device)
        log_bg = torch.logsumexp(logits.float().index_select(1, bg_and_new), dim=1,
                                 keepdim=True) - log_z
        log_p = torch.cat([log_bg, log_p[:, 1:]], dim=1)  # old[0] is background
    per_pixel = -(q * log_p).sum(dim=1) / len(old)
    if valid is None:
        return per_pixel.mean()
    valid = valid.bool()
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def top2_curvature(old_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                      torch.Tensor]:
    """
    Return ``(kappa, a, b)``: the old model's top-2 classes and the CE curvature there.

    ``kappa = p_a + p_b - (p_a - p_b)^2`` is the second derivative of softmax
    cross-entropy along ``u = e_a - e_b`` (``u^T (diag p - p p^T) u``); it is largest
    near ``m = 0``, where old predictions are most fragile.
    """
    probs = torch.softmax(old_logits.detach().float(), dim=1)
    top = old_logits.detach().topk(2, dim=1).indices
    a, b = top[:, 0], top[:, 1]
    p_a = probs.gather(1, a.unsqueeze(1)).squeeze(1)
    p_b = probs.gather(1, b.unsqueeze(1)).squeeze(1)
    return p_a + p_b - (p_a - p_b) ** 2, a, b


def fold_background(logits: torch.Tensor, new_classes: Sequence[int]) -> torch.Tensor:
    """
    Return logits whose background slot is ``logsumexp`` over background and ``new_classes``.

    The old model's "background" covered what the new classes now name, so any
    comparison with its logits must fold them back (as MiB's unbiased KD does). With
    MiB's initialisation the folded logit equals the old background logit exactly.
    """
    new = [int(c) for c in new_classes if int(c) != 0]
    if not new:
        return logits
    ids = _ids([0] + new, logits.device)
    folded = torch.logsumexp(logits.index_select(1, ids), dim=1, keepdim=True)
    return torch.cat([folded, logits[:, 1:]], dim=1)


def curvature_damping(logits: torch.Tensor, old_logits: torch.Tensor,
                      valid: torch.Tensor | None = None,
                      new_classes: Sequence[int] = (),
                      delta: float | None = None,
                      shrink_only: bool = False) -> torch.Tensor:
    """
    Return ``L_dss = (1/N) sum_i sg[kappa_i] dm_i^2`` (SKD curvature damping).

    ``a, b`` are the old model's top-2 classes at pixel ``i``,
    ``kappa_i = p^old_a + p^old_b - (p^old_a - p^old_b)^2`` and
    ``dm_i = (s_a - s_b) - (s^old_a - s^old_b)``: a margin change is penalised in
    proportion to how sharply CE bends there (``KL(p^old||p) ~ kappa dm^2 / 8``). Zero
    when the new model keeps every old margin. ``new_classes`` are folded into the
    student's background first (``fold_background``); without that, MiB's
    initialisation alone (background bias lowered by ``log(|C_t| + 1)``) reads as a
    margin change on every pixel whose old top-2 includes background, and the term
    fights the initialisation (we measured 7x the CE gradient at iteration 0 and a
    collapse of all margins within 30 iterations).

    ``delta``: if given, ``dm^2`` is replaced by the Huber form ``dm^2`` for
    ``|dm| <= delta`` and ``delta (2 |dm| - delta)`` beyond (same value and slope at
    ``delta``), which bounds the gradient to ``2 kappa delta``. The pure quadratic on
    raw logit margins is stiff: with SGD (momentum 0.9) at lr 0.005 it diverged within
    5 iterations on a fixed batch even at ``lambda_dss = 0.05``. The step recipe
    (``steps.STEP_RECIPE``) clips the gradient norm instead, which keeps
    ``lambda_dss = 0.5`` with ``delta=None`` stable at lr 0.05.

    ``shrink_only``: penalise only ``dm < 0``, a pixel moving *towards* the old decision
    boundary. The method's formula is symmetric; it also resists margins that grow,
    which on CamVid coincided with more low-margin old pixels than pseudo-labels + PML
    alone (docs/benchmarks/learning_camvid.md). A variant for measurement, off by
    default.
    """
    kappa, a, b = top2_curvature(old_logits)
    old = old_logits.detach()
    student = fold_background(logits, new_classes)
    dm_new = student.gather(1, a.unsqueeze(1)) - student.gather(1, b.unsqueeze(1))
    dm_old = old.gather(1, a.unsqueeze(1)) - old.gather(1, b.unsqueeze(1))
    dm = (dm_new - dm_old).squeeze(1).float()
    if shrink_only:
        dm = dm.clamp(max=0.0)
    if delta is None:
        penalty = dm ** 2
    else:
        size = dm.abs()
        penalty = torch.where(size <= delta, dm ** 2, float(delta) * (2.0 * size - delta))
    per_pixel = kappa * penalty
    if valid is None:
        return per_pixel.mean()
    valid = valid.bool()
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def _resize_mask(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(valid.shape[-2:]) == tuple(size):
        return valid.bool()
    small = F.interpolate(valid.float().unsqueeze(1), size=size, mode='nearest')
    return small.squeeze(1) > 0.5


def perturbation_loss(classify_fn: ClassifyFn, features: torch.Tensor, sigma: float,
                      valid: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """
    Return ``L_pert = (1/N) sum_i (m_i(F + eps) - sg[m_i(F)])^2`` (SKD perturbation).

    ``eps_i = sigma * ||F_i|| / sqrt(C) * n_i``, ``n_i ~ N(0, I)``: the noise is scaled
    to each pixel's feature norm so ``sigma`` is a relative size. ``m`` is the
    top-1 minus top-2 logit of the *clean* prediction's two classes, at feature
    resolution. Penalising how much noise moves the margin lowers ``||grad m||`` and
    so raises the stability radius ``|m| / ||grad m||``. ``valid`` may be given at
    any resolution (nearest-resized to the features).
    """
    clean = classify_fn(features)
    top = clean.detach().topk(2, dim=1).indices
    m_clean = (clean.gather(1, top[:, :1]) - clean.gather(1, top[:, 1:2])).detach()
    norm = features.detach().norm(dim=1, keepdim=True) / features.shape[1] ** 0.5
    noise = torch.randn(features.shape, generator=generator, device=features.device,
                        dtype=features.dtype)
    noisy = classify_fn(features + float(sigma) * norm * noise)
    m_noisy = noisy.gather(1, top[:, :1]) - noisy.gather(1, top[:, 1:2])
    per_pixel = ((m_noisy - m_clean) ** 2).squeeze(1).float()
    if valid is None:
        return per_pixel.mean()
    valid = _resize_mask(valid, tuple(features.shape[-2:]))
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


class CompetitionMatrix:
    """
    Soft class-competition statistics for MAD (misclassification-aware decoupling).

    ``G_ab <- mu G_ab + (1 - mu) mean_{i: y_i = a} p_{i,b}`` for ``b != a`` (rows of
    classes absent from a batch keep their value), and
    ``Gamma_ab = (G_ab + G_ba) / (2 sum_{a' != b'} G_a'b')``: symmetric, zero
    diagonal, off-diagonal entries summing to 1. Large ``Gamma_ab`` = classes ``a`` and
    ``b`` steal probability from each other, so their embeddings should separate.
    """

    def __init__(self, num_slots: int, mu: float = 0.9) -> None:
        if not 0.0 <= mu < 1.0:
            raise ValueError(f'mu must be in [0, 1), got {mu}')
        self.num_slots = int(num_slots)
        self.mu = float(mu)
        self.G = torch.zeros(self.num_slots, self.num_slots)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Fold one batch of probabilities ``(B, S, H, W)`` and targets ``(B, H, W)`` in."""
        valid = target != IGNORE
        if not bool(valid.any()):
            return
        p = probs.detach().float().permute(0, 2, 3, 1)[valid].cpu()  # (N, S)
        y = target[valid].cpu()
        sums = torch.zeros(self.num_slots, self.num_slots).index_add_(0, y, p)
        counts = torch.bincount(y, minlength=self.num_slots).float()
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1)
        self.G[present] = self.mu * self.G[present] + (1.0 - self.mu) * means
        self.G.fill_diagonal_(0.0)

    def gamma(self) -> torch.Tensor:
        """Return ``Gamma`` (symmetric, zero diagonal, off-diagonal sum 1; zeros if empty)."""
        g = self.G.clone()
        g.fill_diagonal_(0.0)
        total = g.sum()
        if float(total) <= 0.0:
            return torch.zeros_like(g)
        return (g + g.T) / (2.0 * total)

    def state_dict(self) -> dict:
        return {'num_slots': self.num_slots, 'mu': self.mu, 'G': self.G.clone()}

    def load_state_dict(self, state: dict) -> None:
        if int(state['num_slots']) != self.num_slots:
            raise ValueError(f"competition matrix has {state['num_slots']} slots, "
                             f'expected {self.num_slots}')
        self.mu = float(state['mu'])
        self.G = state['G'].clone().float()


def mad_loss(class_weights: torch.Tensor, gamma: torch.Tensor,
             new_classes: Sequence[int]) -> torch.Tensor:
    """
    Return ``L_MAD = sum_{pairs {a,b} with a new class} Gamma_ab |cos(q_a, q_b)|``.

    ``q`` are the class embeddings (classifier rows, ``class_weights`` shaped
    ``(S, C)`` or ``(S, C, 1, 1)``). For a new/old pair the old side is detached, so
    only the new class moves away from the old one it competes with; a new/new pair
    is counted once with both sides free.
    """
    q = class_weights.reshape(class_weights.shape[0], -1)
    q_n = F.normalize(q.float(), dim=1)
    gamma = gamma.to(q_n.device, q_n.dtype)
    new = sorted({int(c) for c in new_classes})
    if not new:
        return q.sum() * 0.0
    is_new = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
    is_new[new] = True
    new_ids = _ids(new, q.device)
    rows = q_n.index_select(0, new_ids)  # (n, C) with gradient
    cos_old = rows @ q_n.detach().T  # new vs detached everything
    cos_new = rows @ q_n.T  # new vs new with gradient on both sides
    g_rows = gamma.index_select(0, new_ids)
    old_part = (g_rows * cos_old.abs())[:, ~is_new].sum()
    pair_mask = torch.triu(torch.ones(len(new), len(new), dtype=torch.bool,
                                      device=q.device), diagonal=1)
    new_part = (g_rows[:, new_ids] * cos_new[:, new_ids].abs())[pair_mask].sum()
    return old_part + new_part


class GaussianFeatureBank:
    """
    Per-class Gaussian statistics of decoder features, for replay without images.

    For each class the bank keeps running sums of features and of their squares;
    ``fit`` turns them into a mean and a diagonal variance shrunk towards the class's
    average variance, ``var = (1 - lam) var + lam mean(var) + floor`` (a diagonal
    estimate from a few thousand correlated pixels is noisy; shrinking keeps samples
    plausible). ``sample`` draws pseudo-features that ``gfr_loss`` pushes through the
    current classifier, so old classes stay calibrated against new ones (SPA's idea).
    """

    def __init__(self, num_slots: int, dim: int, shrinkage: float = 0.1,
                 floor: float = 1e-4) -> None:
        self.num_slots = int(num_slots)
        self.dim = int(dim)
        self.shrinkage = float(shrinkage)
        self.floor = float(floor)
        self.count = torch.zeros(self.num_slots, dtype=torch.float64)
        self.sum = torch.zeros(self.num_slots, self.dim, dtype=torch.float64)
        self.sumsq = torch.zeros(self.num_slots, self.dim, dtype=torch.float64)
        self.mean = torch.zeros(self.num_slots, self.dim)
        self.var = torch.ones(self.num_slots, self.dim)
        self.fitted = torch.zeros(self.num_slots, dtype=torch.bool)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor,
               classes: Sequence[int] | None = None) -> None:
        """
        Accumulate ``features`` ``(B, C, h, w)`` of pixels labelled ``labels`` ``(B, h, w)``.

        ``classes`` limits which labels are recorded (e.g. only a step's new classes:
        the statistics of an old class must come from the step that taught it).
        Re-recording a class starts its statistics afresh.
        """
        if features.shape[1] != self.dim:
            raise ValueError(f'features have {features.shape[1]} channels, bank has {self.dim}')
        f = features.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).double().cpu()
        y = labels.reshape(-1).long().cpu()
        keep = y != IGNORE
        if classes is not None:
            allowed = torch.zeros(self.num_slots + 1, dtype=torch.bool)
            allowed[[int(c) for c in classes]] = True
            keep &= allowed[y.clamp(max=self.num_slots)]
        f, y = f[keep], y[keep]
        if y.numel() == 0:
            return
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sum.index_add_(0, y, f)
        self.sumsq.index_add_(0, y, f * f)

    def reset(self, classes: Sequence[int]) -> None:
        """Forget the running sums (and fitted statistics) of ``classes``."""
        for c in classes:
            self.count[int(c)] = 0
            self.sum[int(c)] = 0
            self.sumsq[int(c)] = 0
            self.fitted[int(c)] = False

    def fit(self, min_count: int = 2) -> list[int]:
        """Turn the running sums into mean/variance; return the classes now usable."""
        ready = self.count >= min_count
        for c in torch.nonzero(ready).flatten().tolist():
            n = self.count[c]
            mean = self.sum[c] / n
            var = (self.sumsq[c] / n - mean * mean).clamp(min=0.0)
            var = (1.0 - self.shrinkage) * var + self.shrinkage * var.mean() + self.floor
            self.mean[c] = mean.float()
            self.var[c] = var.float()
            self.fitted[c] = True
        return self.classes()

    def classes(self) -> list[int]:
        """Return the ids with fitted statistics."""
        return [int(c) for c in torch.nonzero(self.fitted).flatten()]

    def sample(self, classes: Sequence[int], n: int,
               generator: torch.Generator | None = None,
               device: torch.device | str = 'cpu') -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` features per class: ``(features (len*n, C), labels (len*n,))``."""
        classes = [int(c) for c in classes]
        missing = [c for c in classes if not bool(self.fitted[c])]
        if missing:
            raise ValueError(f'feature bank has no statistics for classes {missing}; '
                             'call update() and fit() after the step that taught them')
        ids = torch.as_tensor(classes, dtype=torch.long).repeat_interleave(int(n))
        noise = torch.randn(len(ids), self.dim, generator=generator)
        feats = self.mean[ids] + noise * self.var[ids].sqrt()
        return feats.to(device), ids.to(device)

    def state_dict(self) -> dict:
        return {'num_slots': self.num_slots, 'dim': self.dim, 'shrinkage': self.shrinkage,
                'floor': self.floor, 'count': self.count.clone(), 'sum': self.sum.clone(),
                'sumsq': self.sumsq.clone(), 'mean': self.mean.clone(),
                'var': self.var.clone(), 'fitted': self.fitted.clone()}

    def load_state_dict(self, state: dict) -> None:
        if (int(state['num_slots']), int(state['dim'])) != (self.num_slots, self.dim):
            raise ValueError(f"feature bank state is {state['num_slots']}x{state['dim']}, "
                             f'expected {self.num_slots}x{self.dim}')
        self.shrinkage = float(state['shrinkage'])
        self.floor = float(state['floor'])
        for key in ('count', 'sum', 'sumsq', 'mean', 'var', 'fitted'):
            setattr(self, key, state[key].clone())

    @classmethod
    def from_state_dict(cls, state: dict) -> 'GaussianFeatureBank':
        bank = cls(int(state['num_slots']), int(state['dim']))
        bank.load_state_dict(state)
        return bank


def gfr_loss(classify_fn: ClassifyFn, bank: GaussianFeatureBank, classes: Sequence[int],
             n: int, generator: torch.Generator | None = None,
             device: torch.device | str = 'cpu') -> torch.Tensor:
    """
    Return ``L_GFR = CE(classify(z), c)`` over ``n`` pseudo-features ``z ~ N(mu_c, Sigma_c)``.

    ``classify_fn`` is the model's ``classify`` (1x1 classifier + slot mask); the
    samples are laid out as a ``(1, C, K, 1)`` feature map so the same function serves.
    """
    feats, labels = bank.sample(classes, n, generator=generator, device=device)
    fmap = feats.T.reshape(1, bank.dim, -1, 1)
    logits = classify_fn(fmap).squeeze(-1).squeeze(0).T  # (K, S)
    return F.cross_entropy(logits.float(), labels)


def pseudo_label(target: torch.Tensor, old_logits: torch.Tensor, old_classes: Sequence[int],
                 tau: float = 0.7, unsure: int = IGNORE) -> torch.Tensor:
    """
    Return targets with background pixels relabelled by the old model (METHOD step 1).

    On pixels labelled 0, with ``p`` the old model's softmax over the old classes:
    if its argmax is an old class ``c != 0`` with ``p_c >= tau``, the target becomes
    ``c``; otherwise, if its non-background mass exceeds ``p_0`` (it believes an old
    object is there but not confidently), the pixel gets ``unsure`` (ignored, 255, by
    default; 0 keeps it background, for a loss that reads 0 as "not a new class" such
    as ``unbiased_ce``); otherwise it stays background. Labelled new-class and ignored
    pixels are unchanged.
    """
    old = _ids(sorted({int(c) for c in old_classes} | {0}), old_logits.device)
    probs = torch.softmax(old_logits.detach().float().index_select(1, old), dim=1)
    conf, idx = probs.max(dim=1)
    pred = old[idx]
    p_bg = probs[:, 0]
    is_bg = target == 0
    confident = is_bg & (pred != 0) & (conf >= tau)
    is_unsure = is_bg & ~confident & ((1.0 - p_bg) > p_bg)
    out = torch.where(confident, pred.to(target.dtype), target)
    return torch.where(is_unsure, torch.full_like(target, unsure), out)
