"""Build script for normext._C (torch.utils.cpp_extension + ninja).

Sources (collected recursively, sorted, so new files need no edit here):
  * every csrc/**/*.cpp                      -> host compiler, every build
  * every csrc/**/*.cu                       -> nvcc, CUDA builds only
  * every *.cpp under a directory named cuda/ -> host compiler, CUDA builds only
    (host glue that includes c10/cuda headers)

Environment:
  NORMEXT_CUDA=0|1       force a CPU-only (0) or a CUDA (1) build. Unset: CUDA when the installed
                         torch has CUDA (torch.version.cuda) and nvcc is found.
  TORCH_CUDA_ARCH_LIST   GPU architectures; default DEFAULT_CUDA_ARCH_LIST below.
  MAX_JOBS               parallel compile jobs (read by BuildExtension/ninja).
  CUDA_HOME / CUDA_PATH  CUDA toolkit root; default: asked from nvcc on PATH.

Writes normext/_build_info.py (gitignored) with the torch/CUDA versions used, so that the package
can refuse to load next to a different torch.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
# NB: Ampere (A100, A10/RTX 30xx) and Hopper; override with TORCH_CUDA_ARCH_LIST.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;9.0"


def _log(msg):
    print(f"normext setup: {msg}", flush=True)


def _nvcc_toolkit_root():
    """The toolkit root of the nvcc on PATH, or None.

    NB: torch guesses CUDA_HOME as dirname(dirname(which nvcc)). When nvcc is a wrapper script
    (e.g. /usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc) that guess (/usr/local) has
    no include/cuda_runtime.h and no libcudart, so ask nvcc itself where it lives.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "normext_probe.cu", "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    bindir = match.group(1).strip() if match else os.path.dirname(os.path.realpath(nvcc))
    return os.path.dirname(os.path.realpath(bindir))


def _configure_cuda_home():
    # Must run before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import time.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    root = _nvcc_toolkit_root()
    if root is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        root = "/usr/local/cuda"
    if root is not None:
        os.environ["CUDA_HOME"] = root


_configure_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def _want_cuda():
    forced = os.environ.get("NORMEXT_CUDA", "").strip()
    if forced not in ("", "0", "1"):
        sys.exit(f"normext setup: NORMEXT_CUDA must be 0 or 1, got {forced!r}")
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    have_nvcc = nvcc is not None and os.path.exists(nvcc)
    if forced == "0":
        _log("NORMEXT_CUDA=0: CPU-only build")
        return False
    if forced == "1":
        if torch.version.cuda is None:
            sys.exit(
                f"normext setup: NORMEXT_CUDA=1 but the installed torch {torch.__version__} "
                "is a CPU-only build (torch.version.cuda is None); install a CUDA build of torch "
                "or set NORMEXT_CUDA=0"
            )
        if not have_nvcc:
            sys.exit(
                "normext setup: NORMEXT_CUDA=1 but nvcc was not found "
                f"(CUDA_HOME={CUDA_HOME!r}); put nvcc on PATH or set CUDA_HOME, "
                "or set NORMEXT_CUDA=0"
            )
        return True
    if torch.version.cuda is None:
        _log(f"torch {torch.__version__} has no CUDA: CPU-only build")
        return False
    if not have_nvcc:
        _log(f"nvcc not found (CUDA_HOME={CUDA_HOME!r}): CPU-only build, CUDA sources skipped")
        return False
    return True


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _is_cuda_only(path):
    return "cuda" in os.path.normpath(path).split(os.sep)[:-1]


def _collect_sources(with_cuda):
    cpp = _rel(glob.glob(os.path.join(ROOT, CSRC, "**", "*.cpp"), recursive=True))
    cu = _rel(glob.glob(os.path.join(ROOT, CSRC, "**", "*.cu"), recursive=True))
    if with_cuda:
        return cpp + cu
    return [p for p in cpp if not _is_cuda_only(p)]


def _sources_use_nvtx(sources):
    for src in sources:
        with open(os.path.join(ROOT, src), encoding="utf-8", errors="replace") as f:
            if "nvtx3/" in f.read():
                return True
    return False


