"""Sharded training: lightning_sylv.sharding, and SylvesterInit under FSDP2 (ModelParallelStrategy).

The integration tests launch tests/scripts/sharded_init.py as a user would: 2 CPU processes, gloo,
``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` with ``fully_shard`` in
``configure_model``, against the same model and subset under DDP.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from lightning_sylv.sharding import ShardedParams, _chunks, is_sharded, local_shard, write_

SCRIPT = Path(__file__).parent / "scripts" / "sharded_init.py"


def _run(out: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *args],
        capture_output=True, text=True, timeout=300, cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _load(out: Path, tag: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(out / f"{tag}_rank{rank}.pt")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=f"{k} ({what})")


def _assert_same_directions(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor of ``a`` is a positive multiple of ``b``'s, the head's equal: the same solve at
    another own-init gain (``scale="own"``; BatchNorm statistics follow the factor), the head at the
    solve's scale."""
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("head.") or not a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=f"{k} ({what})")
            continue
        x, y = a[k].double().flatten(), b[k].double().flatten()
        if not (x.any() or y.any()):  # zeros (a BatchNorm's bias)
            continue
        cos = float(x @ y / (x.norm() * y.norm()))
        assert cos > 1 - 1e-8, f"{k} ({what}): cosine {cos}"


# ---------------------------------------------------------------------------------- plain tensors


def test_plain_tensors_are_written_whole_and_kept():
    layer = nn.Linear(3, 2)
    weight = layer.weight
    write_(layer.weight, torch.arange(6.0, dtype=torch.float64))
    assert layer.weight is weight and layer.weight.dtype == torch.float32
    assert torch.equal(layer.weight, torch.arange(6.0).reshape(2, 3))
    assert not is_sharded(layer.weight)


def test_a_model_without_dtensors_has_an_empty_record():
    model = nn.Sequential(nn.Linear(3, 2))
    shards = ShardedParams(model)
    assert not shards
    before = model[0].weight.clone()
    shards.commit(model)
    shards.reshard()
    assert torch.equal(model[0].weight, before)


def test_local_shard_refuses_a_plain_tensor():
    with pytest.raises(ValueError, match="like must be a DTensor"):
        local_shard(torch.zeros(2), torch.zeros(2))


# ---------------------------------------------------------------------------------- DTensors, 2 processes


def _shard_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        results = {}
        for rows in (5, 1):  # uneven: 3/2, and one process with an empty shard
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(4, rows), nn.Linear(rows, 2))
            fully_shard(model[0], mesh=mesh)
            fully_shard(model, mesh=mesh)
            shards = ShardedParams(model)
            full = torch.arange(rows * 4, dtype=torch.float64).reshape(rows, 4)
            expected = torch.chunk(full.float(), world)[rank] if rank < len(torch.chunk(full, world)) else None
            got = local_shard(full, model[0].weight)
            w = model[0].weight  # the torch < 2.6 fallback cuts the same slice by hand
            by_hand = _chunks(full.float(), w.device_mesh, w.placements)
            # The unsharded copy a forward pre-hook sees, written and committed to the shard.
            seen = {}

            def hook(m, args, full=full, shards=shards, seen=seen):
                seen["sharded_inside"] = is_sharded(m.weight)
                write_(m.weight, full)
                shards.commit(m)

            handle = model[0].register_forward_pre_hook(hook)
            with torch.no_grad():
                model(torch.ones(3, 4))
            handle.remove()
            shards.reshard()
            results[rows] = {
                "shape": tuple(got.shape),
                "matches_chunk": bool(torch.equal(got, expected)) if expected is not None else got.numel() == 0,
                "by_hand": bool(torch.equal(got, by_hand)) and got.shape == by_hand.shape,
                "committed": torch.equal(model[0].weight.full_tensor(), full.float()),
                "sharded_inside": seen["sharded_inside"],
                "sharded": bool(shards),
            }
        torch.save(results, Path(out) / f"shard_rank{rank}.pt")
        # Neither process tears its gloo pairs down while the other still talks to them: without this
        # barrier the first one done aborted (SIGABRT, "terminate called without an active exception")
        # in about one run in four.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_local_shards_follow_fsdp_layout_and_commits_reach_the_shards(tmp_path):
    mp.spawn(_shard_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"shard_rank{rank}.pt")
        for rows, r in results.items():
            assert r["sharded"] and not r["sharded_inside"], (rank, rows)
            assert r["matches_chunk"] and r["by_hand"], (rank, rows, r)
            assert r["committed"], (rank, rows)
    assert torch.load(tmp_path / "shard_rank1.pt")[1]["shape"] == (0, 4)  # one row: rank 1 holds none


