"""normext.SyncBatchNorm across 2 processes (gloo, CPU), each with half of the batch, against
nn.BatchNorm2d on the whole batch: outputs, input/weight/bias gradients and running statistics."""

import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import normext

WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(x, g, kwargs, steps):
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(x.shape[2], **kwargs)
    if bn.weight is not None:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
    outs = []
    for step in range(steps):
        xi = x[step].clone().requires_grad_(True)
        y = bn(xi)
        y.backward(g[step])
        outs.append((y.detach(), xi.grad, None if bn.weight is None else bn.weight.grad.clone(),
                     None if bn.bias is None else bn.bias.grad.clone()))
        if bn.weight is not None:
            bn.weight.grad = None
            bn.bias.grad = None
    return outs, bn.state_dict()


CONFIGS = [("contiguous", {}), ("channels_last", {"momentum": None}), ("contiguous", {"affine": False})]


def _run_config(rank, x, g, kwargs, steps, layout):
    torch.manual_seed(1)
    model = normext.convert(nn.Sequential(nn.BatchNorm2d(x.shape[2], **kwargs)), sync_batchnorm=True)
    bn = model[0]
    assert type(bn) is normext.SyncBatchNorm
    if bn.weight is not None:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
    half = x.shape[1] // WORLD
    outs = []
    for step in range(steps):
        xi = x[step, rank * half:(rank + 1) * half].clone()
        if layout == "channels_last":
            xi = xi.to(memory_format=torch.channels_last)
        xi.requires_grad_(True)
        y = bn(xi)
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        y.backward(g[step, rank * half:(rank + 1) * half])
        grads = [None if p is None else p.grad.clone() for p in (bn.weight, bn.bias)]
        # Parameter gradients are local, as in torch (DDP sums them): sum them here.
        for t in grads:
            if t is not None:
                dist.all_reduce(t)
        outs.append((y.detach().contiguous(), xi.grad.contiguous(), *grads))
        if bn.weight is not None:
            bn.weight.grad = None
            bn.bias.grad = None
    return outs, {k: v.clone() for k, v in bn.state_dict().items()}


def _worker(rank, port, x, g, steps, result_queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = [_run_config(rank, x, g, kwargs, steps, layout) for layout, kwargs in CONFIGS]
        # NB: serialized, so the parent needs no file descriptor of this (exiting) process.
        buffer = io.BytesIO()
        torch.save((rank, results), buffer)
        result_queue.put(buffer.getvalue())
    finally:
        dist.destroy_process_group()


def test_sync_batch_norm_two_processes_match_whole_batch():
    steps = 2
    x = torch.randn(steps, 6, 5, 7, 4, dtype=torch.float64).float() * 3 + 2
    g = torch.randn(steps, 6, 5, 7, 4)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, x, g, steps, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = [torch.load(io.BytesIO(queue.get(timeout=120))) for _ in range(WORLD)]
    results = [r for _, r in sorted(results, key=lambda r: r[0])]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for i, (layout, kwargs) in enumerate(CONFIGS):
        ref_outs, ref_state = _reference(x, g, kwargs, steps)
        for step in range(steps):
            y = torch.cat([results[r][i][0][step][0] for r in range(WORLD)])
            dx = torch.cat([results[r][i][0][step][1] for r in range(WORLD)])
            ry, rdx, rdw, rdb = ref_outs[step]
            torch.testing.assert_close(y, ry, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(dx, rdx, atol=1e-5, rtol=1e-5)
            for r in range(WORLD):
                if rdw is not None:
                    torch.testing.assert_close(results[r][i][0][step][2], rdw, atol=1e-4, rtol=1e-5)
                    torch.testing.assert_close(results[r][i][0][step][3], rdb, atol=1e-4, rtol=1e-5)
        for r in range(WORLD):
            for k, v in ref_state.items():
                torch.testing.assert_close(results[r][i][1][k], v, atol=1e-6, rtol=1e-6, msg=k)


def test_falls_back_without_process_group():
    assert not dist.is_initialized()
    ours = normext.SyncBatchNorm(4)
    theirs = nn.BatchNorm2d(4)
    assert repr(ours) == repr(nn.SyncBatchNorm(4))
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="expected at least 2D input"):
        ours(torch.randn(4))


def test_merge_stats_is_exact():
    from normext.sync_batch_norm import merge_stats
    parts = [torch.randn(n, 3, dtype=torch.float64) + 5 for n in (4, 0, 7, 1)]
    rows = torch.stack([torch.cat([p.mean(0) if len(p) else torch.zeros(3, dtype=torch.float64),
                                   ((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(3, dtype=torch.float64),
                                   torch.tensor([float(len(p))], dtype=torch.float64)]) for p in parts])
    count, mean, m2 = merge_stats(rows, 3)
    whole = torch.cat(parts)
    assert count == 12
    torch.testing.assert_close(mean, whole.mean(0))
    torch.testing.assert_close(m2, ((whole - whole.mean(0)) ** 2).sum(0))


def test_convert_sync_batchnorm_classmethod():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4, affine=False)))
    w = model[1].weight
    converted = normext.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is normext.SyncBatchNorm and converted[1].weight is w
    assert type(converted[2][0]) is normext.SyncBatchNorm
    torch_converted = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4, affine=False))))
    assert repr(converted) == repr(torch_converted)
