"""The fast paths give the plain results: TopK's floor, row picks, channels-last batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netdissect.broden import BrodenDataset
from netdissect.ops import select_rows
from netdissect.quantile import TopK


@pytest.mark.parametrize("k", [1, 5, 40, 333, 5000])
def test_topk_with_a_floor_equals_a_full_sort(k):
    rng = np.random.default_rng(k)
    values = rng.standard_normal((4, 6000)).astype(np.float32)
    values[1] = np.round(values[1] * 3)  # few distinct values: ties at the floor
    values[2, ::2] = values[2, 0]  # half the row equal
    values[3] = np.sort(values[3])  # rising: every block beats the floor
    acc = TopK(k)
    for block in np.array_split(values, 97, axis=1):  # blocks of ~62 values, most of them smaller than k
        acc.add(torch.from_numpy(block))
    expected = -np.sort(-values, axis=1)[:, :k]
    assert np.array_equal(acc.result(), expected)


class CountingTopK(TopK):
    """TopK counting the values that waited in its buffer."""

    buffered = 0

    def _reduce(self) -> None:
        self.buffered += self.pending_size
        super()._reduce()


def test_topk_floor_buffers_few_values():
    rng = np.random.default_rng(0)
    acc = CountingTopK(500)
    for _ in range(200):
        acc.add(torch.from_numpy(rng.standard_normal((3, 100)).astype(np.float32)))
    acc.result()
    assert acc.floor is not None
    assert acc.buffered < 20_000 / 4  # of 20,000 values per unit, most never wait to be reduced


def test_select_rows_equals_index_select():
    values = torch.from_numpy(np.random.default_rng(1).standard_normal((7, 9, 5)).astype(np.float32))
    index = torch.tensor([0, 0, 3, 8, 8, 2])
    assert torch.equal(select_rows(values, index), values.index_select(1, index))
    across = values.transpose(1, 2).contiguous()
    assert torch.equal(select_rows(across, index[:4] % 5), across.index_select(1, index[:4] % 5))


def test_channels_last_batches_hold_the_same_images(synth_dataset):
    ds = BrodenDataset(synth_dataset, load_labels=False)
    plain, fast = next(iter(ds.loader(6))), next(iter(ds.loader(6, channels_last=True)))
    assert fast["image"].is_contiguous(memory_format=torch.channels_last) and plain["image"].is_contiguous()
    assert torch.equal(plain["image"], fast["image"]) and torch.equal(plain["i"], fast["i"])


@pytest.mark.parametrize("k", [3, 50, 900])
def test_topk_partition_leaves_the_added_blocks_alone(k):
    """The CPU reduction partitions in place only TopK's own buffer; a block it was given (a view of the
    activations extract writes) is copied in and never reordered."""
    rng = np.random.default_rng(k)
    blocks = [torch.from_numpy(rng.standard_normal((3, 400)).astype(np.float32)) for _ in range(5)]
    originals = [b.clone() for b in blocks]
    acc = TopK(k)
    for block in blocks:
        acc.add(block)
    expected = -np.sort(-torch.cat(originals, dim=1).numpy(), axis=1)[:, :k]
    assert np.array_equal(acc.result(), expected)
    assert all(torch.equal(b, o) for b, o in zip(blocks, originals))


def test_topk_buffer_is_bounded_and_grows_only_for_a_wider_block():
    """One buffer of k + max(first block, k/2) columns, whatever the number of blocks (memory flat in N);
    a block wider than that (k small) grows it once, and the result is still a full sort's."""
    rng = np.random.default_rng(7)
    k, width = 3000, 250
    rising = np.sort(rng.standard_normal((2, 400 * width)).astype(np.float32), axis=1)  # every block beats the floor
    acc = TopK(k)
    for block in np.split(rising, 400, axis=1):
        acc.add(torch.from_numpy(block))
    assert acc.buffer.shape[1] == k + k // 2
    assert np.array_equal(acc.result(), rising[:, ::-1][:, :k])
    wide = rng.standard_normal((2, 3 * k)).astype(np.float32)
    acc.add(torch.from_numpy(wide))  # wider than the room left after a reduction
    everything = np.concatenate([rising, wide], axis=1)
    assert np.array_equal(acc.result(), -np.sort(-everything, axis=1)[:, :k])
