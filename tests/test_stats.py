"""lightning_sylv.stats: mergeable sums of a layer's rows, against NumPy."""

import numpy as np
import pytest
import torch

from lightning_sylv.stats import InputStats


def _rows(n: int = 50, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0, torch.randint(0, 3, (n,), generator=g)


def test_sums_and_moments_match_numpy():
    x, y = _rows()
    s = InputStats.from_rows(x, y, num_classes=4)
    xn = x.numpy()
    np.testing.assert_allclose(s.sum_x.numpy(), xn.sum(0), rtol=1e-12)
    np.testing.assert_allclose(s.gram_x.numpy(), xn.T @ xn, rtol=1e-12)
    np.testing.assert_allclose(s.covariance().numpy(), np.cov(xn.T, bias=True), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.covariance(center=False).numpy(), xn.T @ xn / len(xn), rtol=1e-12)
    assert s.counts.tolist() == [float((y == c).sum()) for c in range(4)]  # class 3 absent: count 0
    for c in range(4):
        np.testing.assert_allclose(s.class_sums[c].numpy(), xn[y.numpy() == c].sum(0), atol=1e-12)


def test_batches_and_processes_merge_into_the_sums_of_all_rows():
    x, y = _rows(60)
    whole = InputStats.from_rows(x, y, num_classes=3)
    parts = [InputStats.from_rows(x[i : i + 20], y[i : i + 20], num_classes=3) for i in range(0, 60, 20)]
    merged = parts[0] + parts[1] + parts[2]
    for name in ("n", "sum_x", "gram_x", "counts", "class_sums"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name))
    doubled = whole.map(lambda t: 2 * t)  # what an all-reduce over two equal processes gives
    torch.testing.assert_close(doubled.mean, whole.mean)


def test_lower_precision_products_stay_within_float32_rounding():
    x, _ = _rows(5000, 8)
    exact = InputStats.from_rows(x)
    mixed = InputStats.from_rows(x, gram_dtype=torch.float32)
    assert mixed.gram_x.dtype == torch.float64
    torch.testing.assert_close(mixed.gram_x, exact.gram_x, rtol=1e-5, atol=0)


def test_stacks_of_row_sets_and_reordering():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)  # 3 groups sharing nothing but n
    s = InputStats.from_rows(x)
    for i in range(3):
        torch.testing.assert_close(s.gram_x[i], x[i].T @ x[i])
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(s.take(perm).gram_x, InputStats.from_rows(x[..., perm]).gram_x)


def test_bad_inputs_are_refused():
    x, y = _rows(10)
    with pytest.raises(ValueError, match="shape"):
        InputStats.from_rows(x[0])
    with pytest.raises(ValueError, match="labels must have shape"):
        InputStats.from_rows(x, y[:5])
    with pytest.raises(ValueError, match="outside"):
        InputStats.from_rows(x, y, num_classes=2) if int(y.max()) >= 2 else InputStats.from_rows(x, y - 1)
    with pytest.raises(ValueError, match="cannot merge"):
        _ = InputStats.from_rows(x, y) + InputStats.from_rows(x)


def test_row_blocks_cover_the_rows_in_order_contiguous_and_bounded_for_stacks():
    from lightning_sylv.stats import GROUPED_BLOCK_BYTES, row_blocks

    plain = torch.randn(5000, 3)
    blocks = list(row_blocks(plain))
    assert [b.shape[0] for b in blocks] == [2048, 2048, 904]
    assert torch.equal(torch.cat(blocks), plain)
    # A depthwise layer's groups, strided across each other in memory: small contiguous blocks.
    stack = torch.randn(3000, 49, 192).permute(2, 0, 1)  # (groups, n, d) over (n, d, groups) memory
    blocks = list(row_blocks(stack))
    assert all(b.is_contiguous() and b.numel() * b.element_size() <= GROUPED_BLOCK_BYTES for b in blocks)
    assert len(blocks) > 1 and torch.equal(torch.cat(blocks, dim=1), stack)
