# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""Loss terms checked against small hand-computed cases and their defining formulas."""
import math

from ldka_ros.learning import losses as L
import pytest
import torch
import torch.nn.functional as F


def _logits(values):
    """(S,) or (S, P) list -> logits tensor (1, S, 1, P)."""
    t = torch.tensor(values, dtype=torch.float64)
    if t.dim() == 1:
        t = t.unsqueeze(1)
    return t.unsqueeze(0).unsqueeze(2)


def test_logit_margin_hand_case():
    logits = _logits([[2.0, 0.0], [1.0, 3.0], [-1.0, 2.5]])  # 3 classes, 2 pixels
    target = torch.tensor([[[0, 255]]])
    m = L.logit_margin(logits, target)
    assert m.shape == (1, 1, 2)
    assert m[0, 0, 0].item() == pytest.approx(2.0 - 1.0)
    assert m[0, 0, 1].item() == 0.0  # ignored pixel
    m2 = L.logit_margin(logits, torch.tensor([[[2, 1]]]))
    assert m2[0, 0, 0].item() == pytest.approx(-1.0 - 2.0)
    assert m2[0, 0, 1].item() == pytest.approx(3.0 - 2.5)


def test_pml_weights_sum_to_n_and_follow_schedule():
    torch.manual_seed(0)
    margins = torch.randn(2, 5, 7) * 3
    valid = torch.rand(2, 5, 7) > 0.3
    n = int(valid.sum())
    for progress in (0.0, 0.3, 0.5, 1.0):
        w = L.pml_weights(margins, progress, beta0=1.5, valid=valid)
        assert w.sum().item() == pytest.approx(n, rel=1e-5)
        assert (w[~valid] == 0).all()
    # p = 0.5: beta = 0, uniform weights
    w_mid = L.pml_weights(margins, 0.5, 1.5, valid)
    assert torch.allclose(w_mid[valid], torch.ones(n))
    # early: easy (high-margin) pixels weigh more; late: hard (low-margin) ones
    m = margins[valid]
    early, late = L.pml_weights(margins, 0.0, 1.5, valid)[valid], \
        L.pml_weights(margins, 1.0, 1.5, valid)[valid]
    assert early[m.argmax()] > early[m.argmin()]
    assert late[m.argmin()] > late[m.argmax()]
    # the hand formula at p = 1 (beta = beta0)
    scaled = m / (m.std(unbiased=False) + L.EPS)
    expected = n * torch.exp(-1.5 * scaled) / torch.exp(-1.5 * scaled).sum()
    assert torch.allclose(late, expected, rtol=1e-5)


def test_pml_weights_carry_no_gradient():
    margins = torch.randn(1, 4, 4, requires_grad=True)
    w = L.pml_weights(margins, 1.0, 2.0)
    assert not w.requires_grad


def test_pml_loss_equals_ce_at_midpoint():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, 0, :3] = 255
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert L.pml_loss(logits, target, 0.5, 1.0).item() == pytest.approx(ce.item(), rel=1e-5)
    assert L.pml_loss(logits, target, 1.0, 1.0).item() != pytest.approx(ce.item(), rel=1e-3)


def test_unbiased_ce_hand_case():
    logits = _logits([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0]])  # classes 0, 1 (old), 2 (new)
    target = torch.tensor([[[0, 2]]])
    per = L.unbiased_ce(logits, target, old_classes=[0, 1], reduction='none')
    p0 = torch.softmax(logits[0, :, 0, 0], 0)
    p1 = torch.softmax(logits[0, :, 0, 1], 0)
    assert per[0, 0, 0].item() == pytest.approx(-math.log(p0[0] + p0[1]))
    assert per[0, 0, 1].item() == pytest.approx(-math.log(p1[2]))


