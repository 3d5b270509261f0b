#!/usr/bin/env python3
"""Prints a few dequantized values of the real model as read by the python `gguf` package
(pip install gguf numpy), for tests/test_gguf.c, which holds them as constants.

    python3 tests/data/gguf_spotcheck.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

Each line: tensor, flat index (ggml order: dims[0] fastest), the float32's bits in hex, its value.
"""
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

DEFAULT = os.path.expanduser("~/.cache/detinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf")
CHECKS = {
    "blk.0.attn_q.weight": [0, 1, 15, 16, 31, 32, 1000, 576 * 300 + 77, 576 * 576 - 1],  # Q4_1
    "token_embd.weight": [0, 1, 17, 576 * 100 + 5, 576 * 49152 - 1],                     # Q8_0
    "blk.0.attn_norm.weight": [0, 575],                                                   # F32
}


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    for name, indices in CHECKS.items():
        t = tensors[name]
        flat = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        for i in indices:
            v = flat[i]
            bits = int(np.array([v], dtype=np.float32).view(np.uint32)[0])
            print(f"{name} {i} 0x{bits:08x} {float(v)!r}")


if __name__ == "__main__":
    main()
