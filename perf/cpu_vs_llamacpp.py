#!/usr/bin/env python3
"""detinfer on the CPU against llama.cpp, in one run on one machine.

    perf/cpu_vs_llamacpp.py --llama-bench DIR/build-cpu/bin/llama-bench -m MODEL.gguf
        [--rounds 3] [--threads 2] [--prompt 128] [--gen 32] [--configs cc,cc:bf16,tcc] [--baseline DIR]

llama-bench is built by ../shared/peer/llamacpp build-cpu DIR (never committed). Each round
runs llama-bench (pp PROMPT and tg GEN, -r 3) and then build/bench_model for each config, a CPU
compiler and optionally ":bf16" for every matrix converted to bf16 instead of packed (prefill
PROMPT, decode batch 1 and 8 with the prompts cached), back to back, so that a busy
machine slows both sides alike; the table gives the median over the rounds and every round's
figure, because on a shared machine the spread is the honest part of the answer. --baseline
DIR runs a second build's bench_model (an earlier commit) in the same rounds, for an A/B of a
change that the machine's drift cannot fake.
Goals (issue 16): decode batch 1 >= llama.cpp tg; prefill >= 0.5x llama.cpp pp; batch 8 decode
>= 4x batch 1's tokens/s."""
import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        sys.exit(f"cpu_vs_llamacpp: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def llama_round(a):
    """pp PROMPT and tg GEN from an empty context (llama-bench's usual figures), then tg GEN after
    PROMPT tokens of context (-d), which is where bench_model's decode runs: its prompts are cached."""
    out = run([a.llama_bench, "-m", a.model, "-t", str(a.threads), "-p", str(a.prompt), "-n", str(a.gen),
               "-r", "3", "-o", "csv"])
    pp = tg = None
    for row in csv.DictReader(io.StringIO(out)):
        if int(row["n_prompt"]) > 0 and int(row["n_gen"]) == 0:
            pp = float(row["avg_ts"])
        elif int(row["n_gen"]) > 0 and int(row["n_prompt"]) == 0:
            tg = float(row["avg_ts"])
    out = run([a.llama_bench, "-m", a.model, "-t", str(a.threads), "-p", "0", "-n", str(a.gen), "-d", str(a.prompt),
               "-r", "3", "-o", "csv"])
    tgd = float(next(csv.DictReader(io.StringIO(out)))["avg_ts"])
    return pp, tg, tgd


def detinfer_round(a, config, build):
    compiler, _, weights = config.partition(":")
    out = run([os.path.join(build, "bench_model"), "-m", a.model, "--device", "cpu", "-t", str(a.threads),
               "--cpu-compiler", compiler, "--weights", weights or "auto", "--prompt-len", str(a.prompt),
               "--batch", "1,8", "--steps", "16",
               "--warmup", "2", "--prefill-runs", "3", "--json"])
    j = json.loads(out.strip().splitlines()[-1])
    dec = {d["batch"]: d["tokens_per_s"] for d in j["decode"]}
    return j["prefill"]["tokens_per_s"], dec[1], dec[8], j["device"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("-m", "--model", default=os.environ.get("DETINFER_MODEL"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--configs", default="cc,cc:bf16,tcc")
    ap.add_argument("--baseline", help="a second build directory, run as 'baseline CONFIG' in each round")
    a = ap.parse_args()
    if not a.model:
        sys.exit("cpu_vs_llamacpp: -m MODEL (or DETINFER_MODEL) is required")
    runs = [(c, c, a.build) for c in a.configs.split(",")]
    if a.baseline:
        runs += [(f"baseline {c}", c, a.baseline) for c in a.configs.split(",")]
    compilers = [name for name, _, _ in runs]
    rows = {"llama.cpp": {"pp": [], "tg": [], "tgd": []}}
    for c in compilers:
        rows[c] = {"pp": [], "tg": [], "b8": []}
    device = {}
    load = []
    t0 = time.time()
    for r in range(a.rounds):
        load.append(os.getloadavg()[0])
        pp, tg, tgd = llama_round(a)
        rows["llama.cpp"]["pp"].append(pp)
        rows["llama.cpp"]["tg"].append(tg)
        rows["llama.cpp"]["tgd"].append(tgd)
        for c, config, build in runs:
            pp, b1, b8, dev = detinfer_round(a, config, build)
            rows[c]["pp"].append(pp)
            rows[c]["tg"].append(b1)
            rows[c]["b8"].append(b8)
            device[c] = dev
        print(f"round {r + 1}: " + "; ".join(f"{k} " + ", ".join(f"{m} {v[-1]:.1f}" for m, v in d.items())
                                           for k, d in rows.items()), file=sys.stderr)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rows.items()}
    fmt = lambda v: " / ".join(f"{x:.1f}" for x in v)
    print(f"{a.rounds} rounds in {time.time() - t0:.0f} s, {a.threads} threads, load average at each round's start: "
          + ", ".join(f"{x:.1f}" for x in load))
    for c in compilers:
        print(f"detinfer {c}: {device[c]}")
    print()
    print(f"| engine | prefill {a.prompt}, tok/s | decode batch 1, tok/s | decode batch 8, tok/s (all rows) |")
    print("|---|---:|---:|---:|")
    L = rows["llama.cpp"]
    print(f"| llama.cpp (pp{a.prompt} / tg{a.gen}) | {med['llama.cpp']['pp']:.1f} ({fmt(L['pp'])}) | "
          f"{med['llama.cpp']['tg']:.1f} ({fmt(L['tg'])}) | - |")
    print(f"| llama.cpp (tg{a.gen} after {a.prompt}: -d {a.prompt}) | - | {med['llama.cpp']['tgd']:.1f} ({fmt(L['tgd'])}) | - |")
    for c in compilers:
        d = rows[c]
        print(f"| detinfer exact, {c} | {med[c]['pp']:.1f} ({fmt(d['pp'])}) | {med[c]['tg']:.1f} ({fmt(d['tg'])}) | "
              f"{med[c]['b8']:.1f} ({fmt(d['b8'])}) |")
    print()
    for c in compilers:
        m = med[c]
        print(f"{c}: decode b1 / llama.cpp tg = {m['tg'] / med['llama.cpp']['tg']:.2f} (goal >= 1; "
              f"{m['tg'] / med['llama.cpp']['tgd']:.2f} against tg at depth {a.prompt}); "
              f"prefill / llama.cpp pp = {m['pp'] / med['llama.cpp']['pp']:.2f} (goal >= 0.5); "
              f"batch 8 / batch 1 = {m['b8'] / m['tg']:.2f} (goal >= 4)")


if __name__ == "__main__":
    main()