def test_unbiased_kd_equals_plain_kd_without_new_classes():
    torch.manual_seed(2)
    old_logits = torch.randn(2, 6, 5, 5)
    logits = torch.randn(2, 6, 5, 5)
    old = [0, 1, 2, 3]
    q = torch.softmax(old_logits[:, old], 1)
    log_p = torch.log_softmax(logits, 1)[:, old]
    plain = -(q * log_p).sum(1).mean() / len(old)
    unbiased = L.unbiased_kd(logits, old_logits, old, [])
    assert unbiased.item() == pytest.approx(plain.item(), rel=1e-5)
    # with new classes (4, 5), background absorbs them
    folded = torch.logsumexp(logits[:, [0, 4, 5]], 1) - torch.logsumexp(logits, 1)
    log_p2 = torch.cat([folded.unsqueeze(1), log_p[:, 1:]], 1)
    expected = -(q * log_p2).sum(1).mean() / len(old)
    assert L.unbiased_kd(logits, old_logits, old, [4, 5]).item() == pytest.approx(
        expected.item(), rel=1e-5)


def test_curvature_kappa_is_second_derivative_of_ce_along_margin():
    torch.manual_seed(3)
    for _ in range(5):
        s = torch.randn(5, dtype=torch.float64) * 2
        kappa, a, b = L.top2_curvature(s.view(1, 5, 1, 1))
        a, b = int(a), int(b)
        u = torch.zeros(5, dtype=torch.float64)
        u[a], u[b] = 1.0, -1.0

        def ce(t):
            return F.cross_entropy((s + t * u).unsqueeze(0), torch.tensor([a])).item()

        h = 1e-3
        fd = (ce(h) - 2 * ce(0.0) + ce(-h)) / h ** 2
        assert kappa.item() == pytest.approx(fd, rel=1e-4, abs=1e-6)
        assert kappa.item() <= 1.0 + 1e-9


def test_curvature_damping_zero_when_margins_do_not_move():
    torch.manual_seed(4)
    old = torch.randn(2, 5, 4, 4)
    shift = torch.randn(2, 1, 4, 4)  # adding the same value to every class keeps margins
    assert L.curvature_damping(old + shift, old).item() == pytest.approx(0.0, abs=1e-10)
    moved = old.clone()
    moved[:, 0] += 1.0
    assert L.curvature_damping(moved, old).item() > 0.0


def test_curvature_damping_hand_case():
    old = _logits([0.0, 1.0, -2.0])  # top-2: a = 1, b = 0
    new = _logits([0.5, 1.0, 3.0])
    p = torch.softmax(old[0, :, 0, 0], 0)
    kappa = p[1] + p[0] - (p[1] - p[0]) ** 2
    dm = (1.0 - 0.5) - (1.0 - 0.0)
    assert L.curvature_damping(new, old).item() == pytest.approx((kappa * dm ** 2).item())


def test_curvature_damping_shrink_only_ignores_growing_margins():
    old = torch.cat([_logits([0.0, 1.0, -2.0]), _logits([0.0, 1.0, -2.0])], dim=3)
    new = old.clone()
    new[0, 1, 0, 0] = 3.0  # pixel 0: top-1 margin grows by 2
    new[0, 0, 0, 1] = 0.5  # pixel 1: margin shrinks by 0.5
    p = torch.softmax(old[0, :, 0, 0], 0)
    kappa = (p[1] + p[0] - (p[1] - p[0]) ** 2).item()
    both = L.curvature_damping(new, old).item()
    assert both == pytest.approx(kappa * (2.0 ** 2 + 0.5 ** 2) / 2)
    student = new.clone().requires_grad_(True)
    shrink = L.curvature_damping(student, old, shrink_only=True)
    assert shrink.item() == pytest.approx(kappa * 0.5 ** 2 / 2)
    shrink.backward()
    assert torch.all(student.grad[..., 0] == 0)  # the growing pixel is left alone
    assert student.grad[0, 0, 0, 1].item() > 0  # raising b's logit is what is penalised
    grown = old.clone()
    grown[0, 1] += 1.0
    assert L.curvature_damping(grown, old, shrink_only=True).item() == 0.0


