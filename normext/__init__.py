"""normext: fast, exact normalization kernels (C++/CUDA) that drop into torch.nn."""
import torch


def _check_build_matches_torch() -> None:
    # NB: a compiled extension only loads into the exact torch it was built against; anything else
    # ends in an undefined-symbol crash deep inside the import. Say so clearly instead.
    try:
        from normext import _build_info
    except ImportError:
        raise ImportError(
            "normext's compiled extension is missing: install the package with "
            "`pip install --no-build-isolation .` from the source tree"
        ) from None
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"normext was compiled against torch {_build_info.TORCH_VERSION}, but torch "
            f"{torch.__version__} is installed. Rebuild it against the installed torch: "
            "`pip install --no-build-isolation --no-deps --force-reinstall .` in the normext "
            "source tree"
        )


_check_build_matches_torch()

from normext import _C  # noqa: E402  (loads the library: registers the ops)
from normext import _meta, _autograd  # noqa: E402,F401  (fake kernels, autograd formulas)
from normext import functional  # noqa: E402
from normext.modules import (  # noqa: E402
    BatchNorm1d, BatchNorm2d, BatchNorm3d, DyT, GroupNorm, InstanceNorm1d, InstanceNorm2d,
    InstanceNorm3d, LayerNorm, RMSNorm,
)
from normext.sync_batch_norm import SyncBatchNorm  # noqa: E402
from normext.convert import convert  # noqa: E402

__all__ = [
    "functional", "convert", "GroupNorm", "LayerNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm", "DyT",
]
