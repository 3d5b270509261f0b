#!/usr/bin/env python3
"""Writes tests/data/gemma3_tokens.tsv: reference ids for Gemma 3 270M's tokenizer from Google's
sentencepiece library (an implementation independent of ours), given a model built from the GGUF's
own vocabulary: pieces, scores and types, BPE with byte fallback, spaces escaped to U+2581, no dummy
prefix (Gemma's add_space_prefix is false).

    pip install gguf==0.19.0 sentencepiece protobuf
    python3 tests/data/make_gemma3_tokens.py "$(bash scripts/fetch-model --gemma3)" > tests/data/gemma3_tokens.tsv

Each line: escaped text <TAB> ids (BOS first). Escapes: \\\\ \\t \\n.
The strings hold no run of two or more spaces or tabs: Gemma's vocabulary has such runs as
USER_DEFINED tokens of literal spaces, which llama.cpp (and detinfer) cut out of the text before the
spaces are escaped, and sentencepiece, escaping first, never matches.
"""
import sys

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

STRINGS = [
    "The capital of France is", "Hi", "Hello world", " Hello world", "Hello, world!",
    "naïve café 中文 мир 🙂👍🏽", "x = [1, 2, 3]; // code\n", "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Deterministic inference means the same prompt gives the same bits.", "3333333 1,234,567.89 -0.5e10",
    "line one\nline two\n", "Ελληνικά και العربية और हिन्दी", "def f(x):\n return x * 2\n", "a\tb",
    "\x01\x02 control bytes \x7f", "<start_of_turn> is text here", "ʻokina and ẞ and ﬁ ligature",
]


def field_list(f, conv):
    return [conv(f.parts[i]) for i in f.data]


def main():
    r = gguf.GGUFReader(sys.argv[1])
    f = r.fields
    toks = field_list(f["tokenizer.ggml.tokens"], lambda p: bytes(p).decode("utf-8"))
    scores = field_list(f["tokenizer.ggml.scores"], lambda p: float(p[0]))
    types = field_list(f["tokenizer.ggml.token_type"], lambda p: int(p[0]))
    bos = int(f["tokenizer.ggml.bos_token_id"].parts[-1][0])
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = int(f["tokenizer.ggml.unknown_token_id"].parts[-1][0])
    m.trainer_spec.bos_id = bos
    m.trainer_spec.eos_id = int(f["tokenizer.ggml.eos_token_id"].parts[-1][0])
    m.trainer_spec.pad_id = int(f["tokenizer.ggml.padding_token_id"].parts[-1][0])
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, s, ty in zip(toks, scores, types):   # GGUF token types number as sentencepiece's
        p = m.pieces.add()
        p.piece, p.score, p.type = t, s, ty
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    for s in STRINGS:
        esc = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        print("%s\t%s" % (esc, " ".join(map(str, [bos] + sp.encode(s)))))


if __name__ == "__main__":
    main()
