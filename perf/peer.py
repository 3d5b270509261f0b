#!/usr/bin/env python3
"""detinfer and llama.cpp side by side, on the same GGUF files, in one call on one machine.

    perf/peer.py --llama-bin DIR --build BUILD_DIR -m MODEL.gguf [-m MODEL2.gguf ...]
        [--device cuda|cpu] [--threads N] [--prompt 512] [--gen 128] [--batches 1,8,32]
        [--profiles fast,vendor] [--out FILE.md]   (a profile may name its weights: fast:packed)

DIR holds llama-bench and llama-batched-bench (../shared/peer/llamacpp builds them, on the device
with build-cuda; never committed). For each model, back to back: llama-bench (pp PROMPT and tg GEN,
-r 3; on the GPU -ngl 99 -fa 1), llama-batched-bench (-npp PROMPT -ntg 32 -npl BATCHES), then
BUILD_DIR/bench_model once per detinfer profile (--prompt-len PROMPT --batch BATCHES). Prints, and
writes to FILE.md, one table: prefill PROMPT, decode at each batch (tokens/s over all rows; batch 1
against llama-bench's tg GEN, larger batches against llama-batched-bench's S_TG), the weight bytes
each engine keeps, and the first profile over llama.cpp. Every command line goes in the file too."""
import argparse
import json
import os
import subprocess
import sys
import time


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode:
        sys.exit(f"peer: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout


def llama_env(bin_dir):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = bin_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def llama_device_args(a):
    return ["-ngl", "99", "-fa", "1"] if a.device == "cuda" else ["-ngl", "0", "-t", str(a.threads)]


def llama_bench(a, model, log):
    cmd = [os.path.join(a.llama_bin, "llama-bench"), "-m", model, "-p", str(a.prompt), "-n", str(a.gen),
           "-r", "3", "-o", "json"] + llama_device_args(a)
    log.append(" ".join(cmd))
    rows = json.loads(run(cmd, llama_env(a.llama_bin)))
    out = {"size": rows[0].get("model_size")}
    for r in rows:
        if r.get("n_prompt") and not r.get("n_gen"):
            out["pp"] = r["avg_ts"]
        elif r.get("n_gen") and not r.get("n_prompt"):
            out["tg"] = r["avg_ts"]
    return out


def llama_batched(a, model, log):
    batches = [int(b) for b in a.batches.split(",")]
    ctx = (a.prompt + 32) * max(batches) + 256
    fa = ["-fa", "on"] if a.device == "cuda" else []
    cmd = [os.path.join(a.llama_bin, "llama-batched-bench"), "-m", model, "-c", str(ctx), "-npp", str(a.prompt),
           "-ntg", "32", "-npl", a.batches, "--output-format", "jsonl"] + \
          (["-ngl", "99"] + fa if a.device == "cuda" else ["-ngl", "0", "-t", str(a.threads)])
    log.append(" ".join(cmd))
    text = run(cmd, llama_env(a.llama_bin))
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            r = json.loads(line)
            out[r["pl"]] = r["speed_tg"]
    return out


def detinfer(a, model, config, log):
    """config: PROFILE or PROFILE:WEIGHTS (bench_model --weights auto|packed|bf16)"""
    profile, _, weights = config.partition(":")
    cmd = [os.path.join(a.build, "bench_model"), "-m", model, "--device", a.device, "--profile", profile,
           "--prompt-len", str(a.prompt), "--batch", a.batches, "--json"] + (["--weights", weights] if weights else [])
    if a.device == "cpu":
        cmd += ["-t", str(a.threads)]
    log.append(" ".join(cmd))
    text = run(cmd)
    js = json.loads(text.strip().splitlines()[-1])
    return {"pp": js["prefill"]["tokens_per_s"], "bytes": js["matrix_bytes"],
            "decode": {d["batch"]: d["tokens_per_s"] for d in js["decode"]}, "device": js["device"]}


def fmt(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def ratio(x, y):
    return "-" if not x or not y else f"{x / y:.2f}x"


def table(a, results):
    profiles = a.profiles.split(",")
    head = "| model | measure | " + " | ".join(f"detinfer {p}" for p in profiles) + f" | llama.cpp | {profiles[0]} / llama.cpp |"
    lines = [head, "|" + "---|" * (4 + len(profiles))]
    for model, (lb, lbat, det) in results.items():
        name = os.path.basename(model)
        rows = [(f"prefill {a.prompt}, tok/s", [det[p]["pp"] for p in profiles], lb.get("pp"), f" (pp{a.prompt})")]
        for b in (int(x) for x in a.batches.split(",")):
            ref, how = (lb.get("tg"), f" (tg{a.gen})") if b == 1 else (lbat.get(b), " (batched)")
            rows.append((f"decode batch {b}, tok/s", [det[p]["decode"].get(b) for p in profiles], ref, how))
        for label, vals, ref, how in rows:
            lines.append(f"| {name} | {label} | " + " | ".join(fmt(v) for v in vals) +
                         f" | {fmt(ref)}{how if ref else ''} | {ratio(vals[0], ref)} |")
        gb = [det[p]["bytes"] / 1e9 for p in profiles]
        file_gb = lb["size"] / 1e9 if lb.get("size") else None
        lines.append(f"| {name} | weights kept, GB | " + " | ".join(f"{g:.2f}" for g in gb) +
                     (f" | {file_gb:.2f} (file tensors) | {ratio(gb[0], file_gb)} |" if file_gb else " | - | - |"))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("-m", "--model", action="append", required=True)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--profiles", default="fast,vendor")
    ap.add_argument("--out")
    a = ap.parse_args()
    for b in a.batches.split(","):
        if not b.isdigit() or int(b) < 1:
            ap.error(f"--batches: '{b}' is not a batch size")
    for m in a.model:
        if not os.path.isfile(m):
            ap.error(f"-m {m}: no such file")
    t0, log, results, devices = time.time(), [], {}, set()
    for m in a.model:
        lb, lbat = llama_bench(a, m, log), llama_batched(a, m, log)
        det = {p: detinfer(a, m, p, log) for p in a.profiles.split(",")}
        devices.update(d["device"] for d in det.values())
        results[m] = (lb, lbat, det)
    text = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, {time.time() - t0:.0f} s; "
            f"detinfer: {'; '.join(sorted(devices))}\n\n" + table(a, results) + "\n\ncommands:\n" +
            "\n".join("    " + c for c in log) + "\n")
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
