"""ReID metrics and protocols: hand-computed toy cases, junk rules, oracle and chance features,
and the SYSU-MM01 single-shot sampling checked against the reference `random.seed` code."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from factory.evaluation import (
    FeatureSet,
    cc_junk,
    evaluate,
    evaluate_clothes_changing,
    evaluate_llcm,
    evaluate_market,
    evaluate_prcc,
    evaluate_regdb,
    evaluate_sysu,
    market_junk,
    pairwise_distance,
    sysu_gallery_trial,
    sysu_junk,
)


def _ranked(q_pids, ranked_g_pids, **kwargs):
    """Evaluate queries whose gallery is already in rank order (distance = gallery index)."""
    num_g = len(ranked_g_pids)
    distmat = np.tile(np.arange(num_g, dtype=float), (len(q_pids), 1))
    return evaluate(
        distmat,
        np.asarray(q_pids),
        np.asarray(ranked_g_pids),
        kwargs.pop("q_cams", np.zeros(len(q_pids), int)),
        kwargs.pop("g_cams", np.ones(num_g, int)),
        **kwargs,
    )


# --- metrics on hand-computed cases ---------------------------------------------------------------


def test_toy_matrix_matches_hand_computation():
    g_pids = np.array([2, 1, 3, 1, 3])
    distmat = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5],  # ranked pids 2,1,3,1,3: q pid 1 hits at ranks 2 and 4
            [0.2, 0.4, 0.1, 0.5, 0.3],  # ranked pids 3,2,3,1,1: q pid 3 hits at ranks 1 and 3
        ]
    )
    s = evaluate(distmat, np.array([1, 3]), g_pids, np.zeros(2), np.ones(5), max_rank=5)
    # q0: AP = (1/2)(1/2 + 2/4) = 1/2, INP = 2/4, CMC = 0,1,1,1,1
    # q1: AP = (1/2)(1/1 + 2/3) = 5/6, INP = 2/3, CMC = 1,1,1,1,1
    assert s.mAP == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert s.mINP == pytest.approx((2 / 4 + 2 / 3) / 2)
    np.testing.assert_allclose(s.cmc, [0.5, 1, 1, 1, 1])
    assert s.valid_queries == 2
    assert s.rank1 == 0.5 and s.rank5 == 1.0


def test_cmc_is_padded_to_max_rank_and_as_dict_gives_floats():
    s = _ranked([1], [2, 2, 1])  # hit at rank 3 of a 3-item gallery
    assert s.cmc.shape == (50,)
    np.testing.assert_array_equal(s.cmc[:3], [0, 0, 1])
    assert s.rank10 == 1.0
    d = s.as_dict()
    assert d == {"rank1": 0.0, "rank5": 1.0, "rank10": 1.0, "mAP": pytest.approx(1 / 3), "mINP": pytest.approx(1 / 3),
                 "queries": 1, "skipped_queries": 0}
    assert all(type(d[k]) is float for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))
    with pytest.raises(ValueError, match="Rank-51"):
        s.rank(51)


def test_ties_keep_gallery_order():
    # All distances equal: the stable sort keeps gallery order, so the positive is rank 3.
    s = evaluate(np.zeros((1, 4)), np.array([7]), np.array([1, 2, 7, 3]), np.zeros(1), np.ones(4))
    assert s.mAP == pytest.approx(1 / 3)
    assert s.rank1 == 0.0 and s.rank(3) == 1.0
    # Larger galleries too (where numpy's default sort is not stable): 20 tie levels of 10 items,
    # shuffled; every other item of the nearest level (in gallery order) is a positive: ranks 1,3,5,7,9.
    distances = np.repeat(np.arange(20.0), 10)[np.random.default_rng(0).permutation(200)]
    g_pids = np.zeros(200, int)
    g_pids[np.flatnonzero(distances == 0)[::2]] = 7
    s = evaluate(distances[None], np.array([7]), g_pids, np.zeros(1), np.ones(200))
    assert s.mAP == pytest.approx((1 / 1 + 2 / 3 + 3 / 5 + 4 / 7 + 5 / 9) / 5)


def test_queries_without_positive_are_skipped():
    s = _ranked([1, 9], [2, 1, 3])  # pid 9 is not in the gallery
    assert s.valid_queries == 1
    assert s.mAP == pytest.approx(1 / 2)
    assert s.rank1 == 0.0 and s.rank(2) == 1.0


def test_no_valid_query_gives_no_figures_and_counts_them():
    s = _ranked([8, 9], [1, 2, 3])
    assert (s.valid_queries, s.skipped_queries) == (0, 2) and np.isnan(s.rank1) and np.isnan(s.mINP)
    # Junk can remove the only positive, too.
    s = _ranked([1], [1, 2], junk=np.array([[True, False]]))
    assert (s.valid_queries, s.skipped_queries) == (0, 1)


def test_dedup_cmc_changes_rank_but_not_ap():
    # Ranked pids 2,2,1: plain CMC hits at rank 3; de-duplicated list is 2,1, hit at rank 2.
    plain = _ranked([1], [2, 2, 1])
    dedup = _ranked([1], [2, 2, 1], dedup_cmc=True)
    assert plain.rank(2) == 0.0 and dedup.rank(2) == 1.0
    assert plain.mAP == dedup.mAP == pytest.approx(1 / 3)
    assert plain.mINP == dedup.mINP == pytest.approx(1 / 3)


def test_dedup_happens_after_junk_removal():
    # Ranked (pid, cam): (2, cam2) junk for a cam3 query, (2, cam1), (1, cam1).
    # Junk first leaves pids 2,1 -> hit at rank 2 (de-duplicating first would wrongly give rank 1).
    s = _ranked([1], [2, 2, 1], q_cams=np.array([3]), g_cams=np.array([2, 1, 1]), junk=sysu_junk, dedup_cmc=True)
    assert s.rank1 == 0.0 and s.rank(2) == 1.0


@pytest.mark.parametrize("metric", ["neg_dot", "cosine", "euclidean"])
def test_pairwise_distance_matches_definition(metric):
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    expected = {
        "neg_dot": lambda q, g: -q @ g,
        "cosine": lambda q, g: 1 - q @ g / (np.linalg.norm(q) * np.linalg.norm(g)),
        "euclidean": lambda q, g: np.linalg.norm(q - g),
    }[metric]
    want = np.array([[expected(q, g) for g in gf] for q in qf])
    np.testing.assert_allclose(pairwise_distance(qf, gf, metric), want, atol=1e-12)


def test_unknown_metric_raises():
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distance(np.ones((1, 2)), np.ones((1, 2)), "manhattan")


# --- junk rules -----------------------------------------------------------------------------------


def test_market_junk_drops_same_camera_and_pid_minus_one():
    # Query pid 1 cam 1. Gallery in rank order: same pid+cam (junk), pid -1 (junk),
    # pid 0 distractor (kept), pid 1 cam 2 (the positive).
    g_pids, g_cams = np.array([1, -1, 0, 1]), np.array([1, 2, 2, 2])
    mask = market_junk(np.array([1]), g_pids, np.array([1]), g_cams)
    np.testing.assert_array_equal(mask, [[True, True, False, False]])
    s = _ranked([1], g_pids, q_cams=np.array([1]), g_cams=g_cams, junk=market_junk)
    assert s.rank1 == 0.0 and s.mAP == pytest.approx(1 / 2)  # kept: pid 0, pid 1
    assert _ranked([1], g_pids, q_cams=np.array([1]), g_cams=g_cams).rank1 == 1.0


def test_sysu_junk_drops_cam2_for_cam3_queries_whatever_the_pid():
    q_cams, g_cams = np.array([3, 6]), np.array([2, 2, 1])
    mask = sysu_junk(np.array([1, 1]), np.array([1, 2, 1]), q_cams, g_cams)
    np.testing.assert_array_equal(mask, [[True, True, False], [False, False, False]])
    # Ranked pids 2 (cam2), 1 (cam2), 1 (cam1): the cam3 query sees only the cam1 positive,
    # the cam6 query sees everything and finds its first positive at rank 2.
    s = _ranked([1, 1], [2, 1, 1], q_cams=q_cams, g_cams=g_cams, junk=sysu_junk)
    assert s.rank1 == 0.5
    assert s.mAP == pytest.approx((1 + (1 / 2) * (1 / 2 + 2 / 3)) / 2)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("general", [True, False, False, False]),  # same pid and camera only
        ("cc", [True, True, False, False]),  # also same pid, same clothes
        ("sc", [True, False, True, False]),  # also same pid, different clothes
    ],
)
def test_cc_junk_modes(mode, expected):
    # Query pid 1, cam 1, clothes 0. Gallery: (pid, cam, clothes) =
    # (1,1,0) same camera, (1,2,0) same clothes, (1,2,1) changed clothes, (2,2,0) another person.
    g_pids, g_cams, g_clothes = np.array([1, 1, 1, 2]), np.array([1, 2, 2, 2]), np.array([0, 0, 1, 0])
    mask = cc_junk(np.array([1]), g_pids, np.array([1]), g_cams, np.array([0]), g_clothes, mode)
    np.testing.assert_array_equal(mask, [expected])


def test_cc_unknown_mode_raises():
    with pytest.raises(ValueError, match="clothes-changing mode"):
        cc_junk(*(np.zeros(1),) * 6, mode="xx")


# --- oracle and chance features ----------------------------------------------------------------------


def _onehot(pids, num_ids, rng=None):
    feats = np.eye(num_ids)[np.asarray(pids)]
    return feats if rng is None else feats * rng.uniform(0.5, 2.0, size=(len(feats), 1))


def _perfect(s):
    return s.rank1 == 1.0 and s.mAP == pytest.approx(1.0) and s.mINP == pytest.approx(1.0)


def _market_sets(num_ids, feats_fn):
    pids = np.arange(1, num_ids + 1)
    q_pids, q_cams = np.repeat(pids, 2), np.ones(2 * num_ids, int)
    g_pids, g_cams = np.repeat(pids, 6), np.tile([1, 1, 2, 3, 4, 5], num_ids)
    # pid -1 images that look exactly like query 1 must be dropped as junk.
    g_pids, g_cams = np.r_[g_pids, -1, -1], np.r_[g_cams, 2, 3]
    g_feat_pids = np.where(g_pids == -1, 1, g_pids)
    return FeatureSet(feats_fn(q_pids), q_pids, q_cams), FeatureSet(feats_fn(g_feat_pids), g_pids, g_cams)


def _sysu_sets(num_ids, feats_fn):
    rng = np.random.default_rng(1)
    q_pids = np.repeat(np.arange(num_ids), 4)
    q_cams = np.tile([3, 3, 6, 6], num_ids)
    rows = [
        (f"cam{cam}/{pid:04d}/{k:04d}.jpg", pid, cam)
        for pid in range(num_ids)
        for cam in (1, 2, 4, 5)
        if not (cam == 5 and pid % 2)  # some (pid, camera) folders are missing
        for k in range(rng.integers(1, 4))
    ]
    paths, g_pids, g_cams = (list(col) for col in zip(*rows))
    return FeatureSet(feats_fn(q_pids), q_pids, q_cams), FeatureSet(feats_fn(g_pids), g_pids, g_cams, paths=paths)


def _llcm_set(num_ids, cams, feats_fn):
    pids = np.repeat(np.arange(num_ids), 2 * len(cams))
    cam_col = np.tile(np.repeat(cams, 2), num_ids)
    paths = [f"{cam}/{pid:04d}/{k}.jpg" for k, (pid, cam) in enumerate(zip(pids, cam_col))]
    return FeatureSet(feats_fn(pids), pids, cam_col, paths=paths)


def test_oracle_features_are_perfect_for_every_protocol():
    n = 12
    rng = np.random.default_rng(0)
    feats = lambda pids: _onehot(pids, n + 1, rng)  # noqa: E731 - scaled one-hot: norms differ, directions don't

    q, g = _market_sets(n, lambda pids: _onehot(pids, n + 1))
    assert _perfect(evaluate_market(q, g))

    q, pool = _sysu_sets(n, feats)
    for mode in ("all", "indoor"):
        s = evaluate_sysu(q, pool, mode=mode, trials=3)
        assert _perfect(s) and s.valid_queries == 3 * len(q.pids)

    vis, nir = _llcm_set(n, [1, 2, 3], feats), _llcm_set(n, [1, 4], feats)
    for direction, query in (("ir_to_vis", nir), ("vis_to_ir", vis)):
        s = evaluate_llcm(vis, nir, direction=direction, trials=2)
        assert _perfect(s) and s.valid_queries == 2 * len(query.pids)  # every image of the query modality

    pids = np.repeat(np.arange(n), 3)
    visible = FeatureSet(feats(pids), pids, np.ones_like(pids))
    pids = np.repeat(np.arange(n), 2)  # fewer thermal images, to tell the directions apart
    thermal = FeatureSet(feats(pids), pids, np.full_like(pids, 2))
    for direction, query in (("visible_to_thermal", visible), ("thermal_to_visible", thermal)):
        s = evaluate_regdb(visible, thermal, direction=direction)
        assert _perfect(s) and s.valid_queries == len(query.pids)

    pids = np.arange(n)
    query = FeatureSet(feats(pids), pids, np.ones(n), clothes=np.zeros(n))
    g_pids = np.repeat(pids, 3)
    gallery = FeatureSet(feats(g_pids), g_pids, np.tile([2, 2, 1], n), clothes=np.tile([0, 1, 1], n))
    for mode in ("general", "cc", "sc"):
        assert _perfect(evaluate_clothes_changing(query, gallery, mode=mode))

    a = FeatureSet(feats(g_pids), g_pids, np.zeros(3 * n))
    b, c = FeatureSet(feats(pids), pids, np.ones(n)), FeatureSet(feats(pids), pids, np.full(n, 2))
    prcc = evaluate_prcc(a, b, c)
    assert set(prcc) == {"same_clothes", "clothes_changing"}
    assert all(_perfect(s) for s in prcc.values())


def test_prcc_reports_b_and_c_queries_separately():
    pids = np.arange(6)
    a = FeatureSet(_onehot(pids, 6), pids, np.zeros(6))
    b = FeatureSet(_onehot(pids, 6), pids, np.ones(6))
    c = FeatureSet(_onehot((pids + 1) % 6, 6), pids, np.full(6, 2))  # C matches the wrong person every time
    prcc = evaluate_prcc(a, b, c)
    assert prcc["same_clothes"].rank1 == 1.0 and prcc["clothes_changing"].rank1 == 0.0


def test_random_features_score_near_chance():
    rng = np.random.default_rng(0)
    q, g = _market_sets(50, lambda pids: rng.normal(size=(len(pids), 64)))
    s = evaluate_market(q, g)
    assert s.mAP < 0.2 and s.rank1 < 0.15

    q, pool = _sysu_sets(50, lambda pids: rng.normal(size=(len(pids), 64)))
    s = evaluate_sysu(q, pool, trials=2)
    assert s.mAP < 0.2 and s.rank1 < 0.15


def test_evaluate_sysu_averages_its_trials():
    rng = np.random.default_rng(3)
    q, pool = _sysu_sets(10, lambda pids: _onehot(pids, 10) + rng.normal(scale=0.8, size=(len(pids), 10)))
    records = list(zip(pool.paths, pool.pids, pool.cams))
    index = {path: i for i, path in enumerate(pool.paths)}
    per_trial = []
    for trial in range(3):
        idx = [index[path] for path, _, _ in sysu_gallery_trial(records, trial, "indoor")]
        gf = pool.feats[idx] / np.linalg.norm(pool.feats[idx], axis=1, keepdims=True)
        qf = q.feats / np.linalg.norm(q.feats, axis=1, keepdims=True)
        per_trial.append(
            evaluate(-qf @ gf.T, q.pids, pool.pids[idx], q.cams, pool.cams[idx], junk=sysu_junk, dedup_cmc=True)
        )
    s = evaluate_sysu(q, pool, mode="indoor", trials=3)
    assert 0 < s.mAP < 1  # noisy enough that the trials disagree
    assert s.mAP == pytest.approx(np.mean([t.mAP for t in per_trial]))
    assert s.mINP == pytest.approx(np.mean([t.mINP for t in per_trial]))
    np.testing.assert_allclose(s.cmc, np.mean([t.cmc for t in per_trial], axis=0))


def test_protocols_reject_unknown_modes():
    q, pool = _sysu_sets(2, lambda pids: _onehot(pids, 2))
    with pytest.raises(ValueError, match="SYSU-MM01 mode"):
        evaluate_sysu(q, pool, mode="outdoor")
    with pytest.raises(ValueError, match="LLCM direction"):
        evaluate_llcm(pool, pool, direction="sideways")
    with pytest.raises(ValueError, match="RegDB direction"):
        evaluate_regdb(q, q, direction="sideways")


# --- SYSU single-shot gallery sampling -------------------------------------------------------------


def _reference_process_gallery_sysu(data_path, mode, trial):
    """The reference loop (AGW/CAJ `data_manager.process_gallery_sysu`), on a folder tree."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    ids = sorted({pid for cam in os.listdir(data_path) for pid in os.listdir(os.path.join(data_path, cam))})
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_rgb.append(random.choice(new_files))
    return files_rgb


