#!/bin/sh
# emu_translate.sh IN.cu OUT.cpp: a CUDA kernel file as C++ for the CPU emulator (include/emu.h):
# each launch `kernel<<<grid, block, smem, stream>>>(args)` becomes
# `kernel | emu::cfg(grid, block, smem, stream) | emu::args(args)`, which runs the grid's blocks one
# after another, each with blockDim.x threads (fibers).
set -e
sed -e 's/<<</ | emu::cfg(/g' -e 's/>>>(/) | emu::args(/g' "$1" > "$2"
