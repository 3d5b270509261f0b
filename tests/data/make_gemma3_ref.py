#!/usr/bin/env python3
"""Reference for the real Gemma 3 270M (Q4_K_M, scripts/fetch-model --gemma3): HF transformers in
float64 on the GGUF, through its own GGUF reader, with every matrix rounded to bf16 as detinfer
stores them (norm vectors stay f32, as detinfer keeps them).

For 10 factual prompts (token ids from detinfer's tokenizer: `generate --tokenize`, BOS first) HF
continues greedily for 32 tokens; then the whole sequence is scored in one pass and each of the 32
positions that predict a continuation token is recorded:
    pos next_id next_lp top1 lp1 top2 lp2
after a line "ids N id id ..." per prompt. tests/test_arch.c runs the same sequences through detinfer
(exact profile) and requires top-1 agreement on at least 99% of the positions.

usage: make_gemma3_ref.py GENERATE MODEL.gguf OUT.txt    (torch, transformers, gguf, numpy)
Runs on the GPU where torch has one (float64 there too), else on the CPU; the header names which.
"""
import json
import os
import subprocess
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "The chemical symbol for gold is",
    "The first person to walk on the Moon was",
    "The Great Wall of China was built to",
    "Photosynthesis is the process by which plants",
    "The speed of light in a vacuum is about",
    "William Shakespeare wrote the play",
    "The human heart has four chambers:",
]
CONT = 32


def main():
    gen, path, out = sys.argv[1:4]
    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    cfg.query_pre_attn_scalar = cfg.head_dim   # llama.cpp: 1 / sqrt(head dim) below 27B
    cfg.tie_word_embeddings = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, config=cfg, dtype=torch.float64).to(dev)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:   # detinfer's resident format: bf16 matrices
                p.copy_(p.to(torch.bfloat16).to(torch.float64))
    model.eval()
    lines = ["# made by tests/data/make_gemma3_ref.py (HF transformers %s, torch %s on %s, float64, bf16 matrices)" %
             (__import__("transformers").__version__, torch.__version__, dev)]
    for k, text in enumerate(PROMPTS):
        ids = json.loads(subprocess.run([gen, "-m", path, "--tokenize", "-p", text], check=True,
                                        capture_output=True, text=True).stdout)
        seq = list(ids)
        with torch.no_grad():
            for _ in range(CONT):
                logits = model(torch.tensor([seq], device=dev)).logits[0, -1]
                seq.append(int(torch.argmax(logits)))
            lp = torch.log_softmax(model(torch.tensor([seq], device=dev)).logits[0].double(), dim=-1)
        lines.append("ids %d %s" % (k, " ".join(map(str, seq))))
        for pos in range(len(ids) - 1, len(seq) - 1):
            top = torch.topk(lp[pos], 2)
            nxt = seq[pos + 1]
            lines.append("%d %d %d %.9e %d %.9e %d %.9e" % (k, pos, nxt, lp[pos, nxt].item(), top.indices[0].item(),
                                                        top.values[0].item(), top.indices[1].item(), top.values[1].item()))
        print(text, "->", len(seq) - len(ids), "tokens", file=sys.stderr)
    with open(out, "w") as fo:
        fo.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
