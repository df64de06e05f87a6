"""PyTorch's own test inputs for BatchNorm and InstanceNorm: the OpInfo samples (and error inputs) of
nn.functional.batch_norm / instance_norm and the ModuleInfo inputs of nn.BatchNorm*d /
nn.InstanceNorm*d, run through normext and torch."""
import copy

import pytest
import torch
import torch.nn.functional as F

import normext

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations",
    reason="torch's internal test helpers need expecttest")
from torch.testing._internal.common_modules import module_db  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 3e-3}
FUNCTIONALS = {"nn.functional.batch_norm": (F.batch_norm, normext.functional.batch_norm),
               "nn.functional.instance_norm": (F.instance_norm, normext.functional.instance_norm)}
MODULES = {torch.nn.BatchNorm1d: normext.BatchNorm1d, torch.nn.BatchNorm2d: normext.BatchNorm2d,
           torch.nn.BatchNorm3d: normext.BatchNorm3d, torch.nn.InstanceNorm1d: normext.InstanceNorm1d,
           torch.nn.InstanceNorm2d: normext.InstanceNorm2d, torch.nn.InstanceNorm3d: normext.InstanceNorm3d}


def _opinfo(name):
    return next(o for o in common_methods_invocations.op_db if o.name == name and o.variant_test_name == "")


def _clone(v):
    return v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v


def _call(fn, sample):
    # Running statistics are updated in place: every call gets its own copies.
    args = [_clone(a) for a in sample.args]
    kwargs = {k: _clone(v) for k, v in sample.kwargs.items()}
    x = _clone(sample.input)
    try:
        return fn(x, *args, **kwargs), x, args, kwargs
    except Exception as e:  # noqa: BLE001  (the error itself is what is compared)
        return e, x, args, kwargs


@pytest.mark.parametrize("name", sorted(FUNCTIONALS))
@pytest.mark.parametrize("dtype", [torch.float32], ids=str)
def test_opinfo_samples(device, name, dtype):
    theirs_fn, ours_fn = FUNCTIONALS[name]
    grad = dtype in (torch.float32, torch.float64)
    samples = list(_opinfo(name).sample_inputs(device, dtype, requires_grad=grad))
    assert samples
    for sample in samples:
        ref, rx, rargs, rkw = _call(theirs_fn, sample)
        out, ox, oargs, okw = _call(ours_fn, sample)
        assert type(out) is type(ref), (sample, ref, out)
        if isinstance(ref, Exception):
            assert str(out) == str(ref)
            continue
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])
        # running statistics after the step
        for a, b in zip(list(oargs) + list(okw.values()), list(rargs) + list(rkw.values())):
            if isinstance(a, torch.Tensor) and not a.requires_grad:
                torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype], equal_nan=True)
        if grad and ox.numel() > 0:
            o_in = [ox] + [a for a in list(oargs) + list(okw.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
            r_in = [rx] + [a for a in list(rargs) + list(rkw.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
            go = torch.randn_like(ref)
            for a, b in zip(torch.autograd.grad(out, o_in, go, allow_unused=True),
                            torch.autograd.grad(ref, r_in, go, allow_unused=True)):
                if b is None:
                    continue
                torch.testing.assert_close(a, b, atol=10 * TOL[dtype], rtol=10 * TOL[dtype])


@pytest.mark.parametrize("name", sorted(FUNCTIONALS))
def test_opinfo_error_inputs(device, name):
    theirs_fn, ours_fn = FUNCTIONALS[name]
    opinfo = _opinfo(name)
    if opinfo.error_inputs_func is None:
        pytest.skip("no error inputs")
    for error in opinfo.error_inputs(device):
        ref = _call(theirs_fn, error.sample_input)[0]
        out = _call(ours_fn, error.sample_input)[0]
        assert isinstance(ref, Exception)
        assert type(out) is type(ref) and str(out) == str(ref), (error.sample_input, ref, out)


@pytest.mark.parametrize("torch_cls", list(MODULES), ids=lambda c: c.__name__)
def test_moduleinfo_inputs(device, torch_cls):
    info = next(m for m in module_db if m.module_cls is torch_cls)
    n = 0
    for training in (True, False):
        for module_input in info.module_inputs_func(info, device=device, dtype=torch.float64,
                                                    requires_grad=True, training=training):
            ctor, fwd = module_input.constructor_input, module_input.forward_input
            if fwd is None:
                continue
            theirs = torch_cls(*ctor.args, **ctor.kwargs).to(device=device, dtype=torch.float64)
            theirs.train(training)
            ours = normext.convert(copy.deepcopy(theirs))
            assert type(ours) is MODULES[torch_cls]
            x = fwd.args[0]
            ref, out = theirs(x), ours(x)
            torch.testing.assert_close(out, ref)
            for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
                torch.testing.assert_close(a, b, msg=k)
            if x.requires_grad and ref.requires_grad:
                go = torch.randn_like(ref)
                params = [p for p in theirs.parameters()]
                ref_grads = torch.autograd.grad(ref, [x, *params], go, allow_unused=True)
                out_grads = torch.autograd.grad(out, [x, *ours.parameters()], go, allow_unused=True)
                for a, b in zip(out_grads, ref_grads):
                    if b is not None:
                        torch.testing.assert_close(a, b)
            n += 1
    assert n > 0
