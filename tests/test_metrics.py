"""Dice (Kaggle and positive-pair) against hand-computed values and a naive loop; post-processing; bad input."""
import math

import numpy as np
import pytest
import torch

from gmlib.metrics import (DiceMeter, PostprocessTuner, dice_kaggle, dice_pairs, dice_positive, postprocess,
                           tune_postprocess)


def naive_dice(pred, target):
    """Oracle: a plain loop over (image, class) pairs."""
    out = np.zeros(pred.shape[:2])
    for n in range(pred.shape[0]):
        for c in range(pred.shape[1]):
            p, t = pred[n, c].astype(bool), target[n, c].astype(bool)
            total = p.sum() + t.sum()
            out[n, c] = 1.0 if total == 0 else 2 * (p & t).sum() / total
    return out


def hand_case():
    pred, target = torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 3)
    target[0, 0, 0, :] = 1  # class 1: target 3 px, prediction 2 px, 1 shared -> 2*1/(3+2) = 0.4
    pred[0, 0, 0, 0] = pred[0, 0, 1, 0] = 1
    pred[0, 2, 1, 2] = 1  # class 3: empty target, 1 predicted px -> 0
    target[0, 3] = pred[0, 3] = 1  # class 4: perfect -> 1; class 2: both empty -> 1
    return pred, target


def test_empty_vs_empty_is_one_and_empty_vs_nonempty_is_zero():
    empty, full = torch.zeros(2, 4, 5, 7), torch.ones(2, 4, 5, 7)
    assert dice_kaggle(empty, empty) == 1.0
    assert dice_kaggle(empty, full) == 0.0
    assert dice_kaggle(full, empty) == 0.0
    assert math.isnan(dice_positive(empty, empty))
    assert dice_positive(empty, full) == 0.0


def test_hand_computed_case():
    pred, target = hand_case()
    assert dice_kaggle(pred, target) == pytest.approx((0.4 + 1 + 0 + 1) / 4)
    assert dice_positive(pred, target) == pytest.approx((0.4 + 1) / 2)
    assert torch.allclose(dice_kaggle(pred, target, per_class=True), torch.tensor([0.4, 1, 0, 1], dtype=torch.float64))
    per_class = dice_positive(pred, target, per_class=True)
    assert per_class[0] == pytest.approx(0.4) and per_class[3] == 1.0
    assert per_class[1].isnan() and per_class[2].isnan()  # no positive pair for classes 2 and 3


def test_matches_naive_loop_on_random_masks():
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(6, 4, 9, 11, generator=g) < 0.3).float()
    target = (torch.rand(6, 4, 9, 11, generator=g) < 0.2).float()
    target[0] = 0  # some empty targets
    pred[1, 2] = 0
    oracle = naive_dice(pred.numpy(), target.numpy())
    dice, positive = dice_pairs(pred, target)
    assert np.allclose(dice.numpy(), oracle)
    assert dice_kaggle(pred, target) == pytest.approx(oracle.mean())
    pos = target.numpy().any((2, 3))
    assert dice_positive(pred, target) == pytest.approx(oracle[pos].mean())
    assert torch.equal(positive, torch.from_numpy(pos))


def test_bool_and_int_inputs_agree_with_float():
    pred, target = hand_case()
    assert dice_kaggle(pred.bool(), target.long()) == dice_kaggle(pred, target)


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 4), "shapes differ"),
    (torch.full((1, 4, 3, 3), 0.5), torch.zeros(1, 4, 3, 3), "only 0 and 1"),
    (torch.zeros(4, 3, 3), torch.zeros(4, 3, 3), r"\(N, C, H, W\)"),
])
def test_bad_input_is_a_clear_error(pred, target, message):
    with pytest.raises(ValueError, match=message):
        dice_kaggle(pred, target)


def test_postprocess_threshold_and_min_area():
    probs = torch.zeros(2, 4, 4, 4)
    probs[0, 0, :2, :2] = 0.9  # 4 px of class 1
    probs[0, 1, 0, 0] = 0.7  # 1 px of class 2
    probs[1, 2] = 0.6  # 16 px of class 3
    probs[1, 3, 0, 0] = 0.5  # not above the threshold
    masks = postprocess(probs)
    assert masks.sum((2, 3)).tolist() == [[4, 1, 0, 0], [0, 0, 16, 0]]
    masks = postprocess(probs, min_area=[5, 1, 10, 0])
    assert masks.sum((2, 3)).tolist() == [[0, 1, 0, 0], [0, 0, 16, 0]]
    assert postprocess(probs, min_area=2).sum((2, 3)).tolist() == [[4, 0, 0, 0], [0, 0, 16, 0]]
    assert postprocess(probs, threshold=0.65).sum().item() == 5
    # one threshold per class
    assert postprocess(probs, threshold=[0.95, 0.6, 0.55, 0.4]).sum((2, 3)).tolist() == [[0, 1, 0, 0], [0, 0, 16, 1]]


