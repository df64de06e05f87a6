"""PyTorch's own test inputs for GroupNorm: the OpInfo samples and error inputs of
nn.functional.group_norm and the ModuleInfo inputs of nn.GroupNorm, run through normext and torch.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import normext
from conftest import TORCH_VERSION, assert_sample_grads_close

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations",
    reason="torch's internal test helpers need expecttest")
from torch.testing._internal.common_modules import module_db  # noqa: E402

OPINFO = next(o for o in common_methods_invocations.op_db if o.name == "nn.functional.group_norm")
MODULEINFO = next(m for m in module_db if m.module_cls is torch.nn.GroupNorm)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _call(fn, sample):
    try:
        return fn(sample.input, *sample.args, **sample.kwargs)
    except Exception as e:  # noqa: BLE001  (the error itself is what is compared)
        return e


@pytest.mark.parametrize("dtype", list(TOL))
def test_opinfo_samples(device, dtype):
    grad = dtype in (torch.float32, torch.float64)
    samples = list(OPINFO.sample_inputs(device, dtype, requires_grad=grad))
    assert samples
    for sample in samples:
        ref = _call(F.group_norm, sample)
        out = _call(normext.functional.group_norm, sample)
        assert type(out) is type(ref), (sample, ref, out)
        if isinstance(ref, Exception):
            assert str(out) == str(ref)
            continue
        torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=TOL[dtype])
        assert out.stride() == ref.stride()
        if grad and sample.input.numel() > 0:
            assert_sample_grads_close(out, ref, sample, 10 * TOL[dtype])


def test_opinfo_error_inputs(device):
    errors = list(OPINFO.error_inputs(device))
    assert errors
    for error in errors:
        sample = error.sample_input
        ref = _call(F.group_norm, sample)
        out = _call(normext.functional.group_norm, sample)
        assert isinstance(ref, Exception)
        assert type(out) is type(ref) and str(out) == str(ref), (sample, ref, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moduleinfo_inputs(device, dtype):
    n = 0
    for module_input in MODULEINFO.module_inputs_func(MODULEINFO, device=device, dtype=dtype,
                                                       requires_grad=True, training=True):
        ctor, fwd = module_input.constructor_input, module_input.forward_input
        if fwd is None:
            continue
        theirs = torch.nn.GroupNorm(*ctor.args, **ctor.kwargs).to(device=device, dtype=dtype)
        with torch.no_grad():
            for p in theirs.parameters():
                p.uniform_(-1, 1)
        ours = normext.convert(copy.deepcopy(theirs))
        assert type(ours) is normext.GroupNorm
        x = fwd.args[0]
        for training in (True, False):
            theirs.train(training)
            ours.train(training)
            ref, out = theirs(x), ours(x)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            go = torch.randn_like(ref)
            ref_grads = torch.autograd.grad(ref, [x, *theirs.parameters()], go)
            out_grads = torch.autograd.grad(out, [x, *ours.parameters()], go)
            for a, b in zip(out_grads, ref_grads):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            n += 1
    assert n > 0


# PyTorch's ModuleInfo error inputs (construction and forward errors) of the normext modules'
# torch counterparts: normext's module must fail the same way, with the same type and message.
ERROR_MODULES = {torch.nn.GroupNorm: normext.GroupNorm, torch.nn.BatchNorm1d: normext.BatchNorm1d,
                 torch.nn.BatchNorm2d: normext.BatchNorm2d, torch.nn.BatchNorm3d: normext.BatchNorm3d}


@pytest.mark.parametrize("torch_cls", list(ERROR_MODULES), ids=lambda c: c.__name__)
def test_moduleinfo_error_inputs(device, torch_cls):
    from torch.testing._internal.common_modules import ModuleErrorEnum

    info = next(m for m in module_db if m.module_cls is torch_cls)
    errors = info.module_error_inputs_func(info, device=device, dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    for error in errors:
        ctor, fwd = error.module_error_input.constructor_input, error.module_error_input.forward_input
        with pytest.raises(error.error_type, match=error.error_regex) as theirs:
            m = torch_cls(*ctor.args, **ctor.kwargs).to(device)
            if error.error_on == ModuleErrorEnum.FORWARD_ERROR:
                m(*fwd.args, **fwd.kwargs)
        with pytest.raises(error.error_type, match=error.error_regex) as ours:
            m = ERROR_MODULES[torch_cls](*ctor.args, **ctor.kwargs).to(device)
            if error.error_on == ModuleErrorEnum.FORWARD_ERROR:
                m(*fwd.args, **fwd.kwargs)
        # NB: torch before 2.14 words some messages differently ("eps must be positive, but
        # got" without "during training"); normext raises 2.14's.
        if TORCH_VERSION >= (2, 14):
            assert str(ours.value) == str(theirs.value)
