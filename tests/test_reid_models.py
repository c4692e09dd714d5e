"""Two-stream AGW/CAJ ReID models (docs/METHODS.md §6): network parts, losses, CAJ augmentation, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.reid.augment import (
    CIFAR_MEAN,
    channel_adap_gray,
    channel_exchange,
    channel_random_erasing,
    train_view,
)
from factory.reid.backbone import GeM, NonLocal, TwoStreamResNet, build_model
from factory.reid.losses import ADPLoss, WRTLoss, pdist

H, W = 64, 32


def _x(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=g)


@pytest.fixture(scope="module")
def tiny() -> TwoStreamResNet:
    torch.manual_seed(0)
    return build_model("tiny", num_classes=7)


# --- network -------------------------------------------------------------------------------------


def test_two_stream_shapes_in_each_mode(tiny):
    tiny.train()
    feats, logits = tiny(_x(3), _x(2, 1), modality="both")
    assert feats.shape == (5, tiny.pool_dim) and logits.shape == (5, 7)
    for mode in ("rgb", "ir"):
        feats, logits = tiny(_x(4), modality=mode)
        assert feats.shape == (4, tiny.pool_dim) and logits.shape == (4, 7)
    tiny.eval()
    out = tiny(_x(3), modality="ir")
    assert out.shape == (3, tiny.pool_dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)  # eval: L2-normalised BN feature
    with pytest.raises(ValueError):
        tiny(_x(1), modality="depth")


def test_both_mode_is_visible_then_thermal(tiny):
    tiny.eval()
    xv, xt = _x(2), _x(3, 1)
    both = tiny(xv, xt, modality="both")
    assert torch.allclose(both[:2], tiny(xv, modality="rgb"), atol=1e-5)
    assert torch.allclose(both[2:], tiny(xt, modality="ir"), atol=1e-5)


def test_stems_are_separate_and_layers_shared():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=5).eval()
    stem_ids = {id(p) for p in model.visible_stem.parameters()}
    assert not stem_ids & {id(p) for p in model.thermal_stem.parameters()}
    x = _x(2)
    rgb_before, ir_before = model(x, modality="rgb"), model(x, modality="ir")
    with torch.no_grad():
        for p in model.thermal_stem.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(model(x, modality="rgb"), rgb_before)  # IR stem change leaves the RGB path alone
    assert not torch.allclose(model(x, modality="ir"), ir_before)
    # layer1-4 exist once: both paths run the very same modules
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert {"layer1", "layer2", "layer3", "layer4", "visible_stem", "thermal_stem"} <= names
    assert not any(n.startswith(("visible_layer", "thermal_layer")) for n in names)
    with torch.no_grad():
        model.layer3[0].conv1.weight.mul_(2.0)
    assert not torch.allclose(model(x, modality="rgb"), rgb_before)
    assert not torch.allclose(model(x, modality="ir"), ir_before)


def test_non_local_placement_and_identity_at_init():
    r50 = build_model("resnet50", num_classes=3)
    assert r50.nl_idx == [[], [2, 3], [3, 4, 5], []]
    assert r50.pool_dim == 2048
    assert r50.layer4[0].conv2.stride == (1, 1) and r50.layer4[0].downsample[0].stride == (1, 1)  # last stride 1
    tiny = build_model("tiny", num_classes=3)
    assert tiny.nl_idx == [[], [0, 1], [0, 1], []]  # only blocks that exist
    assert build_model("tiny", num_classes=3, non_local=False).nl_idx == [[], [], [], []]
    nl = NonLocal(8).eval()
    assert nl.inter_channels == 1 and nl.g.out_channels == 1
    assert torch.all(nl.W[1].weight == 0) and torch.all(nl.W[1].bias == 0)
    x = torch.randn(2, 8, 5, 3)
    assert torch.equal(nl(x), x)
    # with a nonzero output BN it is no longer the identity (the block is live)
    with torch.no_grad():
        nl.W[1].weight.fill_(1.0)
    assert not torch.allclose(nl(x), x)


def test_non_local_is_dot_product_over_n():
    torch.manual_seed(1)
    nl = NonLocal(4).eval()
    with torch.no_grad():
        nl.W[1].weight.fill_(1.0)
    x = torch.randn(1, 4, 3, 2)
    n = 6
    g = nl.g(x).view(-1, n)[0]
    th = nl.theta(x).view(-1, n)[0]
    ph = nl.phi(x).view(-1, n)[0]
    y = (th[:, None] * ph[None, :] / n) @ g  # no softmax
    expected = nl.W(y.view(1, 1, 3, 2)) + x
    assert torch.allclose(nl(x), expected, atol=1e-6)


def test_gem_p3():
    x = torch.rand(2, 5, 4, 3) + 0.1
    expected = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(GeM(3.0)(x), expected, atol=1e-6)


def test_bnneck_bias_frozen_and_classifier_bias_free(tiny):
    assert tiny.bottleneck.bias.requires_grad is False
    assert torch.all(tiny.bottleneck.bias == 0)
    assert tiny.classifier.bias is None
    tiny.train()
    _, logits = tiny(_x(2), _x(2, 1))
    logits.sum().backward()
    assert tiny.bottleneck.bias.grad is None and tiny.bottleneck.weight.grad is not None
    tiny.zero_grad()


# --- losses -------------------------------------------------------------------------------------


def _wrt_by_hand(x: np.ndarray, labels: list[int]) -> float:
    n = len(x)
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 1e-12))
    losses = []
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        wp = np.exp(d[i, pos]) / np.exp(d[i, pos]).sum()
        wn = np.exp(-d[i, neg]) / np.exp(-d[i, neg]).sum()
        dp, dn = (wp * d[i, pos]).sum(), (wn * d[i, neg]).sum()
        losses.append(math.log1p(math.exp(dp - dn)))
    return float(np.mean(losses))


def test_wrt_matches_hand_computation():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 3.0], [0.5, 0.5]])
    labels = [0, 0, 1, 1, 0]
    # anchor 0 by hand: positives d = (~0, 1, 0.7071), negatives d = (2, 3.1623)
    dp = np.array([1e-6, 1.0, math.sqrt(0.5)])
    dn = np.array([2.0, math.sqrt(10.0)])
    dp_bar = (np.exp(dp) * dp).sum() / np.exp(dp).sum()
    dn_bar = (np.exp(-dn) * dn).sum() / np.exp(-dn).sum()
    anchor0 = math.log1p(math.exp(dp_bar - dn_bar))
    assert abs(dp_bar - 0.7226) < 1e-3 and abs(dn_bar - 2.2775) < 1e-3
    assert abs(anchor0 - 0.1917) < 1e-3
    per_anchor = _wrt_by_hand(x[[0]].repeat(1, 0), [0])  # smoke: helper runs on one row
    assert per_anchor >= 0
    loss, _ = WRTLoss()(torch.tensor(x, dtype=torch.float64), torch.tensor(labels))
    assert abs(float(loss) - _wrt_by_hand(x, labels)) < 1e-5


def test_wrt_low_when_separated_and_high_when_not():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    sep = torch.tensor([[0.0, 0], [0, 0.01], [20, 0], [20, 0.01], [0, 20], [0, 20.01]])
    loss, correct = WRTLoss()(sep, labels)
    assert float(loss) < 1e-6 and correct == 6
    mixed = torch.tensor([[0.0, 0], [20, 0], [0, 0.01], [20, 0.01], [10, 10], [10, 10.01]])
    bad, correct = WRTLoss()(mixed, labels)
    assert float(bad) > 5 and correct < 6


def test_adp_sign_and_clamp():
    labels = torch.tensor([0, 0, 1, 1])
    sep = torch.tensor([[0.0, 0], [0, 0.1], [5, 0], [5, 0.1]])
    loss, _ = ADPLoss()(sep, labels)
    # d̄_p < d̄_n: y = +1, x = (d̄_p − d̄_n)^2 large -> loss ≈ 0
    assert float(loss) < 1e-6
    swapped = torch.tensor([[0.0, 0], [50, 0], [0, 0.1], [50, 0.1]])
    loss, correct = ADPLoss()(swapped, labels)
    assert correct == 0 and abs(float(loss) - 88.0) < 1e-3  # y = -1, x clamped at 88 -> log(1+e^88)
    assert pdist(sep, sep).min() > 0


# --- CAJ channel augmentation -----------------------------------------------------------------------


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def test_visible_exchange_has_identical_channels():
    for s in range(10):
        v = train_view(_img(s), "visible_exchange", np.random.default_rng(s))
        assert v.shape == (3, H, W) and v.dtype == np.float32
        assert np.array_equal(v[0], v[1]) and np.array_equal(v[1], v[2])
    chw = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    outs = [channel_exchange(chw, np.random.default_rng(s)) for s in range(30)]
    seen = {c for out in outs for c in range(3) if np.array_equal(out[0], chw[c])}
    assert seen == {0, 1, 2}  # every channel is chosen


def test_ir_replication_and_grayscale():
    chw = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    gray = 0.2989 * chw[0] + 0.5870 * chw[1] + 0.1140 * chw[2]
    kinds = set()
    for s in range(60):
        out = channel_adap_gray(chw, np.random.default_rng(s))
        if np.array_equal(out, chw):
            kinds.add("unchanged")  # k = 3 without grayscale
            continue
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
        match = [c for c in range(3) if np.array_equal(out[0], chw[c])]
        if match:
            kinds.add(match[0])
        else:
            assert np.allclose(out[0], gray, atol=1e-6)
            kinds.add("gray")
    assert kinds == {0, 1, 2, "gray", "unchanged"}


def test_channel_erasing_fills_cifar_means():
    chw = np.full((3, H, W), 7.0, dtype=np.float32)
    erased = [channel_random_erasing(chw, np.random.default_rng(s)) for s in range(20)]
    changed = [e for e in erased if not np.array_equal(e, chw)]
    assert 0 < len(changed) < 20  # p = 0.5
    for e in changed:
        erased_mask = e[0] != 7.0
        assert erased_mask.any()
        for c in range(3):
            assert np.array_equal(e[c] != 7.0, erased_mask)  # one rectangle, same on every channel
            assert np.allclose(e[c][erased_mask], CIFAR_MEAN[c])


def test_augmentation_deterministic_per_generator():
    img = _img(3)
    for view in ("visible", "visible_exchange", "ir"):
        a = train_view(img, view, np.random.default_rng(42))
        b = train_view(img, view, np.random.default_rng(42))
        assert np.array_equal(a, b)
    views = [train_view(img, "visible", np.random.default_rng(s)) for s in range(8)]
    assert any(not np.array_equal(views[0], v) for v in views[1:])


# --- training beats initialisation ------------------------------------------------------------------


@pytest.mark.slow  # about 2 minutes on a loaded 2-core CPU: CI runs it, the `-m "not slow"` loop does not
def test_training_beats_initialisation(monkeypatch, tmp_path):
    """Tiny two-stream AGW net (CE + WRT, Adam 3e-3, 12 epochs) on the SYSU-like world, all-search, 10 galleries.

    identities=100 gives 80 training and 20 test identities; images at the world's native
    128×64. Measured on 2 CPU cores: seed 0 mAP 0.213 vs 0.127 untrained (2026-12-05;
    30 epochs at 2e-3 gave 0.179 in 3.5 minutes, 2026-11-22; the `init` and `real` rows of
    `python -m experiments.reid_ab` print this comparison over 3 seeds). Smaller settings
    were not reliable: 64 identities at 64×32 gave 0.191 vs 0.159, 160 identities at 64×32
    0.109 vs 0.085, so resolution matters more than identity count here. The margin
    asserted (+30 % and +0.03) is below the measured +68 %.
    """
    from factory.datasets import load_dataset
    from factory.reid.evaluate import evaluate_model
    from factory.reid.spec import EvaluationSpec, ModelSpec, TrainSpec
    from factory.reid.train import build_reid_model, train_model, trainset_from_records

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the benchmark's setting; two threads thrash on a loaded 2-core box
    splits = load_dataset("world://sysu?identities=100&seed=0")
    model = ModelSpec(arch="agw", preset="tiny", height=128, width=64)
    size = (model.height, model.width)
    torch.manual_seed(0)
    init = build_reid_model(model, 10).eval()
    try:
        trained = train_model(trainset_from_records(splits["train"], size), model,
                              TrainSpec(epochs=12, p=4, k=4, lr=3e-3, optimizer="adam"), seed=0)
    finally:
        torch.set_num_threads(threads)
    assert trained.log[-1]["loss"] < trained.log[0]["loss"] - 1.0
    evaluation = EvaluationSpec(modes=["all"], trials=10)
    map_init = evaluate_model(init, splits, size, evaluation)["results"]["all"]["mAP"]
    map_trained = evaluate_model(trained.model, splits, size, evaluation)["results"]["all"]["mAP"]
    print(f"sysu all-search mAP: trained {map_trained:.3f} vs init {map_init:.3f}")
    assert map_trained > max(1.3 * map_init, map_init + 0.03)


def test_cal_head_and_losses():
    from factory.reid.cal import CALHead, CALLosses, ClothesBasedAdversarialLoss

    head = CALHead(8, num_pids=3)
    feat, logits = head(torch.rand(4, 8, 5, 3))
    assert feat.shape == (4, 16) and logits.shape == (4, 3)
    # CAL loss by hand: one sample, clothes 0,1 of its pid, clothes 2 of another pid
    cos = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    z = 16 * cos[0]
    lp = [z[c] - torch.log(torch.exp(z[2]) + torch.exp(z[c])) for c in range(3)]
    target = [0.9 + 0.05, 0.05, 0.0]
    expected = -sum(t * log_p for t, log_p in zip(target, lp))
    got = ClothesBasedAdversarialLoss()(cos, torch.tensor([0]), mask)
    assert torch.allclose(got, expected, atol=1e-5)
    losses = CALLosses(16, num_clothes=4)
    pids, clothes, c2p = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2])
    losses.clothes(feat, clothes).backward(retain_graph=True)
    assert head.bn.weight.grad is None  # clothes loss sees detached features
    early = losses.model(feat, logits, pids, clothes, c2p, epoch=0)
    late = losses.model(feat, logits, pids, clothes, c2p, epoch=25)
    assert float(late.detach()) > float(early.detach())


def test_backbone_init_does_not_depend_on_the_number_of_classes():
    """A/B runs with extra synthetic classes must start from the same network."""
    torch.manual_seed(0)
    a = build_model("tiny", num_classes=10).state_dict()
    torch.manual_seed(0)
    b = build_model("tiny", num_classes=300).state_dict()
    shared = [k for k in a if not k.startswith("classifier")]
    assert shared and all(torch.equal(a[k], b[k]) for k in shared)
