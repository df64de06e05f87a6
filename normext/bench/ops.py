"""The op families of the benchmark: shapes as they run in real models, and how to call each op.

Every family pairs normext's op with the torch eager code it replaces (torch.compile of that same
code is the second baseline). Calling convention: ``fn(*inputs) -> tuple of outputs``, where
``inputs`` are the differentiable tensors (activation first), so forward, forward+backward and
backward timings, the correctness guard and the saved-tensor count treat every family alike.

A family whose normext function is missing (an older build) is skipped with one printed line.
"""

import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

EPS = 1e-5


@dataclass(frozen=True)
class ShapeSpec:
    label: str  # where the shape comes from (model and level)
    shape: Tuple[int, ...]
    groups: Optional[int] = None  # GroupNorm families only
    quick: bool = False  # part of the --quick suite

    def short(self):
        s = "x".join(map(str, self.shape))
        return s + (f" G{self.groups}" if self.groups else "")


@dataclass
class Built:
    """One case, ready to run: inputs and the callables to compare."""

    x: torch.Tensor  # the activation: bytes, copy baseline, layout
    inputs: List[torch.Tensor]  # differentiable arguments; inputs[0] is x
    normext: Callable
    eager: Callable
    extra: Dict[str, Callable] = field(default_factory=dict)  # forward-only extra baselines
    # Bytes normext must move at minimum, in units of x.nbytes, per pass.
    traffic: Dict[str, int] = field(default_factory=lambda: {"fwd": 2, "bwd": 3, "fwdbwd": 5})


@dataclass
class OpFamily:
    name: str
    title: str
    shapes: List[ShapeSpec]
    spatial: bool  # NCHW / channels_last layouts apply
    build: Callable  # (spec, dtype, layout, device) -> Built
    needs: Callable  # (normext.functional) -> None if available, else why not
    baseline: str  # what "torch eager" means for this family, for the report

    def suite(self, which):
        if which == "tiny":
            return [tiny_shape(self)]
        return [s for s in self.shapes if which == "full" or s.quick]


# ---- shapes ------------------------------------------------------------------------------------

GN_SHAPES = [
    ShapeSpec("SD U-Net 64x64", (2, 320, 64, 64), 32, quick=True),
    ShapeSpec("SD U-Net 16x16", (2, 1280, 16, 16), 32),
    ShapeSpec("SD VAE dec 256x256", (1, 256, 256, 256), 32, quick=True),
    ShapeSpec("FPN head P3 800x1216", (2, 256, 100, 152), 32),
    ShapeSpec("FPN head P5 b8", (8, 256, 25, 38), 32, quick=True),
    ShapeSpec("3D U-Net enc2", (2, 64, 32, 64, 64), 8),
]
# Fused GN variants: the levels where diffusion models use them (ResBlocks of U-Net and VAE).
GN_FUSED_SHAPES = [
    ShapeSpec("SD U-Net 64x64", (2, 320, 64, 64), 32, quick=True),
    ShapeSpec("SD U-Net 16x16", (2, 1280, 16, 16), 32),
    ShapeSpec("SD VAE dec 256x256", (1, 256, 256, 256), 32, quick=True),
]
# (batch, tokens, hidden): transformer rows from 768 to 8192 wide.
ROW_SHAPES = [
    ShapeSpec("BERT-base b8 s512", (8, 512, 768), quick=True),
    ShapeSpec("Llama-7B b2 s2048", (2, 2048, 4096), quick=True),
    ShapeSpec("Llama-70B b1 s2048", (1, 2048, 8192)),
]
BN_SHAPES = [
    ShapeSpec("ResNet-50 stage1 b16", (16, 256, 56, 56), quick=True),
    ShapeSpec("ResNet-50 stage3 b16", (16, 1024, 14, 14)),
    ShapeSpec("3D CNN b2", (2, 64, 32, 56, 56)),
]
IN_SHAPES = [
    ShapeSpec("style transfer b4", (4, 64, 128, 128), quick=True),
    ShapeSpec("style transfer 256 b1", (1, 128, 256, 256)),
    ShapeSpec("3D U-Net (nnU-Net) b1", (1, 32, 64, 64, 64)),
]


def tiny_shape(family):
    """One tiny shape per family (tests of the tool itself)."""
    if family.name in ("group_norm", "group_norm_silu", "add_group_norm"):
        return ShapeSpec("tiny", (2, 8, 4, 4), 4, quick=True)
    if family.spatial:
        return ShapeSpec("tiny", (2, 4, 3, 3), quick=True)
    return ShapeSpec("tiny", (2, 3, 16), quick=True)


