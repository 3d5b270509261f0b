#!/usr/bin/env python3
"""Independent float64 reference logits for SmolLM2-135M-Instruct (GGUF, Q4_1).

Writes tests/data/ref_logits.txt, which the C test compares with detinfer's logits.
Not run in CI: its output is checked in. Regenerate with

    python3 tests/data/make_ref_logits.py \
        --gguf /root/.cache/detinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/data/ref_logits.txt

Needs: numpy, gguf (PyPI; GGUFReader + gguf.quants.dequantize), tokenizers and regex (PyPI).

Nothing here comes from detinfer; the only shared thing is the contract on weights:
every 2-D matrix (token_embd and all blk.* 2-D weights) is dequantized to float32, then
rounded to bfloat16 (round to nearest, ties to even) once, exactly as detinfer does at load.
Everything after that is float64: embeddings, RMSNorm, RoPE, causal attention with softmax,
SiLU-gated MLP, residuals, final norm, logits = h . token_embd^T (tied embeddings).

Tokenizer: the HF `tokenizers` library (Rust), with a BPE model built from the GGUF's
tokenizer.ggml.tokens / tokenizer.ggml.merges, pre-tokenizer Sequence[Digits(individual),
ByteLevel(no prefix space, GPT-2 regex)], ByteLevel decoder, and the control tokens
(token_type 3, e.g. <|im_start|>=1, <|im_end|>=2) registered as special tokens.
(transformers' AutoTokenizer(gguf_file=...) needs torch, which is not installed here.)

RoPE: GGUF llama conversions permute the Q/K rows so that RoPE rotates adjacent pairs
(x[2i], x[2i+1]) of each head, theta_i = pos * base^(-2i/head_dim) (llama.cpp "normal" mode).
Pass --rope-check to also decode with the HF half-split variant (x[i], x[i+32]) and print
both continuations: only the adjacent variant gives sensible text.
"""

import argparse
import sys
import time

import numpy as np
import gguf
from tokenizers import Tokenizer, AddedToken, models, pre_tokenizers, decoders

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village,",
    "The quick brown fox jumps over the lazy dog. 1234567890",
]
N_GREEDY = 32
TOP_K = 16
N_SUBSET = 256
SUBSET_SEED = 1234

FILE_HEADER = """\
# Reference logits for SmolLM2-135M-Instruct.Q4_1.gguf, made by tests/data/make_ref_logits.py
# (independent numpy float64 forward; weights dequantized to f32 then rounded to bf16 (RNE),
#  all arithmetic in float64; tokenizer: HF `tokenizers` BPE built from the GGUF vocab/merges).
# Lines (whitespace separated; fscanf-friendly):
#   subset <256 vocab ids>                  fixed ids (numpy default_rng(1234).choice(49152, 256,
#                                           replace=False), sorted ascending), same for every pos line
#   prompt <k> <n> <n token ids>            prompt k (1..5) and its n token ids (no BOS added)
#   greedy <k> 32 <32 token ids>            greedy continuation (argmax, ties to the lowest id), KV cache
#                                           (no stop at <|im_end|>/EOS: always 32 tokens)
#   pos <k> <p> <top1> <16 x id:logit> | <256 logits>
#       p indexes the full sequence prompt+greedy (0 <= p < n+31); the logits at p predict token p+1,
#       so p = n-1 .. n+30 are the 32 greedy steps. top1 = argmax (ties to lowest id); the 16 pairs are
#       the top-16 by logit, descending (ties to lowest id); the 256 logits follow the subset order.
#       Numbers are printed with %.9g.
"""


# ---------------------------------------------------------------- GGUF reading

def field_value(reader, key):
    field = reader.fields.get(key)
    if field is None:
        sys.exit(f"error: GGUF key {key} missing")
    return field.contents()


def read_hparams(reader):
    hp = {
        "arch": field_value(reader, "general.architecture"),
        "n_layer": int(field_value(reader, "llama.block_count")),
        "n_embd": int(field_value(reader, "llama.embedding_length")),
        "n_ff": int(field_value(reader, "llama.feed_forward_length")),
        "n_head": int(field_value(reader, "llama.attention.head_count")),
        "n_head_kv": int(field_value(reader, "llama.attention.head_count_kv")),
        "rope_base": float(field_value(reader, "llama.rope.freq_base")),
        "eps": float(field_value(reader, "llama.attention.layer_norm_rms_epsilon")),
        "n_vocab": int(field_value(reader, "llama.vocab_size")),
    }
    hp["head_dim"] = hp["n_embd"] // hp["n_head"]
    expect = dict(arch="llama", n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3,
                  n_vocab=49152, head_dim=64)
    for key, want in expect.items():
        if hp[key] != want:
            sys.exit(f"error: hparam {key} = {hp[key]}, expected {want}")
    if hp["rope_base"] != 100000.0 or abs(hp["eps"] - 1e-5) > 1e-9:
        sys.exit(f"error: rope base {hp['rope_base']} / eps {hp['eps']} unexpected")
    return hp