@pytest.fixture
def sysu_tree(tmp_path):
    """A small SYSU-like tree: uneven file counts, some (id, camera) folders missing."""
    rng = np.random.default_rng(7)
    records = []
    for pid in (1, 3, 12, 40, 333):
        for cam in (1, 2, 4, 5):
            if (pid + cam) % 5 == 0:
                continue
            folder = tmp_path / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            for k in rng.permutation(int(rng.integers(1, 9))):
                (folder / f"{k:04d}.jpg").touch()
                records.append((f"{folder}/{k:04d}.jpg", pid, cam))
    return tmp_path, records


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_sampling_matches_reference_random_seed_code(sysu_tree, mode):
    root, records = sysu_tree
    state = random.getstate()
    try:
        for trial in range(10):
            want = _reference_process_gallery_sysu(str(root), mode, trial)
            got = [path for path, _, _ in sysu_gallery_trial(records[::-1], trial, mode)]
            assert got == want
    finally:
        random.setstate(state)


def test_sysu_sampling_order_and_reproducibility(sysu_tree):
    _, records = sysu_tree
    picks = sysu_gallery_trial(records, 0, "all")
    assert picks == sysu_gallery_trial(records, 0, "all")
    assert picks != sysu_gallery_trial(records, 1, "all")
    keys = [(pid, (1, 2, 4, 5).index(cam)) for _, pid, cam in picks]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # one per (id, camera), ascending id, listed cams
    assert len(picks) == len({(pid, cam) for _, pid, cam in records})
    assert {cam for _, _, cam in sysu_gallery_trial(records, 0, "indoor")} == {1, 2}


def test_queries_without_a_valid_match_are_skipped_and_counted():
    """Clothes-changing junk removes a one-outfit person's every match: that query is left out and counted;
    with no query left the figures are NaN (null in a result dict), not an error."""
    g_pids, g_cams, g_clothes = np.array([1, 2, 2]), np.array([2, 2, 2]), np.array([0, 0, 1])
    q = dict(q_pids=np.array([1, 2]), q_cams=np.array([1, 1]), q_clothes=np.array([0, 0]))
    junk = cc_junk(q["q_pids"], g_pids, q["q_cams"], g_cams, q["q_clothes"], g_clothes, "cc")
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    s = evaluate(distmat, q["q_pids"], g_pids, q["q_cams"], g_cams, junk=junk)
    assert (s.valid_queries, s.skipped_queries, s.rank1, s.mAP) == (1, 1, 1.0, 1.0)  # person 2's other outfit
    none = evaluate(distmat[:1], q["q_pids"][:1], g_pids, q["q_cams"][:1], g_cams, junk=junk[:1])
    assert (none.valid_queries, none.skipped_queries) == (0, 1) and np.isnan(none.mAP)
    assert none.as_dict() == {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "mINP": None,
                              "queries": 0, "skipped_queries": 1}
