"""Under torch.autocast, normext's functionals and modules return what torch's do: CUDA autocast
runs group_norm, layer_norm and rms_norm in float32 (ATen's fp32 cast policy) and lets batch_norm
and instance_norm through; CPU autocast lets all of them through."""
import copy

import pytest
import torch
import torch.nn.functional as F

import normext
import normext.functional as NF


def _pairs(x, c):
    """name -> (torch call, normext call) on input x with C = c channels."""
    w, b = torch.randn(c, device=x.device), torch.randn(c, device=x.device)
    rm, rv = torch.zeros(c, device=x.device), torch.ones(c, device=x.device)
    last = [x.shape[-1]]
    return {
        "group_norm": (lambda m: m.group_norm(x, 2, w, b)),
        "layer_norm": (lambda m: m.layer_norm(x, last)),
        "rms_norm": (lambda m: m.rms_norm(x, last)),
        "batch_norm": (lambda m: m.batch_norm(x, rm.clone(), rv.clone(), w, b, True)),
        "instance_norm": (lambda m: m.instance_norm(x, weight=w, bias=b)),
    }


def _autocast_devices():
    cases = [("cpu", torch.bfloat16)]
    if torch.cuda.is_available():
        cases += [("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return cases


@pytest.mark.parametrize("device_type,dtype", _autocast_devices(), ids=str)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("name", list(_pairs(torch.zeros(2, 4, 3, 8), 4)))
def test_functionals_match_torch_under_autocast(device_type, dtype, input_dtype, name):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 8, device=device_type).to(input_dtype)
    call = _pairs(x, 4)[name]
    with torch.autocast(device_type, dtype=dtype):
        ref = call(F)
        out = call(NF)
    assert out.dtype == ref.dtype
    tol = 1e-5 if ref.dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_converted_model_trains_like_torch_under_cuda_autocast(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GroupNorm(2, 8),
    ).cuda()
    ours = normext.convert(copy.deepcopy(model), fuse=True)
    x = torch.randn(2, 3, 16, 16, device="cuda")
    outs, grads = [], []
    for m in (model, ours):
        with torch.autocast("cuda", dtype=dtype):
            y = m(x)
        y.float().square().mean().backward()
        outs.append(y)
        grads.append([p.grad for p in m.parameters()])
    assert outs[1].dtype == outs[0].dtype == torch.float32
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=2e-2)
    for g_ours, g_ref in zip(grads[1], grads[0]):
        assert g_ours.dtype == g_ref.dtype
        torch.testing.assert_close(g_ours, g_ref, atol=5e-2, rtol=5e-2)