def round_to_bf16(w32):
    """float32 -> bf16 value (kept in float32), round to nearest, ties to even."""
    assert w32.dtype == np.float32 and not np.isnan(w32).any()
    bits = w32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def load_weights(reader, hp, bf16):
    """Returns {name: float64 array}; matrices shaped [out, in] so that y = W @ x."""
    tensors = {t.name: t for t in reader.tensors}
    if "output.weight" in tensors:
        sys.exit("error: output.weight present; this script assumes tied embeddings")
    E, F, V = hp["n_embd"], hp["n_ff"], hp["n_vocab"]
    kv = hp["n_head_kv"] * hp["head_dim"]
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,)}
    for i in range(hp["n_layer"]):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (E,), b + "ffn_norm.weight": (E,),
            b + "attn_q.weight": (E, E), b + "attn_k.weight": (kv, E), b + "attn_v.weight": (kv, E),
            b + "attn_output.weight": (E, E),
            b + "ffn_gate.weight": (F, E), b + "ffn_up.weight": (F, E), b + "ffn_down.weight": (E, F),
        })
    if set(shapes) != set(tensors):
        sys.exit(f"error: tensor set differs: {sorted(set(shapes) ^ set(tensors))[:8]}")
    weights = {}
    for name, want in shapes.items():
        t = tensors[name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if w.shape != want:
            sys.exit(f"error: tensor {name} has shape {w.shape}, expected {want}")
        if w.ndim == 2:
            expect_type = "Q8_0" if name == "token_embd.weight" else "Q4_1"
            if t.tensor_type.name != expect_type:
                sys.exit(f"error: tensor {name} is {t.tensor_type.name}, expected {expect_type}")
            if bf16:
                w = round_to_bf16(w)
        elif t.tensor_type.name != "F32":
            sys.exit(f"error: norm tensor {name} is {t.tensor_type.name}, expected F32")
        weights[name] = w.astype(np.float64)
    return weights


# ---------------------------------------------------------------- tokenizer

def build_tokenizer(reader):
    tokens = list(field_value(reader, "tokenizer.ggml.tokens"))
    merges = list(field_value(reader, "tokenizer.ggml.merges"))
    types = list(field_value(reader, "tokenizer.ggml.token_type"))
    if field_value(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("error: tokenizer.ggml.model is not gpt2")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if t == 3]  # control tokens
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        assert tok.token_to_id(s) == vocab[s], s
    return tok


# ---------------------------------------------------------------- forward pass (float64)

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, base, adjacent):
    """x: [T, heads, head_dim]. adjacent=True rotates (x[2i], x[2i+1]); False: (x[i], x[i+d/2])."""
    d = x.shape[-1]
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)     # theta_i = base^(-2i/d)
    ang = positions.astype(np.float64)[:, None] * inv_freq[None, :]      # [T, d/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if adjacent:
        x0, x1 = x[..., 0::2], x[..., 1::2]
    else:
        x0, x1 = x[..., : d // 2], x[..., d // 2:]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    out = np.empty_like(x)
    if adjacent:
        out[..., 0::2], out[..., 1::2] = r0, r1
    else:
        out[..., : d // 2], out[..., d // 2:] = r0, r1
    return out


class Model:
    def __init__(self, weights, hp, adjacent_rope=True):
        self.w, self.hp, self.adjacent = weights, hp, adjacent_rope

    def new_cache(self):
        return [([], []) for _ in range(self.hp["n_layer"])]

    def forward(self, ids, start, cache):
        """Runs tokens ids at positions start.. ; appends to cache; returns logits [T, vocab]."""
        hp, w = self.hp, self.w
        H, KVH, D, eps = hp["n_head"], hp["n_head_kv"], hp["head_dim"], hp["eps"]
        T = len(ids)
        pos = np.arange(start, start + T)
        x = w["token_embd.weight"][np.asarray(ids)]                         # [T, E]
        for i in range(hp["n_layer"]):
            b = f"blk.{i}."
            h = rms_norm(x, w[b + "attn_norm.weight"], eps)
            q = (h @ w[b + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ w[b + "attn_k.weight"].T).reshape(T, KVH, D)
            v = (h @ w[b + "attn_v.weight"].T).reshape(T, KVH, D)
            q = rope(q, pos, hp["rope_base"], self.adjacent)
            k = rope(k, pos, hp["rope_base"], self.adjacent)
            cache[i][0].append(k)
            cache[i][1].append(v)
            K = np.concatenate(cache[i][0])                                 # [S, KVH, D]
            Vv = np.concatenate(cache[i][1])
            S = K.shape[0]
            assert S == start + T
            group = H // KVH                                                # q head h uses kv head h // group
            Kh = np.repeat(K, group, axis=1).transpose(1, 0, 2)             # [H, S, D]
            Vh = np.repeat(Vv, group, axis=1).transpose(1, 0, 2)
            scores = np.einsum("thd,hsd->hts", q, Kh) / np.sqrt(D)          # [H, T, S]
            causal = np.arange(S)[None, :] > pos[:, None]                   # key after query
            scores = np.where(causal[None], -np.inf, scores)
            scores = scores - scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            att = np.einsum("hts,hsd->thd", p, Vh).reshape(T, H * D)
            x = x + att @ w[b + "attn_output.weight"].T
            h = rms_norm(x, w[b + "ffn_norm.weight"], eps)
            gate = h @ w[b + "ffn_gate.weight"].T
            up = h @ w[b + "ffn_up.weight"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ w[b + "ffn_down.weight"].T
        h = rms_norm(x, w["output_norm.weight"], eps)
        return h @ w["token_embd.weight"].T                                 # tied embeddings


def argmax_lowest(row):
    return int(np.flatnonzero(row == row.max())[0])


def top_k_lowest(row, k):
    order = np.lexsort((np.arange(row.size), -row))                         # logit desc, then id asc
    return order[:k]


def greedy(model, prompt_ids, n_new):
    """Prefill + KV-cache decode. Returns (generated ids, logits [n+n_new-1, vocab])."""
    cache = model.new_cache()
    logits = [model.forward(prompt_ids, 0, cache)]
    gen = [argmax_lowest(logits[0][-1])]
    for step in range(1, n_new):
        out = model.forward([gen[-1]], len(prompt_ids) + step - 1, cache)
        logits.append(out)
        gen.append(argmax_lowest(out[-1]))
    return gen, np.concatenate(logits)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default="/root/.cache/detinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/data/ref_logits.txt")
    ap.add_argument("--rope-check", action="store_true",
                    help="also decode with the half-split RoPE variant and print it")
    args = ap.parse_args()
    t0 = time.time()

    reader = gguf.GGUFReader(args.gguf)
    hp = read_hparams(reader)
    print("hparams:", hp)
    tok = build_tokenizer(reader)
    model = Model(load_weights(reader, hp, bf16=True), hp)
    print(f"loaded weights (bf16-rounded) in {time.time() - t0:.1f}s")

    subset = np.sort(np.random.default_rng(SUBSET_SEED).choice(hp["n_vocab"], N_SUBSET, replace=False))
    lines = [FILE_HEADER.rstrip("\n"), "subset " + " ".join(str(int(i)) for i in subset)]
    runs = []
    for k, text in enumerate(PROMPTS, start=1):
        ids = tok.encode(text, add_special_tokens=False).ids
        gen, logits = greedy(model, ids, N_GREEDY)
        # Self-check of the KV cache path: one prefill of the whole sequence gives the same logits.
        full = model.forward(ids + gen[:-1], 0, model.new_cache())
        kv_diff = float(np.abs(full - logits).max())
        assert kv_diff < 1e-9, f"prompt {k}: KV-cache decode differs from prefill by {kv_diff}"
        runs.append((k, ids, gen, logits))
        lines.append(f"prompt {k} {len(ids)} " + " ".join(map(str, ids)))
        lines.append(f"greedy {k} {N_GREEDY} " + " ".join(map(str, gen)))
        for p, row in enumerate(logits):
            top = top_k_lowest(row, TOP_K)
            pairs = " ".join(f"{int(i)}:{row[i]:.9g}" for i in top)
            sub = " ".join(f"{row[i]:.9g}" for i in subset)
            lines.append(f"pos {k} {p} {argmax_lowest(row)} {pairs} | {sub}")
        margin = np.sort(logits, axis=1)[:, -2:]
        print(f"prompt {k}: {len(ids)} tokens {ids}")
        print(f"  tokens: {[tok.decode([i]) for i in ids]}")
        print(f"  greedy: {gen}")
        print(f"  text:   {text!r} + {tok.decode(gen)!r}")
        print(f"  smallest top1-top2 margin over {len(logits)} positions: "
              f"{float((margin[:, 1] - margin[:, 0]).min()):.6g}; kv-cache vs prefill max diff {kv_diff:.3g}")

    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({sum(len(s) + 1 for s in lines)} bytes)")

    # For the record: how far the bf16 rounding of the weights moves the logits.
    plain = Model(load_weights(reader, hp, bf16=False), hp)
    for k, ids, gen, logits in runs:
        other = plain.forward(ids + gen[:-1], 0, plain.new_cache())
        diff = np.abs(other - logits)
        same_top1 = int((other.argmax(1) == logits.argmax(1)).sum())
        print(f"no-bf16 vs bf16, prompt {k}: max |dlogit| {diff.max():.4g}, mean {diff.mean():.4g}, "
              f"max |logit| {np.abs(logits).max():.4g}, top1 agrees at {same_top1}/{len(logits)} positions")
    del plain

    if args.rope_check:
        half = Model(model.w, hp, adjacent_rope=False)
        for k, text in enumerate(PROMPTS, start=1):
            ids = tok.encode(text, add_special_tokens=False).ids
            gen, _ = greedy(half, ids, N_GREEDY)
            print(f"half-split rope, prompt {k}: {text!r} + {tok.decode(gen)!r}")

    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