# ---------------------------------------------------------------------------------- through a Trainer


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    """The reference: the same model, subset and init under 2-process DDP (all layers)."""
    out = tmp_path_factory.mktemp("ddp")
    _run(out, "ddp")
    return out


@pytest.mark.slow
def test_fsdp2_writes_the_weights_ddp_writes_and_training_continues(tmp_path, ddp_out):
    """A BatchNorm CNN, all layers (Gram-mode convs, one with uneven 4/3 shards; a span-mode head):
    the full weights after the init equal DDP's on the same subset, on both ranks; the loss falls."""
    _run(tmp_path, "fsdp2")
    before = _load(tmp_path, "before_fsdp2")
    for rank in range(2):
        after = _load(tmp_path, "fsdp2", rank)
        _assert_same_weights(after, _load(ddp_out, "ddp", rank), f"rank {rank}")
        for k in ("body.0.weight", "body.3.weight", "head.weight"):  # the init wrote every shard
            assert not torch.allclose(after[k], before[k]), k
        run = _load(tmp_path, "fsdp2_run", rank)
        assert run["solvers"]["body.3"].startswith("gram") and run["solvers"]["head"].startswith("span")
        assert run["losses"][-1] < run["losses"][0]
        torch.testing.assert_close(run["losses"], _load(ddp_out, "ddp_run", rank)["losses"], rtol=1e-4, atol=1e-5)
        assert run["initial_accuracy_logged"] == 1


@pytest.mark.slow
def test_fsdp2_head_only_on_a_pretrained_body(tmp_path):
    _run(tmp_path, "fsdp2", "head")
    _run(tmp_path, "ddp", "head")
    sharded, ddp = _load(tmp_path, "fsdp2_head"), _load(tmp_path, "ddp_head")
    _assert_same_weights(sharded, ddp, "head only")
    before = _load(tmp_path, "before_fsdp2_head")
    changed = {k for k in before if not torch.equal(before[k], sharded[k])}
    assert changed == {"head.weight", "head.bias"}, changed
    run = _load(tmp_path, "fsdp2_head_run")
    assert list(run["solvers"]) == ["head"]
    assert run["losses"][-1] < run["losses"][0]


@pytest.mark.slow
def test_fsdp2_streamed_in_mini_batches(tmp_path, ddp_out):
    """batch_size: each layer's statistics over several stopped passes (FSDP modules resharded after
    each), the weights written into the shards outside the pass; the same weights as DDP streamed."""
    _run(tmp_path, "fsdp2", "stream")
    _run(tmp_path, "ddp", "stream")
    _assert_same_weights(_load(tmp_path, "fsdp2_stream"), _load(tmp_path, "ddp_stream"), "streamed")
    assert _load(tmp_path, "fsdp2_stream_run")["losses"][-1] < _load(tmp_path, "fsdp2_stream_run")["losses"][0]


@pytest.mark.slow
def test_fsdp2_multihead_attention(tmp_path):
    """nn.MultiheadAttention sharded on its own: the packed in-projection and the out-projection are
    written as whole tensors into the unsharded copy and cut into the shards, as DDP's weights."""
    _run(tmp_path, "fsdp2", "attn")
    _run(tmp_path, "ddp", "attn")
    _assert_same_weights(_load(tmp_path, "fsdp2_attn"), _load(tmp_path, "ddp_attn"), "attention")
    run = _load(tmp_path, "fsdp2_attn_run")
    assert {"body.attn.in_proj", "body.attn.out_proj"} <= set(run["solvers"])
    before, after = _load(tmp_path, "before_fsdp2_attn"), _load(tmp_path, "fsdp2_attn")
    assert not torch.allclose(before["body.attn.in_proj_weight"], after["body.attn.in_proj_weight"])