def _cuda_include_dirs(sources):
    dirs = [os.path.join(CUDA_HOME, "include")]
    # NB: the toolkit may lack the library headers that ATen/cuda headers include (cublas_v2.h,
    # cusparse.h, ...); torch's CUDA wheel ships them in site-packages/nvidia/cu13/include. Put
    # them after the toolkit's own so the headers matching nvcc win.
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    cuda_major = torch.version.cuda.split(".")[0]
    wheel_inc = os.path.join(site_packages, "nvidia", f"cu{cuda_major}", "include")
    if os.path.isdir(wheel_inc):
        dirs.append(wheel_inc)
    if _sources_use_nvtx(sources) and not any(
        os.path.exists(os.path.join(d, "nvtx3", "nvToolsExt.h")) for d in dirs
    ):
        sys.exit("normext setup: a source includes nvtx3/ but no nvtx3/nvToolsExt.h was found in "
                 f"{dirs}")
    return dirs


def _base_version(version):
    return version.split("+", 1)[0]


def _build_info_text(with_cuda, arch_list):
    cuda = f'"{torch.version.cuda}"' if with_cuda else "None"
    arch = f'"{arch_list}"' if with_cuda else "None"
    return (
        "# Generated by setup.py at build time; do not edit, do not commit.\n"
        f'TORCH_VERSION = "{torch.__version__}"\n'
        f"CUDA_VERSION = {cuda}\n"
        f"CUDA_ARCH_LIST = {arch}\n"
        f"WITH_CUDA = {with_cuda}\n"
    )


def _write_if_changed(path, text):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class NormextBuildExtension(BuildExtension.with_options(use_ninja=True)):
    """BuildExtension that also writes normext/_build_info.py next to the compiled library."""

    def run(self):
        text = _build_info_text(WITH_CUDA, os.environ.get("TORCH_CUDA_ARCH_LIST"))
        # NB: the source tree serves editable installs; build_lib serves wheels, whose build_py
        # step has already copied the package's .py files by the time build_ext runs.
        _write_if_changed(os.path.join(ROOT, "normext", "_build_info.py"), text)
        if not self.inplace:
            _write_if_changed(os.path.join(self.build_lib, "normext", "_build_info.py"), text)
        super().run()


def _extension(with_cuda):
    sources = _collect_sources(with_cuda)
    include_dirs = [os.path.join(ROOT, CSRC)]
    cxx_flags = ["-O3", "-fopenmp", "-Wall"]
    # NB: at::parallel_for is inlined OpenMP from torch headers; -fopenmp links libgomp.so.1, the
    # soname torch/lib ships, so the process keeps a single OpenMP runtime.
    link_flags = ["-fopenmp"]
    if not with_cuda:
        _log(f"CPU-only build against torch {torch.__version__}; {len(sources)} sources")
        return CppExtension(
            "normext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
    n_cu = sum(s.endswith(".cu") for s in sources)
    _log(
        f"CUDA build against torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST={arch_list!r}; "
        f"{len(sources)} sources ({n_cu} .cu)"
    )
    include_dirs += _cuda_include_dirs(sources)
    nvcc_flags = ["-O3", "-lineinfo", "--Werror", "all-warnings", "-DNORMEXT_WITH_CUDA"]
    return CUDAExtension(
        "normext._C",
        sources,
        include_dirs=include_dirs,
        # NB: NVTX3 is header-only and ships with the toolkit: ranges named after each op show in
        # nsys timelines (csrc/common/profiling.h); CPU-only builds compile them away.
        extra_compile_args={
            "cxx": cxx_flags + ["-DNORMEXT_WITH_CUDA", "-DNORMEXT_WITH_NVTX"],
            "nvcc": nvcc_flags,
        },
        extra_link_args=link_flags,
    )


WITH_CUDA = _want_cuda()
EXT = _extension(WITH_CUDA)

setup(
    packages=find_packages(include=["normext", "normext.*"]),
    ext_modules=[EXT],
    cmdclass={"build_ext": NormextBuildExtension},
    # NB: a wheel holds machine code compiled against one torch's C++ ABI; pin the same release.
    install_requires=[f"torch=={_base_version(torch.__version__)}"],
    extras_require={
        "test": ["pytest", "numpy", "expecttest", "hypothesis"],
        "bench": ["matplotlib", "numpy"],
    },
    zip_safe=False,
)
