import numpy as np
import torch
import torch.nn.functional as F

from data.sampler import eval_order
from train.knn import _unique_first, knn_top1


def test_weighted_vote_against_a_hand_computation():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]]), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = F.normalize(torch.tensor([[0.8, 0.2], [0.2, 0.8]]), dim=-1)
    # k = 3, T = 0.5: the three nearest neighbours vote exp(sim / T) for their class
    sim = query @ train.T
    expected = []
    for row in sim:
        top = row.topk(3)
        votes = {}
        for s, i in zip(top.values.tolist(), top.indices.tolist()):
            votes[int(labels[i])] = votes.get(int(labels[i]), 0.0) + np.exp(s / 0.5)
        expected.append(max(votes, key=votes.get))
    assert expected == [0, 1]
    assert knn_top1(train, labels, query, torch.tensor([0, 1]), k=3, temperature=0.5) == 100.0
    assert knn_top1(train, labels, query, torch.tensor([0, 2]), k=3, temperature=0.5) == 50.0


def test_a_close_class_with_more_weight_beats_a_majority_far_away():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0], [0.1, 1.0]]), dim=-1)
    labels = torch.tensor([0, 1, 1, 1])
    query = F.normalize(torch.tensor([[1.0, 0.02]]), dim=-1)
    assert knn_top1(train, labels, query, torch.tensor([0]), k=4, temperature=0.01) == 100.0
    assert knn_top1(train, labels, query, torch.tensor([1]), k=4, temperature=100.0) == 100.0


def test_evaluation_order_covers_every_sample_once_with_equal_batches():
    for total, world, batch in [(10, 1, 4), (10, 3, 2), (7, 4, 3), (2, 4, 1)]:
        parts = [eval_order(total, r, world, batch) for r in range(world)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) % batch == 0
        ids = torch.from_numpy(np.concatenate(parts))
        uniq, first = _unique_first(ids)
        assert uniq.tolist() == list(range(total)) and torch.equal(ids[first], uniq)