@pytest.mark.slow
def test_fsdp2_meta_device_model_and_resume(tmp_path, ddp_out):
    """A model created on the meta device (materialized by the strategy) gets DDP's weights up to
    each layer's gain (its own init is the strategy's draw, not DDP's); a fit resumed from the sharded
    checkpoint keeps the checkpoint's weights and initializes nothing."""
    ckpt = tmp_path / "ckpt"
    _run(tmp_path, "fsdp2", "meta", "save", str(ckpt))
    _assert_same_directions(_load(tmp_path, "fsdp2_meta"), _load(ddp_out, "ddp"), "meta device")
    _run(tmp_path, "fsdp2", "resume", str(ckpt))
    resumed, saved = _load(tmp_path, "fsdp2_resumed_run"), _load(tmp_path, "fsdp2_meta_run")
    assert resumed["solvers"] == {} and resumed["init_time_logged"] == 0
    start = _load(tmp_path, "fsdp2_resumed")
    params = [k for k in start if "running_" not in k and "num_batches" not in k]  # buffers: per process
    for k in params:
        assert torch.equal(start[k], saved["final"][k]), k


# ---------------------------------------------------------------------------------- refusals


def _strategy(cls_name: str, **attrs):
    from lightning.pytorch import strategies

    strategy = getattr(strategies, cls_name).__new__(getattr(strategies, cls_name))
    strategy.__dict__.update(attrs)
    return strategy


def test_fsdp1_and_deepspeed_are_refused_naming_what_is_supported():
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_sylv.callbacks._distributed import check_strategy

    with pytest.raises(RuntimeError, match=r"does not support the strategy FSDPStrategy\. Supported: .*ModelParallel"):
        check_strategy(FSDPStrategy(), "SylvesterInit")
    with pytest.raises(RuntimeError, match="does not support the strategy DeepSpeedStrategy"):
        check_strategy(_strategy("DeepSpeedStrategy"), "SylvesterInit")


def test_tensor_parallel_is_refused_naming_tensor_parallel_size():
    from lightning_sylv.callbacks._distributed import check_strategy

    tp = _strategy("ModelParallelStrategy", _tensor_parallel_size=2, _data_parallel_size=1)
    with pytest.raises(RuntimeError, match=r"tensor_parallel_size=2.*tensor_parallel_size=1"):
        check_strategy(tp, "SylvesterInit")
    check_strategy(_strategy("ModelParallelStrategy", _tensor_parallel_size=1, _data_parallel_size=2), "SylvesterInit")


@pytest.mark.parametrize(
    ("name", "reason"), [("LowRankInit", "replaces each converted layer"), ("FuseInit", "teacher")]
)
def test_lowrank_and_fuse_refuse_sharding_with_the_reason(name, reason):
    import lightning_sylv
    from lightning_sylv.callbacks._distributed import check_strategy

    cls = getattr(lightning_sylv, name)
    dp = _strategy("ModelParallelStrategy", _tensor_parallel_size=1, _data_parallel_size=2)
    message = f"{name} does not support the sharded strategy ModelParallelStrategy: .*{reason}"
    with pytest.raises(RuntimeError, match=message):
        check_strategy(dp, name, refusal=cls.sharding_refusal)


def test_a_model_still_on_the_meta_device_is_refused_before_anything_runs():
    from lightning_sylv.callbacks._distributed import check_materialized

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with pytest.raises(RuntimeError, match=r"parameter '0.weight' is still on the meta device"):
        check_materialized(model, "SylvesterInit")
    check_materialized(nn.Linear(2, 2), "SylvesterInit")


@pytest.mark.parametrize("channels_last", [False, True])
def test_write_product_forms_the_weight_block_by_block(monkeypatch, channels_last):
    """A weight solved in a subspace is written from its factors a few rows at a time (no full
    float64 product), into the parameter's own tensor; a channels-last weight takes the full product."""
    from lightning_sylv import sharding

    g = torch.Generator().manual_seed(0)
    left = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    right = torch.randn(2, 3, 8 * 9, generator=g, dtype=torch.float64)
    conv = torch.nn.Conv2d(16, 12, 3, groups=2)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    param = conv.weight
    monkeypatch.setattr(sharding, "BLOCK_BYTES", 2 * 72 * 8 * 2)  # two rows per block: three blocks
    formed: list[int] = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: formed.append(a.shape[-2]) or real_matmul(a, b))
    sharding.write_product_(param, left, right)
    assert conv.weight is param
    torch.testing.assert_close(param.detach(), (left @ right).reshape(12, 8, 3, 3).float())
    assert formed[:-1] == ([6] if channels_last else [2, 2, 2])  # the last one is the check's own product
