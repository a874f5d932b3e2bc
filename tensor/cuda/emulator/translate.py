#!/usr/bin/env python3
"""Turns one of tensor/cuda/*.cu into C++ that g++ compiles against the CUDA emulator.

The only CUDA syntax plain C++ cannot parse is the launch `kernel<T><<<grid, block, smem,
stream>>>(args)`. It becomes

    ::bcos::emu::launch("kernel<T>", [=](auto&&... a_) { kernel<T>(a_...); }, grid, block, smem,
                        stream)(args)

(the lambda lets a kernel template deduce its parameters from the arguments, as nvcc does; it
copies what it names, since the launch runs later, when its stream's queue reaches it). The
file then starts with the emulator's device header, so `__global__`, `threadIdx`, `__syncthreads`
and the rest mean what tensor/cuda/emulator/device.h says; nvcc's pragmas (`#pragma unroll`,
`#pragma nv_diag_suppress`: hints g++ warns about) become empty lines. Everything else is left as written, line for line, so compiler
messages point at the right line of the .cu file (#line).

usage: translate.py INPUT.cu OUTPUT.cpp
"""
import sys


def kernel_start(text, launch):
    """Index where the kernel expression before `<<<` at `launch` begins: just after the
    previous statement boundary (';', '{' or '}'), skipping whitespace."""
    i = launch
    while i > 0 and text[i - 1] not in ";{}":
        i -= 1
    while text[i].isspace():
        i += 1
    return i


def translate(text, path):
    out = []
    pos = 0
    while True:
        launch = text.find("<<<", pos)
        if launch < 0:
            break
        start = kernel_start(text, launch)
        if start < pos:
            raise SystemExit(f"{path}: two launches in one statement near offset {launch}")
        close = text.find(">>>", launch)
        if close < 0:
            raise SystemExit(f"{path}: '<<<' without '>>>' at offset {launch}")
        kernel = text[start:launch]
        config = text[launch + 3:close]
        # Keep the line count: the kernel expression may span lines (a template list, say).
        newlines = "\n" * kernel.count("\n")
        kernel = " ".join(kernel.split())
        out.append(text[pos:start])
        out.append(f'::bcos::emu::launch("{kernel}", [=](auto&&... a_) {{ {kernel}(a_...); }}, {config}){newlines}')
        pos = close + 3
    out.append(text[pos:])
    # nvcc's own pragmas (`#pragma unroll`, `#pragma nv_diag_suppress ...`) are hints g++ warns
    # about: drop them, keeping the line.
    lines = "".join(out).split("\n")
    lines = ["" if line.strip() == "#pragma unroll" or line.strip().startswith("#pragma nv_") else line
             for line in lines]
    # BCOS_CUDA_EMULATION opens internal.h's device-side parts. It is defined here rather than on
    # the command line so that the library's other files compile exactly as in the CUDA build
    # (ccache then reuses that build's objects).
    header = '#define BCOS_CUDA_EMULATION 1\n#include "tensor/cuda/emulator/device.h"\n'
    return header + f'#line 1 "{path}"\n' + "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    result = translate(text, src)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(result)


if __name__ == "__main__":
    main()