@pytest.mark.parametrize("probs, kwargs, message", [
    (torch.full((1, 4, 2, 2), 1.5), {}, r"in \[0, 1\]"),
    (torch.zeros(1, 4, 2, 2), {"min_area": [1, 2]}, "min_area"),
    (torch.zeros(1, 4, 2, 2), {"threshold": 2.0}, "threshold"),
    (torch.zeros(1, 4, 2, 2), {"threshold": [0.5, 0.5]}, "threshold"),
    (torch.zeros(4, 2, 2), {}, r"\(N, C, H, W\)"),
])
def test_postprocess_rejects_bad_input(probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        postprocess(probs, **kwargs)


def test_dice_meter_equals_one_shot():
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(7, 4, 5, 5, generator=g) < 0.3).float()
    target = (torch.rand(7, 4, 5, 5, generator=g) < 0.1).float()
    meter = DiceMeter()
    for lo in range(0, 7, 3):
        meter.update(pred[lo:lo + 3], target[lo:lo + 3])
    result = meter.compute()
    assert result["dice_kaggle"] == pytest.approx(dice_kaggle(pred, target))
    assert result["dice_positive"] == pytest.approx(dice_positive(pred, target))
    assert np.allclose(result["dice_positive_per_class"], dice_positive(pred, target, per_class=True).numpy(),
                       equal_nan=True)
    with pytest.raises(ValueError, match="before any update"):
        DiceMeter().compute()


def test_tune_postprocess_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(12, 3, 8, 8, dtype=torch.bool)
    for n in range(0, 12, 2):  # half the images carry a 3x3 defect of class n % 3
        target[n, n % 3, 2:5, 2:5] = True
    probs = (0.45 * target + 0.8 * torch.rand(12, 3, 8, 8, generator=g)).clamp(0, 1)  # noisy, with false alarms
    thresholds, areas = (0.3, 0.5, 0.7, 0.9), (0, 2, 5, 12)
    tuned = tune_postprocess(probs, target, thresholds=thresholds, min_areas=areas)
    for c in range(3):
        best = max(((dice_kaggle(postprocess(probs[:, c:c + 1], t, a), target[:, c:c + 1]), -i, -j)
                    for i, t in enumerate(thresholds) for j, a in enumerate(areas)))
        assert tuned["dice_kaggle_per_class"][c] == pytest.approx(best[0])
        assert (tuned["threshold"][c], tuned["min_area"][c]) == (thresholds[-best[1]], areas[-best[2]])
    masks = postprocess(probs, tuned["threshold"], tuned["min_area"])
    assert dice_kaggle(masks, target, per_class=True).tolist() == pytest.approx(tuned["dice_kaggle_per_class"])
    assert dice_kaggle(masks, target) > dice_kaggle(postprocess(probs), target)  # tuning helps on this noise


def test_postprocess_tuner_fed_in_batches_chooses_as_one_call_does():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(10, 4, 6, 6, generator=g) > 0.8
    probs = (0.4 * target + 0.7 * torch.rand(10, 4, 6, 6, generator=g)).clamp(0, 1)
    tuner = PostprocessTuner(thresholds=(0.3, 0.6), min_areas=(0, 3, 9))
    for k in range(0, 10, 3):  # batches of 3, 3, 3, 1
        tuner.update(probs[k:k + 3], target[k:k + 3])
    assert tuner.compute() == tune_postprocess(probs, target, thresholds=(0.3, 0.6), min_areas=(0, 3, 9))
    with pytest.raises(ValueError, match="before any update"):
        PostprocessTuner().compute()


def test_tune_postprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        tune_postprocess(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 4))
    with pytest.raises(ValueError, match="at least one"):
        tune_postprocess(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3), min_areas=())
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tune_postprocess(torch.full((2, 4, 3, 3), 2.0), torch.zeros(2, 4, 3, 3))
