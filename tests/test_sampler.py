"""triplet_ref.PKSampler: P classes × K samples, the small-class rules, epoch length, seeding."""
from __future__ import annotations

import numpy as np
import pytest

from triplet_ref import PKSampler


def _check_batch(idx, labels, p, k):
    assert idx.dtype == np.int64 and idx.shape == (p * k,)
    y = labels[idx]
    classes, counts = np.unique(y, return_counts=True)
    assert classes.size == p and (counts == k).all()
    # class by class: each run of k indices holds one class
    assert all(len(set(y[i * k:(i + 1) * k].tolist())) == 1 for i in range(p))
    return y


def test_batches_are_p_classes_times_k_distinct_samples():
    labels = np.repeat(np.arange(7), 20)
    s = PKSampler(labels, p=4, k=5, seed=3)
    assert len(s) == 140 // 20 == 7 and s.batch_size == 20
    batches = list(s)
    assert len(batches) == 7
    for idx in batches:
        _check_batch(idx, labels, 4, 5)
        assert np.unique(idx).size == 20  # enough members: no repeats
    assert len(list(s)) == 7  # every iteration is one epoch


def test_seeded_and_reproducible():
    labels = np.repeat(np.arange(5), 6)
    a = PKSampler(labels, 2, 3, seed=11)
    b = PKSampler(labels.tolist(), 2, 3, seed=11)
    first = [x.tolist() for x in a]
    assert first == [x.tolist() for x in b]
    second = [x.tolist() for x in a]
    assert second != first  # the next epoch continues the stream
    a.reset()
    assert [x.tolist() for x in a] == first
    assert [x.tolist() for x in PKSampler(labels, 2, 3, seed=12)] != first


def test_same_stream_as_the_examples_former_sampler():
    """The rule written out: rng.choice of p distinct classes, then rng.choice of k members
    of each (with replacement only when the class is smaller than k), one Generator(seed)."""
    labels = np.random.default_rng(0).integers(0, 6, size=50)
    s = PKSampler(labels, 3, 4, seed=5)
    rng = np.random.default_rng(5)
    classes = np.unique(labels)
    for _ in range(5):
        want = []
        for c in rng.choice(classes, size=3, replace=False):
            pool = np.flatnonzero(labels == c)
            want.append(rng.choice(pool, size=4, replace=pool.size < 4))
        assert s.sample().tolist() == np.concatenate(want).tolist()


def test_small_classes_replace_and_drop():
    # classes 0, 1, 2: 10 members; class 3: 2 members; class 4: 1 member
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 2 + [4])
    s = PKSampler(labels, p=5, k=4, seed=0)  # "replace": every class is drawn every batch
    assert len(s) == 33 // 20 == 1
    idx = _check_batch(s.sample(), labels, 5, 4)
    got = s.sample()
    assert set(got[labels[got] == 4].tolist()) == {32}  # four copies of the only member
    assert set(got[labels[got] == 3].tolist()) <= {30, 31}
    d = PKSampler(labels, p=3, k=4, seed=0, small_classes="drop")
    assert d.classes.tolist() == [0, 1, 2] and len(d) == 30 // 12 == 2
    for _ in range(10):
        assert set(labels[d.sample()].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match=r"p: must be in \[2, 3\].*at least k"):
        PKSampler(labels, p=4, k=4, small_classes="drop")
    assert idx.size == 20


def test_num_batches_and_torch_or_jax_labels():
    labels = np.repeat(np.arange(4), 3)
    s = PKSampler(labels, 2, 2, num_batches=5)
    assert len(s) == 5 and len(list(s)) == 5
    torch = pytest.importorskip("torch")
    t = PKSampler(torch.tensor(labels), 2, 2, seed=1)
    assert [b.tolist() for b in t] == [b.tolist() for b in PKSampler(labels, 2, 2, seed=1)]


def test_bad_input_names_the_argument():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="p: must be"):
        PKSampler(labels, p=4, k=2)
    with pytest.raises(ValueError, match="p: must be"):
        PKSampler(labels, p=1, k=2)
    with pytest.raises(ValueError, match="k: must be"):
        PKSampler(labels, p=2, k=1)
    with pytest.raises(TypeError, match="p: expected an int"):
        PKSampler(labels, p=2.0, k=2)
    with pytest.raises(ValueError, match="small_classes"):
        PKSampler(labels, 2, 2, small_classes="skip")
    with pytest.raises(ValueError, match="num_batches"):
        PKSampler(labels, 2, 2, num_batches=0)
    with pytest.raises(TypeError, match="labels: expected an integer"):
        PKSampler(labels.astype(float), 2, 2)
    with pytest.raises(ValueError, match="labels: expected shape"):
        PKSampler(labels.reshape(3, 4), 2, 2)
    with pytest.raises(ValueError, match="labels"):
        PKSampler(np.array([], dtype=np.int64), 2, 2)
