"""The cross-batch memory (triplet_ref.memory): ring-buffer semantics on every backend,
equality with pytorch-metric-learning's CrossBatchMemory on the same sequence of batches,
and the functional state under jax.jit."""
from __future__ import annotations

import numpy as np
import pytest

from triplet_ref import oracles
from triplet_ref.memory import Memory, memory_contents, memory_enqueue, memory_init

SIZES = (4, 4, 3, 4, 2, 4)  # batch sizes fed in order; memory of 10 rows wraps twice


def _batches(dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 3, size=b), rng.normal(size=(b, dim))) for b in SIZES]


def _expected_ring(batches, M):
    """The buffer by hand: a Python list of slots written round-robin."""
    emb = [[0.0] * batches[0][1].shape[1] for _ in range(M)]
    lab = [0] * M
    ptr = count = 0
    states = []
    for y, x in batches:
        for i in range(len(y)):
            emb[(ptr + i) % M] = list(x[i])
            lab[(ptr + i) % M] = int(y[i])
        ptr = (ptr + len(y)) % M
        count = min(count + len(y), M)
        states.append((np.array(emb), np.array(lab), ptr, count))
    return states


def test_ring_buffer_by_hand(xp):
    batches = _batches()
    mem = memory_init(10, xp.asarray(batches[0][1], "float64"), xp.asarray(batches[0][0]))
    assert isinstance(mem, Memory) and mem.size == 10
    assert memory_contents(mem) == (None, None)
    for (y, x), (emb, lab, ptr, count) in zip(batches, _expected_ring(batches, 10)):
        mem = memory_enqueue(mem, xp.asarray(x, "float64"), xp.asarray(y))
        np.testing.assert_array_equal(xp.to_numpy(mem.embeddings), emb)
        np.testing.assert_array_equal(xp.to_numpy(mem.labels), lab)
        assert int(mem.ptr) == ptr and int(mem.count) == count
        ref, ref_y = memory_contents(mem)
        np.testing.assert_array_equal(xp.to_numpy(ref), emb[:count])
        np.testing.assert_array_equal(xp.to_numpy(ref_y), lab[:count])


def test_enqueue_is_pure_and_checks_its_input(xp):
    y, x = _batches()[0]
    mem0 = memory_init(5, xp.asarray(x, "float32"), xp.asarray(y))
    mem1 = memory_enqueue(mem0, xp.asarray(x, "float32"), xp.asarray(y))
    assert int(mem0.count) == 0 and not np.any(xp.to_numpy(mem0.embeddings))
    assert mem1.embeddings.dtype == mem0.embeddings.dtype
    with pytest.raises(ValueError, match="does not fit"):
        memory_enqueue(mem1, xp.asarray(np.zeros((6, 3)), "float32"), xp.asarray(np.zeros(6, dtype=np.int64)))
    with pytest.raises(ValueError, match="width 3"):
        memory_enqueue(mem1, xp.asarray(np.zeros((2, 4)), "float32"), xp.asarray(np.zeros(2, dtype=np.int64)))
    with pytest.raises(ValueError, match="size"):
        memory_init(0, xp.asarray(x, "float32"), xp.asarray(y))


def test_equals_pytorch_metric_learning_cross_batch_memory():
    """Same buffers, pointer and fill after every batch; and the loss of query rows against
    the memory (PML's enqueue_mask form: the enqueued rows are the reference set, the others
    the anchors) equals the reference-set oracle on our memory's contents."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses

    margin = 0.5
    inner = losses.TripletMarginLoss(margin=margin, distance=distances.LpDistance(normalize_embeddings=False))
    xbm = losses.CrossBatchMemory(inner, embedding_size=3, memory_size=10)
    rng = np.random.default_rng(1)
    mem = None
    for step, b in enumerate(SIZES):
        q = 3  # query rows (not enqueued) followed by b rows to enqueue
        y = torch.as_tensor(rng.integers(0, 3, size=q + b))
        x = torch.as_tensor(rng.normal(size=(q + b, 3)), dtype=torch.float32)
        mask = torch.zeros(q + b, dtype=torch.bool)
        mask[q:] = True
        theirs = xbm(x, y, enqueue_mask=mask)
        if mem is None:
            mem = memory_init(10, x, y)
        mem = memory_enqueue(mem, x[q:], y[q:])
        torch.testing.assert_close(mem.embeddings, xbm.embedding_memory, rtol=0, atol=0)
        torch.testing.assert_close(mem.labels, xbm.label_memory, rtol=0, atol=0)
        assert int(mem.ptr) == xbm.queue_idx
        assert (int(mem.count) == 10) == xbm.has_been_filled
        ref, ref_y = memory_contents(mem)
        ours = oracles.batch_all(y[:q], x[:q], margin, ref_embeddings=ref, ref_labels=ref_y)
        np.testing.assert_allclose(ours, float(theirs), rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_enqueue_under_jax_jit_and_detached():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    batches = _batches()
    x0 = jnp.asarray(batches[0][1])
    mem = memory_init(10, x0, jnp.asarray(batches[0][0]))
    step = jax.jit(memory_enqueue)
    for (y, x), (emb, lab, ptr, count) in zip(batches, _expected_ring(batches, 10)):
        mem = step(mem, jnp.asarray(x), jnp.asarray(y))
        np.testing.assert_array_equal(np.asarray(mem.embeddings), emb)
        np.testing.assert_array_equal(np.asarray(mem.labels), lab)
        assert int(mem.ptr) == ptr and int(mem.count) == count
    # the stored rows carry no gradient back to the batch
    g = jax.grad(lambda x: jnp.sum(memory_enqueue(mem, x, jnp.asarray(batches[0][0])).embeddings))(x0)
    assert not np.any(np.asarray(g))


def test_torch_memory_bank_module_equals_pml_and_functional():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses

    from triplet_ref.torch import MemoryBank

    bank = MemoryBank(10, 3, dtype=torch.float64)
    xbm = losses.CrossBatchMemory(losses.TripletMarginLoss(), embedding_size=3, memory_size=10)
    xbm.embedding_memory = xbm.embedding_memory.double()
    assert bank.contents() == (None, None) and bank.count == 0
    batches = _batches()
    for (y, x), (emb, lab, ptr, count) in zip(batches, _expected_ring(batches, 10)):
        xt = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
        bank.enqueue(xt * 1.0, torch.as_tensor(y))
        xbm.add_to_memory(xt, torch.as_tensor(y), len(y))
        np.testing.assert_array_equal(bank.embeddings.numpy(), emb)
        assert torch.equal(bank.embeddings, xbm.embedding_memory)
        assert torch.equal(bank.labels, xbm.label_memory)
        assert int(bank.ptr) == ptr == xbm.queue_idx and bank.count == count
    ref, ref_y = bank.contents()
    assert not ref.requires_grad and ref.shape == (10, 3) and ref_y.dtype == torch.int64
    assert set(bank.state_dict()) == {"embeddings", "labels", "ptr", "filled"}
    bank.reset()
    assert bank.count == 0 and bank.contents() == (None, None)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(0, 3)
