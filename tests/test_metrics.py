"""Metrics and view fusion on hand-made numbers."""
import math

import pytest
import torch

from tcpnet.engine.evaluate import evaluate, fuse_views
from tcpnet.engine.metrics import (average_precision, class_ranks, classification_metrics, confusion_matrix,
                                   mean_average_precision, mean_class_accuracy, topk_accuracy)


def test_fusion_max_and_mean_prob():
    # one video, two views, three classes; logits chosen so the softmaxes are simple
    p1 = torch.tensor([0.7, 0.2, 0.1])
    p2 = torch.tensor([0.1, 0.5, 0.4])
    logits = torch.stack([p1.log(), p2.log()]).unsqueeze(0)  # (1, 2, 3)
    torch.testing.assert_close(fuse_views(logits, "max-prob"), torch.tensor([[0.7, 0.5, 0.4]]))
    torch.testing.assert_close(fuse_views(logits, "mean-prob"), torch.tensor([[0.4, 0.35, 0.25]]))
    torch.testing.assert_close(fuse_views(logits, "mean-logit"), ((p1.log() + p2.log()) / 2).unsqueeze(0))
    # max-prob and mean-prob can disagree: one confident view wins under max-prob only
    views = torch.tensor([[0.95, 0.05, 1e-6], [0.1, 0.5, 0.4], [1e-6, 0.6, 0.4]])
    lg = views.log().unsqueeze(0)
    assert fuse_views(lg, "max-prob").argmax().item() == 0   # 0.95
    assert fuse_views(lg, "mean-prob").argmax().item() == 1  # 0.383 > 0.350
    with pytest.raises(ValueError, match="fusion"):
        fuse_views(logits, "vote")


def test_topk_with_ties_lower_index_wins():
    scores = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    targets = torch.tensor([0, 1, 0])
    # row 0: target 0 ties with class 1 and wins (lower index); row 1: target 1 loses the tie
    assert class_ranks(scores, targets).tolist() == [0, 1, 2]
    acc = topk_accuracy(scores, targets, ks=(1, 2, 3))
    assert acc[1] == pytest.approx(100 / 3) and acc[2] == pytest.approx(200 / 3) and acc[3] == 100
    assert scores.argmax(1).tolist() == [0, 0, 2]  # consistent with argmax / confusion matrix


def test_confusion_and_mean_class_accuracy():
    targets = torch.tensor([0, 0, 0, 1, 2, 2])
    preds = torch.tensor([0, 0, 1, 1, 0, 2])
    cm = confusion_matrix(targets, preds, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # per class 2/3, 1, 1/2; class 3 has no samples and is skipped (not NaN)
    assert mean_class_accuracy(cm) == pytest.approx(100 * (2 / 3 + 1 + 0.5) / 3)


def test_average_precision_hand_computed():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    pos = torch.tensor([1, 0, 1, 0, 1])
    # precision at the positives' ranks: 1/1, 2/3, 3/5
    assert average_precision(scores, pos) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert math.isnan(average_precision(scores, torch.zeros(5)))
    # mAP over classes with a positive: class 2 has none and is left out
    s = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.6, 0.4, 0.2]])
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    ap0 = 1.0  # ranks 0.9, 0.6, 0.2 -> positive first
    ap1 = (1 / 1 + 2 / 2) / 2  # 0.8 (pos), 0.4 (pos), 0.1
    assert mean_average_precision(s, y) == pytest.approx(100 * (ap0 + ap1) / 2)
    m = classification_metrics(s, y, 3)
    assert m["mAP"] == pytest.approx(100.0) and m["num_videos"] == 3


def test_evaluate_fuses_views_and_counts_videos():
    class Fixed(torch.nn.Module):  # logits = mean pixel of channel c per class: deterministic
        def forward(self, x):
            return x.mean(dim=(2, 3, 4))

    torch.manual_seed(0)
    clips = torch.randn(5, 2, 3, 2, 4, 4)  # 5 videos, 2 views, K = 3 "classes" (channels)
    targets = torch.tensor([0, 1, 2, 0, 1])
    loader = [(clips[:3], targets[:3]), (clips[3:], targets[3:])]
    res = evaluate(Fixed(), loader, device=torch.device("cpu"), fusion="max-prob")
    expect_logits = clips.mean(dim=(3, 4, 5))  # (5, 2, 3)
    torch.testing.assert_close(res.view_logits, expect_logits)
    torch.testing.assert_close(res.scores, expect_logits.softmax(-1).amax(1))
    assert res.indices.tolist() == [0, 1, 2, 3, 4] and res.metrics["num_videos"] == 5
    top1 = (res.scores.argmax(1) == targets).float().mean().item() * 100
    assert res.metrics["top1"] == pytest.approx(top1)
    assert res.metrics["confusion_matrix"].sum() == 5


def test_sigmoid_fusion_matches_a_hand_computed_map():
    """Multi-label data: each class gets its own sigmoid, max over views (the SlowFast Charades
    protocol); a softmax would make the classes of one video compete."""
    from tcpnet.engine.evaluate import fuse_views
    from tcpnet.engine.metrics import mean_average_precision

    logits = torch.tensor([[[3.0, 3.0], [0.0, 0.0]],       # video 0: (view, class)
                           [[2.0, -2.0], [-2.0, -2.0]],    # video 1
                           [[-1.0, 1.0], [4.0, -3.0]]])    # video 2
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    scores = fuse_views(logits, "max-sigmoid")
    assert torch.allclose(scores, torch.sigmoid(torch.tensor([[3.0, 3.0], [2.0, -2.0], [4.0, 1.0]])))
    # class 0 ranks videos 2, 0, 1 -> positives (2, 0) at ranks 1 and 2: AP = 1
    # class 1 ranks videos 0, 2, 1 -> positives (2, 1) at ranks 2 and 3: AP = (1/2 + 2/3) / 2
    by_hand = 100 * (1 + (1 / 2 + 2 / 3) / 2) / 2
    assert mean_average_precision(scores, targets) == pytest.approx(by_hand)
    assert fuse_views(logits, "auto", multi_label=True).equal(scores)
    assert fuse_views(logits, "auto", multi_label=False).equal(fuse_views(logits, "max-prob"))
    assert torch.allclose(fuse_views(logits, "mean-sigmoid"), torch.sigmoid(logits).mean(1))
    softmax_map = mean_average_precision(fuse_views(logits, "max-prob"), targets)
    assert softmax_map != pytest.approx(by_hand)