def test_perturbation_loss_zero_without_noise_and_positive_with_it():
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(8, 4, 1)
    feats = torch.randn(2, 8, 5, 5)
    assert L.perturbation_loss(conv, feats, sigma=0.0).item() == pytest.approx(0.0)
    loss = L.perturbation_loss(conv, feats, sigma=0.1)
    assert loss.item() > 0.0
    loss.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_competition_matrix_symmetric_normalised_and_ema():
    cm = L.CompetitionMatrix(4, mu=0.5)
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.6, 0.3, 0.0]])
    target = torch.tensor([0, 1])
    cm.update(probs.T.reshape(1, 4, 1, 2), target.view(1, 1, 2))
    # row 0: 0.5 * [0, 0.2, 0.1, 0]; row 1: 0.5 * [0.1, 0, 0.3, 0]
    assert cm.G[0, 1].item() == pytest.approx(0.1)
    assert cm.G[1, 2].item() == pytest.approx(0.15)
    assert cm.G[2].abs().sum().item() == 0.0  # class 2 absent: row unchanged
    gamma = cm.gamma()
    assert torch.allclose(gamma, gamma.T)
    assert torch.diagonal(gamma).abs().sum().item() == 0.0
    assert gamma.sum().item() == pytest.approx(1.0)
    total = cm.G.sum().item()
    assert gamma[0, 1].item() == pytest.approx((0.1 + 0.05) / (2 * total))


def test_mad_loss_detaches_old_side():
    torch.manual_seed(6)
    w = torch.randn(4, 8, requires_grad=True)
    gamma = torch.full((4, 4), 1.0 / 12)
    gamma.fill_diagonal_(0.0)
    loss = L.mad_loss(w, gamma, new_classes=[3])
    qn = F.normalize(w.detach(), dim=1)
    expected = sum(gamma[3, b] * (qn[3] @ qn[b]).abs() for b in range(3))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert w.grad[:3].abs().sum().item() == 0.0
    assert w.grad[3].abs().sum().item() > 0.0


def test_gaussian_feature_bank_statistics_and_state():
    torch.manual_seed(7)
    feats = torch.randn(2, 3, 10, 10)
    feats[:, :, :5] += 4.0  # class 1 rows are shifted
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[:, :5] = 1
    labels[0, 9] = 255
    bank = L.GaussianFeatureBank(num_slots=4, dim=3, shrinkage=0.0, floor=0.0)
    bank.update(feats, labels, classes=[1])
    assert bank.fit() == [1]
    f1 = feats.permute(0, 2, 3, 1)[labels == 1]
    assert torch.allclose(bank.mean[1], f1.mean(0), atol=1e-5)
    assert torch.allclose(bank.var[1], f1.var(0, unbiased=False), atol=1e-5)
    samples, ids = bank.sample([1], 2000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2000, 3) and (ids == 1).all()
    assert torch.allclose(samples.mean(0), bank.mean[1], atol=0.15)
    with pytest.raises(ValueError, match='no statistics'):
        bank.sample([2], 3)
    clone = L.GaussianFeatureBank.from_state_dict(bank.state_dict())
    assert torch.equal(clone.mean, bank.mean) and clone.classes() == [1]
    conv = torch.nn.Conv2d(3, 4, 1)
    loss = L.gfr_loss(conv, bank, [1], 16)
    assert loss.item() > 0 and loss.requires_grad


