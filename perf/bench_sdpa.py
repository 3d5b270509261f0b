"""torch SDPA at the shapes of perf/bench_attention.c (the non-invariant reference): 32 query
heads, 8 KV heads, head size 128, bf16. Prefill: one causal sequence of T tokens. Decode: B
sequences, one query each over L cached positions. Median of CUDA-event timings after warm-up.
usage: python3 perf/bench_sdpa.py [--prefill 1024,4096] [--decode-len 4096] [--batches 1,8,32,64]"""
import argparse

import torch
import torch.nn.functional as F

NH, NKV, HD = 32, 8, 128


def median_ms(fn, runs=25, reps=10):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", default="1024,4096")
    ap.add_argument("--decode-len", type=int, default=4096)
    ap.add_argument("--batches", default="1,8,32,64")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    print(f"bench_sdpa: torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16")
    print(f"{'phase':8} {'batch':>6} {'ctx':>7} {'median_ms':>11} {'TFLOP/s':>10} {'KV_GB/s':>9}")
    for T in map(int, a.prefill.split(",")):
        q = torch.randn(1, NH, T, HD, device=dev, dtype=dt)
        k = torch.randn(1, NKV, T, HD, device=dev, dtype=dt)
        v = torch.randn(1, NKV, T, HD, device=dev, dtype=dt)
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        flops = 4.0 * NH * HD * T * (T + 1) / 2
        print(f"{'prefill':8} {1:>6} {T:>7} {ms:>11.3f} {flops / ms / 1e9:>10.2f} {'-':>9}")
    L = a.decode_len
    for B in map(int, a.batches.split(",")):
        q = torch.randn(B, NH, 1, HD, device=dev, dtype=dt)
        k = torch.randn(B, NKV, L, HD, device=dev, dtype=dt)
        v = torch.randn(B, NKV, L, HD, device=dev, dtype=dt)
        ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        byts, flops = B * L * NKV * HD * 2 * 2, 4.0 * NH * HD * B * L
        print(f"{'decode':8} {B:>6} {L:>7} {ms:>11.3f} {flops / ms / 1e9:>10.2f} {byts / ms / 1e6:>9.1f}")


if __name__ == "__main__":
    main()
