// CPU emulation shim (tests/cuda_emu, not CUDA): the emulator provides what the kernels use.
#pragma once
#include "emu.h"