def test_pseudo_label_rules():
    # pixel 0: confident old class 2; pixel 1: unsure, non-bg mass > bg -> ignore;
    # pixel 2: background wins -> stays 0; pixel 3: labelled new class 5 -> unchanged
    old = torch.full((1, 6, 1, 4), -1e4)
    old[0, :3, 0, 0] = torch.tensor([0.0, 0.0, 4.0])
    old[0, :3, 0, 1] = torch.tensor([0.0, 0.5, 0.5])
    old[0, :3, 0, 2] = torch.tensor([3.0, 0.0, 0.0])
    old[0, :3, 0, 3] = torch.tensor([0.0, 0.0, 9.0])
    target = torch.tensor([[[0, 0, 0, 5]]])
    out = L.pseudo_label(target, old, old_classes=[0, 1, 2], tau=0.7)
    assert out.tolist() == [[[2, 255, 0, 5]]]
    # the unsure pixel kept as background, for the unbiased CE (variant ldka:pl-unbiased)
    kept = L.pseudo_label(target, old, old_classes=[0, 1, 2], tau=0.7, unsure=0)
    assert kept.tolist() == [[[2, 0, 0, 5]]]


def test_unbiased_ce_over_pseudo_labels_says_only_not_new_on_background():
    """
    A pseudo-labelled pixel gets plain CE on its old class; a background one only "not new".

    Background pixel: moving mass between background and an old class costs nothing,
    moving it to a new class does; the pseudo-labelled pixel is held to its class.
    """
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).T.reshape(1, 4, 1, 1).repeat(1, 1, 1, 2)
    target = torch.tensor([[[2, 0]]])  # pixel 0 pseudo-labelled class 2, pixel 1 background
    per = L.unbiased_ce(logits, target, old_classes=[0, 1, 2], reduction='none')
    log_p = torch.log_softmax(logits, dim=1)
    assert per[0, 0, 0].item() == pytest.approx(-log_p[0, 2, 0, 0].item(), rel=1e-5)
    assert per[0, 0, 1].item() == pytest.approx(-math.log(1 - log_p[0, 3, 0, 1].exp().item()),
                                                rel=1e-5)
    swapped = logits.clone()
    swapped[0, [0, 1], 0, 1] = logits[0, [1, 0], 0, 1]  # background <-> old class 1
    again = L.unbiased_ce(swapped, target, old_classes=[0, 1, 2], reduction='none')
    assert again[0, 0, 1].item() == pytest.approx(per[0, 0, 1].item(), rel=1e-6)
    raised = logits.clone()
    raised[0, 3, 0, 1] = 3.0  # the new class 3 more likely
    worse = L.unbiased_ce(raised, target, old_classes=[0, 1, 2], reduction='none')
    assert worse[0, 0, 1].item() > per[0, 0, 1].item() + 0.5


