#!/usr/bin/env bash
# The GPU acceptance run in one command, for a machine with a CUDA GPU, its own torch and nvcc
# (as an H200 was lent for 15 minutes: README "On a GPU"). From the repository root:
#
#   bash tools/gpu_check.sh                        # build, parity, pytest, sanitizer, bench
#   bash tools/gpu_check.sh build pytest           # only these steps
#
# Steps (each bounded by `timeout`, logs under $OUT, default ./gpu_check_out):
#   build     in-place CUDA build for the GPU's architecture, with the system g++ when there is one
#             (a wrapper toolchain can compile libstdc++ into _C.so: README's toolchain note)
#   parity    tools/gpu_parity.py: every op vs torch and float64 on multi-block shapes
#   pytest    the CUDA parametrizations of the test suite (pytest-xdist if installed)
#   sanitize  tools/gpu_parity.py small under compute-sanitizer memcheck
#   bench     python -m normext.bench --device cuda --no-compile (JSON in $OUT)
#   profile   tools/gpu_profile.py: host / wall / kernel time per call and the kernels by name
#             (not in the default steps)
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=" ${*:-build parity pytest sanitize bench} "
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$SECONDS
stamp() { echo "=== [$((SECONDS - T0)) s] $*"; }

stamp "environment"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

if [[ "$STEPS" == *" build "* ]]; then
  stamp "build"
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  cxx=""
  [[ -x /usr/bin/g++ ]] && cxx="CXX=/usr/bin/g++ CC=/usr/bin/gcc"
  if ! env $cxx NORMEXT_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"
    stamp "BUILD FAILED (log: $OUT/build.log)"
    exit 1
  fi
  echo "built for sm_${arch/./} ${cxx:-with the default compiler}"
fi

if [[ "$STEPS" == *" parity "* ]]; then
  stamp "parity"
  timeout "${PARITY_TIMEOUT:-120}" "$PY" tools/gpu_parity.py > "$OUT/parity.log" 2>&1
  echo "parity rc=$?"
  grep -E "^FAIL|PARITY DONE|large-mean" "$OUT/parity.log" | head -40
fi

if [[ "$STEPS" == *" pytest "* ]]; then
  stamp "pytest"
  xdist=""
  "$PY" -c "import xdist" 2> /dev/null && xdist="-n $(( $(nproc) < 14 ? $(nproc) : 14 ))"
  timeout "${PYTEST_TIMEOUT:-240}" "$PY" -m pytest -q -p no:cacheprovider $xdist -k cuda tests \
    -rfE --tb=short > "$OUT/pytest.log" 2>&1
  echo "pytest rc=$?"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest.log" | cut -c1-200 | head -40
fi

if [[ "$STEPS" == *" sanitize "* ]]; then
  stamp "sanitize"
  timeout "${SANITIZE_TIMEOUT:-150}" compute-sanitizer --tool memcheck --print-limit 20 \
    --error-exitcode 9 "$PY" tools/gpu_parity.py small > "$OUT/sanitize.log" 2>&1
  echo "memcheck rc=$?"
  grep -E "========= (Invalid|ERROR SUMMARY)|^FAIL|PARITY DONE" "$OUT/sanitize.log" | head -20
fi

if [[ "$STEPS" == *" bench "* ]]; then
  stamp "bench"
  timeout "${BENCH_TIMEOUT:-150}" "$PY" -m normext.bench --device cuda --no-compile --min-time 0.03 \
    --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  grep -E "vs eager|^[A-Z]" "$OUT/bench.log" | tail -45
fi
if [[ "$STEPS" == *" profile "* ]]; then
  stamp "profile"
  timeout "${PROFILE_TIMEOUT:-150}" "$PY" tools/gpu_profile.py > "$OUT/profile.log" 2>&1
  echo "profile rc=$?"
  grep -E " (host|wall) " "$OUT/profile.log" | cut -c1-125 | head -150
fi
stamp "done"
