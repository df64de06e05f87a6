"""normext.convert on models from the ecosystem (torchvision, timm, diffusers, transformers), built
from configs with random weights: in float64, the converted model's outputs, gradients and
BatchNorm buffers after a training step match the original's, and its eval outputs too.

Each library is optional (CI's venv has none of them): its tests skip when it is not installed.
"""
import copy

import pytest
import torch
from torch import nn

import normext

# Relative to the largest value of each compared tensor. A tensor whose largest value is below
# FLOOR times the largest of its kind (a conv bias ahead of a BatchNorm gets a gradient of pure
# rounding noise) is compared at that floor.
TOL = 1e-9
FLOOR = 1e-6


def _tensors(out):
    """The floating tensors of a model output (tensor, tuple, dict or a library's output class)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for k in out for t in _tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    for name in ("sample", "last_hidden_state"):
        if hasattr(out, name):
            return _tensors(getattr(out, name))
    raise TypeError(f"no tensors in {type(out).__name__}")


def _assert_close(got, expected, what):
    assert len(got) == len(expected), what
    top = max((e.abs().max().item() for e in expected if e.numel()), default=0.0)
    for i, (g, e) in enumerate(zip(got, expected)):
        scale = max(e.abs().max().item() if e.numel() else 0.0, FLOOR * top, 1e-30)
        err = (g - e).abs().max().item() / scale if e.numel() else 0.0
        assert err <= TOL, f"{what} {i}: relative error {err:.2e}"


def _map(fn, x):
    """fn applied to every tensor of x (a tensor or a list of them)."""
    return [_map(fn, v) for v in x] if isinstance(x, list) else fn(x)


def check_convert(model, *inputs, min_replaced=1):
    model = model.double()
    inputs = [_map(lambda t: t.double() if t.is_floating_point() else t, x) for x in inputs]
    converted = normext.convert(copy.deepcopy(model))
    replaced = sum(type(m).__module__.startswith("normext") for m in converted.modules())
    assert replaced >= min_replaced
    assert list(converted.state_dict()) == list(model.state_dict())

    results = []
    for m in (model, converted):
        m.train()
        xs = [_map(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), x)
              for x in inputs]
        torch.manual_seed(0)  # the same dropout / stochastic depth masks for both models
        outs = _tensors(m(*xs))
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
                   for i, o in enumerate(outs)]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        grads += [t.grad for t in _tensors(xs) if t.grad is not None]
        buffers = [b for b in m.buffers() if b.is_floating_point()]
        m.eval()
        with torch.no_grad():
            evals = _tensors(m(*inputs))
        results.append((outs, grads, buffers, evals))
    for what, ours, theirs in zip(["train output", "gradient", "buffer", "eval output"],
                                  results[1], results[0]):
        _assert_close(ours, theirs, what)


def test_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    check_convert(tv.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32), min_replaced=20)


def test_torchvision_swin_t():
    tv = pytest.importorskip("torchvision")
    check_convert(tv.models.swin_t(num_classes=10), torch.randn(1, 3, 64, 64), min_replaced=20)


def test_torchvision_fcos_head():
    pytest.importorskip("torchvision")
    from torchvision.models.detection.fcos import FCOSHead

    head = FCOSHead(in_channels=32, num_anchors=1, num_classes=5, num_convs=2)
    features = [torch.randn(2, 32, 16, 16), torch.randn(2, 32, 8, 8)]
    check_convert(head, features, min_replaced=4)


def test_timm_vit_with_torch_layer_norm():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10,
                              norm_layer=nn.LayerNorm)
    check_convert(model, torch.randn(2, 3, 32, 32), min_replaced=5)


def test_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    check_convert(unet, torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), min_replaced=10)


def test_transformers_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(config, add_pooling_layer=False)
    check_convert(model, torch.randint(0, 100, (2, 12)), min_replaced=5)
