#!/usr/bin/env python3
"""Reference log-probs of the architectures' random models, from HF transformers in float64.

For each tiny-* shape of perf/make_random_gguf (llama 3, mistral, qwen2, qwen3, gemma3) the model
file is made from its seed, loaded by transformers' own GGUF reader (from_pretrained(gguf_file=):
its tensor conversion, e.g. llama's q/k un-permutation and Gemma's norm weights minus one, is
HF's, not ours), with the config fields that reader does not map set from the file's metadata
(Qwen 3's head dim, Llama 3's rope scaling, Gemma 3's query scaling), and run in float64 on
teacher-forced token sequences. The weights are the file's bf16 values exactly, so the only
difference to detinfer is arithmetic: detinfer's exact profile in float32 against this float64.

Output (tests/data/arch_ref.txt), one line per scored position:
    arch seq pos next_id next_lp top1 lp1 top2 lp2 top3 lp3 top4 lp4
and per sequence a line "ids arch seq id id ...". The C test (tests/test_arch.c) regenerates each
model from its seed, runs the same sequences through detinfer and compares: the top-1 id at every
position, and every listed log-prob within 1e-4.

usage: make_arch_ref.py MAKE_RANDOM_GGUF OUT.txt   (needs torch, transformers, gguf, numpy)
Recorded with torch 2.11.0, transformers 5.17.0, gguf 0.19.0, numpy 2.4 (the device's versions).
"""
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM

ARCHS = ["llama3", "mistral", "qwen2", "qwen3", "gemma3"]
SEQS, PROMPT, SCORED, SEED = 5, 8, 32, 1


def config_for(arch, d, f):
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    from gguf import GGUFReader
    r = GGUFReader(os.path.join(d, f))

    def field(k):
        fl = r.fields.get(k)
        return None if fl is None else fl.parts[fl.data[0]][0].item()

    a = {"llama3": "llama", "mistral": "llama"}.get(arch, arch)
    hd = field(a + ".attention.key_length")
    if hd:
        cfg.head_dim = int(hd)  # transformers' reader maps key_length for gemma3 only
    tied = "output.weight" not in [t.name for t in r.tensors]
    cfg.tie_word_embeddings = tied
    if arch == "llama3":  # the rope_freqs.weight factors make_random_gguf wrote, as HF parameters
        cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": float(field("llama.rope.freq_base")),
                               "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 32}  # tiny-llama3's (a short one, so
        # that the scaling changes the rotations of 40-token sequences)
    if arch == "gemma3":  # llama.cpp scales queries by 1 / sqrt(head dim) for every size but 27B
        cfg.query_pre_attn_scalar = int(hd)
    return cfg


def as_mistral(llama, cfg):
    """Mistral's own modeling code on the weights HF's reader converted. A Mistral 7B-style GGUF is a
    llama file; transformers takes it for Mistral only when general.name is exactly "mistral", and
    then gguf-py 0.19 has no tensor map for it, so the llama model's converted weights are moved."""
    m = MistralConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                      num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                      num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
                      rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_parameters["rope_theta"],
                      tie_word_embeddings=cfg.tie_word_embeddings, sliding_window=None)
    model = MistralForCausalLM(m).to(torch.float64)
    missing, unexpected = model.load_state_dict(llama.state_dict(), strict=True), None
    return model


def main():
    tool, out = sys.argv[1], sys.argv[2]
    rng = np.random.RandomState(SEED)
    lines = []
    for arch in ARCHS:
        with tempfile.TemporaryDirectory() as d:
            f = "model.gguf"
            subprocess.run([tool, os.path.join(d, f), "--shape", "tiny-" + arch, "--seed", str(SEED), "--quiet"],
                           check=True)
            cfg = config_for(arch, d, f)
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, config=cfg, dtype=torch.float64)
            if arch == "mistral":
                model = as_mistral(model, cfg)
            model.eval()
            V = cfg.vocab_size
            print(f"{arch}: {type(model).__name__}, {cfg.num_hidden_layers} layers, head dim "
                  f"{getattr(cfg, 'head_dim', None)}, vocab {V}", file=sys.stderr)
            for s in range(SEQS):
                ids = rng.randint(3, V, size=PROMPT + SCORED).tolist()
                lines.append("ids %s %d %s" % (arch, s, " ".join(map(str, ids))))
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0].double()
                lp = torch.log_softmax(logits, dim=-1)
                for pos in range(PROMPT - 1, PROMPT + SCORED - 1):
                    row = lp[pos]
                    top = torch.topk(row, 4)
                    nxt = ids[pos + 1]
                    cells = [arch, str(s), str(pos), str(nxt), "%.12e" % row[nxt].item()]
                    for v, i in zip(top.values.tolist(), top.indices.tolist()):
                        cells += [str(i), "%.12e" % v]
                    lines.append(" ".join(cells))
    with open(out, "w") as fo:
        fo.write("# made by tests/data/make_arch_ref.py (HF transformers, float64): see its docstring\n")
        fo.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