# ---- inputs ------------------------------------------------------------------------------------


def memory_format(ndim, layout):
    if layout == "contiguous":
        return torch.contiguous_format
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _randn(shape, gen, dtype, device, scale=1.0, shift=0.0):
    return (torch.randn(shape, generator=gen) * scale + shift).to(dtype=dtype, device=device)


def _activation(spec, dtype, layout, device, gen):
    x = _randn(spec.shape, gen, dtype, device, scale=2.0, shift=0.5)
    return x.contiguous(memory_format=memory_format(x.dim(), layout))


def _affine(c, dtype, device, gen):
    weight = _randn((c,), gen, dtype, device, scale=0.1, shift=1.0)
    bias = _randn((c,), gen, dtype, device, scale=0.1)
    return weight, bias


def _has(*names):
    def needs(nf):
        missing = [n for n in names if not callable(getattr(nf, n, None))]
        return f"normext.functional.{missing[0]} is not in this build" if missing else None

    return needs


def _has_activation(nf):
    why = _has("group_norm")(nf)
    if why:
        return why
    if "activation" not in inspect.signature(nf.group_norm).parameters:
        return "normext.functional.group_norm has no activation= (fused GN+SiLU) in this build"
    return None


def _nf():
    import normext.functional

    return normext.functional


# ---- families ----------------------------------------------------------------------------------


def _build_group_norm(spec, dtype, layout, device, activation=None):
    gen = torch.Generator().manual_seed(0)
    x = _activation(spec, dtype, layout, device, gen)
    weight, bias = _affine(spec.shape[1], dtype, device, gen)
    g, nf = spec.groups, _nf()
    if activation is None:
        def normext_fn(x, w, b):
            return (nf.group_norm(x, g, w, b, EPS),)

        def eager(x, w, b):
            return (F.group_norm(x, g, w, b, EPS),)

        def bn(x, w, b):
            return (F.batch_norm(x, None, None, w, b, True, 0.1, EPS),)

        return Built(x, [x, weight, bias], normext_fn, eager, extra={"bn": bn})

    def normext_fn(x, w, b):
        return (nf.group_norm(x, g, w, b, EPS, activation="silu"),)

    def eager(x, w, b):
        return (F.silu(F.group_norm(x, g, w, b, EPS)),)

    return Built(x, [x, weight, bias], normext_fn, eager)


def _build_add_group_norm(spec, dtype, layout, device):
    gen = torch.Generator().manual_seed(0)
    x = _activation(spec, dtype, layout, device, gen)
    residual = _activation(spec, dtype, layout, device, gen)
    weight, bias = _affine(spec.shape[1], dtype, device, gen)
    g, nf = spec.groups, _nf()

    def normext_fn(x, r, w, b):
        return tuple(nf.add_group_norm(x, r, g, w, b, EPS))

    def eager(x, r, w, b):
        s = x + r
        return F.group_norm(s, g, w, b, EPS), s

    # fwd: read x, r; write out, sum. bwd: read sum, d_out, d_sum; write d_input (= d_residual).
    return Built(x, [x, residual, weight, bias], normext_fn, eager,
                 traffic={"fwd": 4, "bwd": 4, "fwdbwd": 8})


def _build_rows(kind):
    def build(spec, dtype, layout, device):
        gen = torch.Generator().manual_seed(0)
        x = _activation(spec, dtype, layout, device, gen)
        c = spec.shape[-1]
        weight, bias = _affine(c, dtype, device, gen)
        nf, shape = _nf(), (c,)
        if kind == "layer_norm":
            return Built(x, [x, weight, bias], lambda x, w, b: (nf.layer_norm(x, shape, w, b, EPS),),
                         lambda x, w, b: (F.layer_norm(x, shape, w, b, EPS),))
        if kind == "rms_norm":
            return Built(x, [x, weight], lambda x, w: (nf.rms_norm(x, shape, w),),
                         lambda x, w: (F.rms_norm(x, shape, w),))
        if kind == "dyt":
            alpha = torch.full((1,), 0.5, dtype=dtype, device=device)

            def eager(x, a, w, b):
                return (w * torch.tanh(a * x) + b,)

            return Built(x, [x, alpha, weight, bias],
                         lambda x, a, w, b: (nf.dyt(x, a, w, b, channels_last=True),), eager)
        residual = _activation(spec, dtype, layout, device, gen)
        traffic = {"fwd": 4, "bwd": 4, "fwdbwd": 8}
        if kind == "add_layer_norm":
            def eager(x, r, w, b):
                s = x + r
                return F.layer_norm(s, shape, w, b, EPS), s

            return Built(x, [x, residual, weight, bias],
                         lambda x, r, w, b: tuple(nf.add_layer_norm(x, r, shape, w, b, EPS)), eager,
                         traffic=traffic)
        if kind == "add_rms_norm":
            def eager(x, r, w):
                s = x + r
                return F.rms_norm(s, shape, w), s

            return Built(x, [x, residual, weight],
                         lambda x, r, w: tuple(nf.add_rms_norm(x, r, shape, w)), eager, traffic=traffic)
        raise ValueError(kind)

    return build


