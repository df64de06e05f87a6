"""The functionals call the ops below the autograd key when no gradient can flow (no_grad,
inference_mode, or no input requiring grad): same results and side effects as the autograd path,
no graph; with an input requiring grad, the graph is built as before."""
import pytest
import torch

import normext.functional as NF


def _calls():
    g = torch.Generator().manual_seed(0)
    x4 = torch.randn(2, 8, 5, 5, generator=g)
    rows = torch.randn(3, 4, 16, generator=g)
    res = torch.randn(3, 4, 16, generator=g)
    c8, c16 = torch.randn(8, generator=g), torch.randn(16, generator=g)
    return {
        "group_norm": (lambda x, w: NF.group_norm(x, 4, w, c8), x4, c8),
        "group_norm_silu": (lambda x, w: NF.group_norm(x, 4, w, c8, activation="silu"), x4, c8),
        "add_group_norm": (lambda x, w: NF.add_group_norm(x, x4, 4, w, c8)[0], x4, c8),
        "layer_norm": (lambda x, w: NF.layer_norm(x, (16,), w, c16), rows, c16),
        "rms_norm": (lambda x, w: NF.rms_norm(x, (16,), w), rows, c16),
        "add_rms_norm": (lambda x, w: NF.add_rms_norm(x, res, (16,), w)[0], rows, c16),
        "add_layer_norm": (lambda x, w: NF.add_layer_norm(x, res, (16,), w, c16)[0], rows, c16),
        "batch_norm": (lambda x, w: NF.batch_norm(x, None, None, w, c8, True), x4, c8),
        "instance_norm": (lambda x, w: NF.instance_norm(x, weight=w, bias=c8), x4, c8),
        "dyt": (lambda x, w: NF.dyt(x, torch.tensor([0.5]), w, c16), rows, c16),
    }


@pytest.mark.parametrize("name", list(_calls()))
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_input_requires_grad"])
def test_no_grad_path_matches_autograd_path(name, mode):
    fn, x, w = _calls()[name]
    ref = fn(x.clone().requires_grad_(), w.clone().requires_grad_())
    assert ref.grad_fn is not None
    if mode == "no_grad":
        with torch.no_grad():
            out = fn(x.clone().requires_grad_(), w.clone().requires_grad_())
    elif mode == "inference_mode":
        with torch.inference_mode():
            out = fn(x.clone(), w.clone())
    else:
        out = fn(x.clone(), w.clone())
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=0)


def test_running_stats_updated_on_the_no_grad_path():
    x = torch.randn(4, 3, 6, 6)
    rm_a, rv_a = torch.zeros(3), torch.ones(3)
    rm_b, rv_b = torch.zeros(3), torch.ones(3)
    with torch.no_grad():
        NF.batch_norm(x, rm_a, rv_a, training=True, momentum=0.3)
    NF.batch_norm(x.clone().requires_grad_(), rm_b, rv_b, training=True, momentum=0.3)
    torch.testing.assert_close(rm_a, rm_b, rtol=0, atol=0)
    torch.testing.assert_close(rv_a, rv_b, rtol=0, atol=0)
    torch.testing.assert_close(rm_a, 0.3 * x.mean((0, 2, 3)))


@pytest.mark.parametrize("call", ["functional", "op"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_inplace_bumps_the_version(call, layout):
    x = torch.randn(2, 8, 4, 4)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 8, 4, 8)[..., ::2]
    before = x._version
    with torch.no_grad():
        if call == "functional":
            y = NF.group_norm(x, 4, activation="silu", inplace=True)
            assert y.data_ptr() == x.data_ptr()
        else:
            torch.ops.normext.group_norm_inplace(x, None, None, 4, 1e-5, 1)
    assert x._version > before


def test_inplace_over_a_tensor_saved_for_backward_is_caught():
    # x needs no grad, so the in-place call is allowed, but mul saved x for w's gradient:
    # autograd must refuse the backward instead of using the overwritten values.
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = (x * w).sum()
    NF.group_norm(x, 4, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def _grads(fn, x, w, create_graph):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(x, w)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    gx, gw = torch.autograd.grad(out, (x, w), dy, create_graph=create_graph)
    if create_graph:  # and through the backward once more
        gx, gw = torch.autograd.grad((gx * gx).sum() + (gw * gw).sum(), (x, w))
    return out.grad_fn, out, gx, gw


@pytest.mark.parametrize("name", list(_calls()))
@pytest.mark.parametrize("create_graph", [False, True])
def test_eager_function_matches_the_ops_autograd_kernel(name, create_graph, monkeypatch):
    # Eager calls that need a gradient use each op's autograd.Function (normext._autograd
    # .register_autograd); torch.ops calls and torch.compile use the op's Autograd kernel. Both run
    # the same formulas: same outputs and gradients, first and second order.
    fn, x, w = _calls()[name]
    node, *eager = _grads(fn, x, w, create_graph)
    assert type(node).__name__.endswith("_functionBackward"), type(node).__name__
    monkeypatch.setattr("normext._autograd._EAGER_FUNCTIONS", {})
    node, *kernel = _grads(fn, x, w, create_graph)
    assert type(node).__name__.startswith("GeneratedBackwardFor_normext_"), type(node).__name__
    for a, b in zip(eager, kernel):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _mixed_device_calls():
    """Op calls with one argument on the meta device and the others on the CPU."""
    ops = torch.ops.normext
    x = torch.randn(2, 6, 4, 4)
    dy = torch.randn_like(x)
    mean, rstd = torch.zeros(2, 3), torch.ones(2, 3)
    rows = torch.randn(4, 8)
    row_stats = torch.zeros(4), torch.ones(4)
    meta = lambda t: t.to("meta")  # noqa: E731
    return {
        "group_norm_forward weight": lambda: ops.group_norm_forward(x, meta(torch.ones(6)), None, 3, 1e-5),
        "group_norm_backward grad_out": lambda: ops.group_norm_backward(
            meta(dy), x, mean, rstd, None, 3, [True, True, True]),
        "group_norm_backward mean": lambda: ops.group_norm_backward(
            dy, x, meta(mean), rstd, None, 3, [True, True, True]),
        "layer_norm_backward rstd": lambda: ops.layer_norm_backward(
            torch.randn_like(rows), rows, [8], row_stats[0], meta(row_stats[1]), None, None, [True, True, True]),
        "batch_norm_forward running_var": lambda: ops.batch_norm_forward(
            x, None, None, torch.zeros(6), meta(torch.ones(6)), False, 0.1, 1e-5),
        "batch_norm_backward_reduce grad_out": lambda: ops.batch_norm_backward_reduce(
            meta(dy), x, torch.zeros(6)),
    }


@pytest.mark.parametrize("case", sorted(_mixed_device_calls()))
def test_a_meta_tensor_among_cpu_ones_is_refused(case):
    """The dispatcher sends such a call to the fake (Meta) kernel: it must raise torch's device
    error, not hand back an uninitialized CPU tensor."""
    with pytest.raises(RuntimeError, match="is not on the expected device"):
        _mixed_device_calls()[case]()