@pytest.mark.parametrize("positives, scores, expected", [
    # every score tied: one threshold, precision 2/4 at recall 1 (ranking by index gave (1 + 2/3) / 2)
    ([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5], 0.5),
    # two tied pairs: thresholds 0.9 (1 of 2 positive, recall 1/2) and 0.3 (2 of 4, recall 1)
    ([0, 1, 1, 0], [0.9, 0.9, 0.3, 0.3], 0.5 * 0.5 + 0.5 * 0.5),
    # three tied at 0.8 (1 of 3, recall 1/2), then 0.1 (2 of 4, recall 1)
    ([1, 0, 0, 1], [0.8, 0.8, 0.8, 0.1], 0.5 / 3 + 0.5 * 0.5),
])
def test_average_precision_counts_tied_scores_as_one_threshold(positives, scores, expected):
    ap = average_precision(torch.tensor(scores), torch.tensor(positives))
    assert ap == pytest.approx(expected, abs=1e-12)
    # the order of tied videos does not change the AP
    assert average_precision(torch.tensor(scores).flip(0), torch.tensor(positives).flip(0)) == pytest.approx(ap)


def test_mean_average_precision_matches_sklearn_on_quantised_scores():
    """Expected values computed once with scikit-learn 1.9.1, ``average_precision_score(targets[:, k],
    scores[:, k])`` per class (sklearn is not a test dependency); scores quantised to quarters, so
    many videos tie. Tolerance 1e-12: both sum the same few float64 products."""
    scores = torch.tensor([[0.5, 0.5, 0.5], [0.25, 1.0, 0.25], [0.75, 0.25, 0.5], [1.0, 0.0, 0.75],
                           [0.5, 0.75, 0.75], [0.25, 0.75, 0.75], [0.5, 0.0, 0.75], [0.0, 1.0, 1.0],
                           [1.0, 0.0, 1.0], [1.0, 0.5, 1.0], [0.75, 0.75, 0.0], [0.0, 0.25, 0.25]])
    targets = torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0],
                            [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]])
    sklearn_aps = [0.2611111111111111, 0.6952380952380952, 0.2685185185185185]
    for k, expected in enumerate(sklearn_aps):
        assert average_precision(scores[:, k], targets[:, k]) == pytest.approx(expected, abs=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(40.82892416225749, abs=1e-10)


def test_one_fusion_check_names_the_choices():
    from tcpnet.config import FUSIONS
    from tcpnet.engine.evaluate import check_fusion

    assert [check_fusion(f) for f in FUSIONS] == list(FUSIONS)
    with pytest.raises(ValueError, match=r"--fusion: expected one of auto, max-prob, .*got 'vote'"):
        check_fusion("vote", "--fusion")


class _Records(torch.utils.data.Dataset):
    """Six one-view clips whose per-class mean is the logit (see ``_PixelMean``), with record paths."""

    def __init__(self, clips: torch.Tensor) -> None:
        from tcpnet.data.records import VideoRecord
        self.clips = clips
        self.records = [VideoRecord(f"videos/v{i}.mp4", 4, i % 3) for i in range(len(clips))]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return self.clips[i], i % 3


class _PixelMean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3, 4))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_evaluate_refuses_non_finite_logits_naming_the_videos(bad_value):
    """A NaN ranked as a hit (class_ranks counts no class above it): top-1 100 with a NaN model.
    evaluate raises instead, naming exactly the videos whose logits are not finite."""
    from tcpnet.data.build import IndexedSubset
    from tcpnet.engine.evaluate import NonFiniteLogitsError

    clips = torch.randn(6, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    clips[1, 0, 0, 0, 0] = bad_value
    clips[4, 2, 1, 3, 3] = bad_value
    dataset = _Records(clips)
    loader = torch.utils.data.DataLoader(IndexedSubset(dataset, range(6)), batch_size=4)
    with pytest.raises(NonFiniteLogitsError) as e:
        evaluate(_PixelMean(), loader, device=torch.device("cpu"), fusion="max-prob")
    assert "for 2 of 6 video(s): videos/v1.mp4, videos/v4.mp4;" in str(e.value)
    clips[1, 0, 0, 0, 0] = clips[4, 2, 1, 3, 3] = 0.0  # finite again: the same loader evaluates
    res = evaluate(_PixelMean(), loader, device=torch.device("cpu"), fusion="max-prob")
    assert res.metrics["num_videos"] == 6


def test_the_fusion_choice_is_checked_in_one_place():
    """Every command and the evaluation loop use check_fusion: no other comparison with FUSIONS
    in the package (config.py's table of choices validates the config key itself)."""
    import ast
    from pathlib import Path

    import tcpnet

    owners = []
    for path in sorted(Path(tcpnet.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Name) and c.id == "FUSIONS"
                                                     for c in node.comparators):
                owners.append(path.name)
    assert owners == ["evaluate.py"]