def _build_batch_norm(spec, dtype, layout, device):
    gen = torch.Generator().manual_seed(0)
    x = _activation(spec, dtype, layout, device, gen)
    c = spec.shape[1]
    weight, bias = _affine(c, dtype, device, gen)
    # Each implementation updates its own running statistics (training mode).
    stats = {k: (torch.zeros(c, dtype=dtype, device=device), torch.ones(c, dtype=dtype, device=device))
             for k in ("normext", "eager")}
    nf = _nf()

    def normext_fn(x, w, b):
        return (nf.batch_norm(x, *stats["normext"], w, b, True, 0.1, EPS),)

    def eager(x, w, b):
        return (F.batch_norm(x, *stats["eager"], w, b, True, 0.1, EPS),)

    return Built(x, [x, weight, bias], normext_fn, eager)


def _build_instance_norm(spec, dtype, layout, device):
    gen = torch.Generator().manual_seed(0)
    x = _activation(spec, dtype, layout, device, gen)
    weight, bias = _affine(spec.shape[1], dtype, device, gen)
    nf = _nf()

    def normext_fn(x, w, b):
        return (nf.instance_norm(x, None, None, w, b, True, 0.1, EPS),)

    def eager(x, w, b):
        return (F.instance_norm(x, None, None, w, b, True, 0.1, EPS),)

    return Built(x, [x, weight, bias], normext_fn, eager)


FAMILIES = [
    OpFamily("group_norm", "GroupNorm", GN_SHAPES, True, _build_group_norm, _has("group_norm"),
             "F.group_norm"),
    OpFamily("group_norm_silu", "GroupNorm+SiLU", GN_FUSED_SHAPES, True,
             lambda *a: _build_group_norm(*a, activation="silu"), _has_activation,
             "F.silu(F.group_norm)"),
    OpFamily("add_group_norm", "add+GroupNorm", GN_FUSED_SHAPES, True, _build_add_group_norm,
             _has("add_group_norm"), "x + r, then F.group_norm"),
    OpFamily("layer_norm", "LayerNorm", ROW_SHAPES, False, _build_rows("layer_norm"),
             _has("layer_norm"), "F.layer_norm"),
    OpFamily("rms_norm", "RMSNorm", ROW_SHAPES, False, _build_rows("rms_norm"), _has("rms_norm"),
             "F.rms_norm"),
    OpFamily("add_layer_norm", "add+LayerNorm", ROW_SHAPES, False, _build_rows("add_layer_norm"),
             _has("add_layer_norm"), "x + r, then F.layer_norm"),
    OpFamily("add_rms_norm", "add+RMSNorm", ROW_SHAPES, False, _build_rows("add_rms_norm"),
             _has("add_rms_norm"), "x + r, then F.rms_norm"),
    OpFamily("dyt", "DyT", ROW_SHAPES, False, _build_rows("dyt"), _has("dyt"),
             "w * torch.tanh(a * x) + b"),
    OpFamily("batch_norm", "BatchNorm train", BN_SHAPES, True, _build_batch_norm,
             _has("batch_norm"), "F.batch_norm(training=True)"),
    OpFamily("instance_norm", "InstanceNorm", IN_SHAPES, True, _build_instance_norm,
             _has("instance_norm"), "F.instance_norm"),
]
BY_NAME = {f.name: f for f in FAMILIES}


def select(names):
    """Families named in ``names`` (None: all), in the suite's order; unknown names raise."""
    if not names:
        return list(FAMILIES)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown op {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    return [f for f in FAMILIES if f.name in names]