def test_unbiased_margin_reads_background_as_old_against_new():
    # classes 0-2 old, 3 new; pixel 0 background where old class 2 wins, pixel 1
    # background where the new class wins, pixel 2 pseudo-labelled 2, pixel 3 ignored
    logits = torch.tensor([[0.0, -1.0, 3.0, 1.0], [0.0, -1.0, 0.5, 2.0],
                           [0.0, -1.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).T.reshape(1, 4, 1, 4)
    target = torch.tensor([[[0, 0, 2, 255]]])
    plain = L.logit_margin(logits, target)
    m = L.unbiased_margin(logits, target, old_classes=[0, 1, 2])
    fold = torch.logsumexp(logits[0, :3, 0, :2], dim=0) - logits[0, 3, 0, :2]
    assert plain[0, 0, 0].item() == pytest.approx(-3.0)  # plain: background looks lost
    assert m[0, 0, :2].tolist() == pytest.approx(fold.tolist(), rel=1e-5)
    assert m[0, 0, 0].item() > 1.0 and m[0, 0, 1].item() < 0.0
    assert m[0, 0, 2].item() == pytest.approx(plain[0, 0, 2].item()) and m[0, 0, 3] == 0
    # no class outside the old ones: nothing to fold against, the plain margin
    assert torch.equal(L.unbiased_margin(logits, target, old_classes=[0, 1, 2, 3]), plain)


def test_curvature_damping_folds_new_classes_into_background():
    # MiB's initialisation (new rows = background, biases lowered by log(n + 1)) keeps
    # the folded background logit, so it must not count as a margin change.
    torch.manual_seed(8)
    old = torch.randn(1, 6, 3, 3)
    old[:, 4:] = -1e4  # slots 4, 5 inactive in the old model
    new = old.clone()
    new[:, 0] = old[:, 0] - math.log(3)
    new[:, 4] = new[:, 0]
    new[:, 5] = new[:, 0]
    assert L.curvature_damping(new, old, new_classes=[4, 5]).item() == pytest.approx(
        0.0, abs=1e-8)
    assert L.curvature_damping(new, old).item() > 0.0


def test_class_balance_weights_hand_case():
    # 6 valid pixels: five of class 0, one of class 3; one ignored pixel.
    target = torch.tensor([[[0, 0, 0, 0, 0, 3, L.IGNORE]]])
    plain = L.class_balance_weights(target, 0.0)
    assert plain.tolist() == [[[1, 1, 1, 1, 1, 1, 0]]]
    equal = L.class_balance_weights(target, 1.0)
    assert float(equal.sum()) == pytest.approx(6.0)  # budget kept: sum w = N
    # power 1: each present class gets the same total weight, N / 2 = 3
    assert float(equal[0, 0, :5].sum()) == pytest.approx(3.0)
    assert float(equal[0, 0, 5]) == pytest.approx(3.0)
    assert float(equal[0, 0, 6]) == 0.0
    half = L.class_balance_weights(target, 0.5)
    # power 0.5: weights proportional to 1/sqrt(n_c): 5 * a / sqrt(5) + a / 1 = 6
    a = 6.0 / (5 ** 0.5 + 1.0)
    assert float(half[0, 0, 5]) == pytest.approx(a)
    assert float(half[0, 0, 0]) == pytest.approx(a / 5 ** 0.5)
    # weighted mean of a per-pixel loss divides by the valid count
    loss = torch.tensor([[[1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 100.0]]])
    assert float(L.weighted_mean(loss, equal)) == pytest.approx((3.0 * 1.0 + 3.0 * 4.0) / 6)


def test_split_balance_keeps_the_new_class_share_and_balances_old_classes():
    # step labels: 8 background pixels, 2 of the new class 5, one ignored pixel;
    # pseudo-labels turn 6 of the background pixels into old class 1 (5 pixels) and
    # old class 2 (1 pixel), and mark one background pixel unsure (ignored).
    step = torch.tensor([[[0, 0, 0, 0, 0, 0, 0, 0, 5, 5, L.IGNORE]]])
    pseudo = torch.tensor([[[1, 1, 1, 1, 1, 2, 0, L.IGNORE, 5, 5, L.IGNORE]]])
    split = L.split_balance_weights(step, pseudo, 1.0)
    by_step = L.class_balance_weights(step, 1.0)
    by_target = L.class_balance_weights(pseudo, 1.0)
    new_share = float(split[0, 0, 8:10].sum() / split.sum())
    # the new class keeps the share the step labels give it (MiB's 1/2) ...
    assert new_share == pytest.approx(0.5)
    # ... where balancing over the pseudo-labels gives it 1/4 (four present classes)
    assert float(by_target[0, 0, 8:10].sum() / by_target.sum()) == pytest.approx(0.25)
    # inside background's half the old classes and background get equal totals
    totals = [float(split[0, 0, :5].sum()), float(split[0, 0, 5]), float(split[0, 0, 6])]
    assert totals == pytest.approx([totals[0]] * 3)
    # step-label balancing instead spreads that half by pixel count (class 2: 1/8 of it)
    assert float(by_step[0, 0, 5]) == pytest.approx(float(by_step[0, 0, :5].sum()) / 5)
    # unsure and ignored pixels carry no weight
    assert float(split[0, 0, 7]) == 0.0 and float(split[0, 0, 10]) == 0.0
    # power 0 is plain averaging over the pixels the target keeps
    plain = L.split_balance_weights(step, pseudo, 0.0)
    assert plain[0, 0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0]
