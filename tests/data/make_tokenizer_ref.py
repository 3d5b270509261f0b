#!/usr/bin/env python3
"""Writes tests/data/tokenizer_ref.tsv: reference token ids for the SmolLM2 tokenizer, from llama.cpp's
tokenizer (an implementation independent of ours) through the llama-cpp-python bindings.

    CMAKE_ARGS="-DGGML_NATIVE=off -DLLAMA_BUILD_TESTS=off" pip install llama-cpp-python
    python3 tests/data/make_tokenizer_ref.py [model.gguf] > tests/data/tokenizer_ref.tsv

Default model: ~/.cache/detinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf (only its vocabulary is read).

Format, one line per string:  escaped text <TAB> special flag (0/1) <TAB> space-separated ids
Escapes in the text: backslash -> \\\\, tab -> \\t, newline -> \\n, carriage return -> \\r.
The special flag is llama.cpp's parse_special (tokenize(..., special=True)): control tokens such as
<|im_start|> written in the text become their ids.

Every string is checked to round-trip through llama.cpp (detokenize(tokenize(s)) == s) so that the
corpus holds only text both tokenizers must agree on: it has valid UTF-8 only (llama.cpp replaces
invalid bytes by U+FFFD where ours keeps them) and none of the 21 bytes that have no token in this
vocabulary (e.g. U+0004; llama.cpp drops those, ours reports an error).
"""
import os
import random
import sys

PROSE = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "Deterministic inference means the same prompt gives the same bits.",
    "Floating-point addition is not associative, so a reduction's result depends on its order.",
    "She sells sea shells by the sea shore.",
    "To be, or not to be: that is the question.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out first.",
    "The meeting is at 10:30 a.m. on Tuesday, March 5th.",
    "Please send the report to alice@example.com by Friday.",
    "Visit https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct for details.",
    "Mr. and Mrs. Smith went to Washington D.C. last week.",
    "A language model predicts the next token given the previous ones.",
    "Once upon a time, in a land far, far away, there lived a small dragon.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a haiku about autumn leaves falling gently.",
    "Explain quantum computing to a five-year-old.",
    "UPPERCASE WORDS AND lowercase words AND MiXeD CaSe WoRdS",
    "camelCaseIdentifier and snake_case_identifier and kebab-case-identifier",
    "e.g. i.e. etc. vs. cf. et al.",
    "The temperature dropped to -15 degrees overnight.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "I",
    "a",
    " ",
    "",
]

CONTRACTIONS = [
    "don't", "I'm", "we'll", "you've", "they're", "he'd", "it's", "can't", "won't", "shouldn't've",
    "It'S LOUD", "DON'T", "I'M", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'x", "'", "''", "'''",
    "rock 'n' roll", "'sup", "the dogs' bones", "O'Reilly's book", "y'all'd've", " 's", "x's", "9's",
    "l'été", "'llama'", "it' s", "'S", "‘curly’ quotes don’t split",
]

CODE = [
    "#include <stdio.h>\n\nint main(void)\n{\n    printf(\"Hello, world!\\n\");\n    return 0;\n}\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}",
    "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
    "if (p == NULL && errno != 0) return -1; /* failure */",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "struct node { struct node *next; int value; };",
    "x += y; x -= y; x *= y; x /= y; x %= y; x <<= 2; x >>= 3; x &= 0xFF; x |= 1; x ^= ~0;",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)\nprint(arr.shape)",
    "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n",
    "lambda x: x ** 2 if x >= 0 else -x",
    "print(f\"{name!r:>10} = {value:.3f}\")",
    "with open('data.txt', 'r', encoding='utf-8') as f:\n    lines = [l.rstrip('\\n') for l in f]",
    "{\"name\": \"SmolLM2\", \"params\": 135000000, \"layers\": 30, \"tied\": true, \"rope\": null}",
    "[1, 2.5, -3e10, \"four\", {\"five\": [6]}]",
    "{\n  \"key\": \"value\",\n  \"nested\": {\n    \"list\": [1, 2, 3]\n  }\n}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name ASC LIMIT 10;",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "$ ls -la /usr/local/bin | grep -v '^d' > out.txt 2>&1",
    "fn main() { let v: Vec<i32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
    "// TODO: fix this\n/* multi\n   line */\n",
    "a=b+c*d/e-f%g",
    "x->y.z[0]++;",
    "    indented with four spaces",
    "\tindented with a tab",
    "\t\t\tthree tabs\n\t\t\t",
    "if __name__ == \"__main__\":\n    main()\n",
    "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n",
    "@decorator\ndef f(): pass",
    "x = [i for i in range(100) if i % 3 == 0]",
]

NUMBERS = [
    "0", "7", "42", "123", "1234", "12345", "123456789", "00000", "3.14159265358979",
    "1,234,567.89", "1.000.000,00", "-42", "+7", "1e-9", "6.022e23", "0x1F", "0b1010", "0o777",
    "2024-01-15", "12:34:56", "+1 (555) 123-4567", "192.168.0.1", "v1.2.3", "50%", "$19.99",
    "€100", "¥5000", "1st 2nd 3rd 4th", "a1b2c3", "abc123def456", "3x4=12", "1/2 + 1/3 = 5/6",
    "99 bottles of beer", "  12  34  ", "１２３４５", "٠١٢٣٤٥٦٧٨٩", "०१२३४५", "½ ¼ ¾", "x² + y³",
    "Ⅻ Ⅳ ⅸ", "①②③", "π ≈ 3.14", "10000000000000000000000000000000000000001",
    " 1", " 12", "a 1", "1 a", "1.", ".1", "1..2",
]

WHITESPACE = [
    "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\n\n\nb", "a\r\nb", "a \n b",
    "trailing ", "trailing  ", "trailing   ", " leading", "  leading", "   leading", "   ", "\t", "\n",
    "\n\n", " \n", "\n ", " \t \n ", "x \t\n y", "end with newline\n", "\t\tx", "x\t\t", "a \u00a0b",
    "a\u00a0\u00a0b", "\u3000全角スペース", "em\u2003space", "thin\u2009space", "line\u2028sep",
    "para\u2029sep", "nbsp\u00a0", "\u0085next line", "\r", "\r\r\n", "\x0b\x0c", "  \n\n  \n  ",
    "words    with     many      spaces", "\n\n\n\n\n\n\n\n", "                ",
]

PUNCTUATION = [
    "!!!", "???", "...", "?!", "!?", "—", "–", "--", "---", "…", "«quoted»", "“double quotes”",
    "(a) [b] {c} <d>", "@#$%^&*", "~`|\\", "a/b\\c", "..!!,,;;", "“”‘’", "¿Qué?", "¡Hola!",
    "a.b.c", "a,b,c", "a;b:c", "(((nested)))", "]]>", "<!-- comment -->", "#hashtag @mention",
    "***bold*** __underline__", "==> <== <=> != === !==", "•", "§ ¶ † ‡", "© ® ™",
    "-\u00ad-", "'\"'\"", "\\\\n", "\\t", "%d %s %%",
]

UNICODE = [
    "café", "naïve résumé", "Crème brûlée", "Ångström", "Zürich straße", "São Paulo", "Ærøskøbing",
    "e\u0301", "cafe\u0301 au lait", "n\u0303", "ﬁnance ﬂow", "İstanbul ıi",
    "中文", "你好，世界！", "我爱自然语言处理。", "日本語のテキスト", "ひらがな カタカナ", "한국어 텍스트",
    "Привет, мир!", "Съешь же ещё этих мягких французских булок", "Ελληνικά γράμματα", "Українська мова",
    "مرحبا بالعالم", "اللغة العربية ١٢٣", "שלום עולם", "नमस्ते दुनिया", "हिन्दी भाषा १२३",
    "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Հայերեն", "ትግርኛ", "தமிழ்", "বাংলা",
    "Ωmega ∑ ∫ √ ∞ ≠ ≤ ≥", "→ ← ↑ ↓ ⇒", "♠ ♥ ♦ ♣", "ℕ ℤ ℚ ℝ ℂ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟏𝟐𝟑",
    "mixed English и русский 和中文", "ﾊﾝｶｸ", "Ｆｕｌｌｗｉｄｔｈ", "ŉ ǅ ǈ", "\u200bzero\u200bwidth",
    "\u200d", "a\u200cb", "\ufeffBOM", "\ufffd", "\U00010348 gothic", "𠀀𠀁 ext-B",
]

EMOJI = [
    "😀", "😀😃😄", "I love it ❤️", "👍", "👍🏽", "👋🏿 hi", "👨‍👩‍👧‍👦", "👩‍💻 coding", "🏳️‍🌈",
    "🇫🇷🇩🇪🇯🇵", "1️⃣ 2️⃣", "#️⃣", "🤖 robot", "🎉🎉🎉 party!!!", "☕️ coffee", "🧑🏻‍🤝‍🧑🏾",
    "emoji at end 🚀", "🚀at start", "✓ ✗ ★ ☆", "🙂🙃", "📈 +12%", "🦄🌈",
]

SPECIAL = [  # (text, parse_special)
    ("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", False),
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|endoftext|>", True),
    ("<|endoftext|>", False),
    ("text<|endoftext|>more text", True),
    ("<|im_end|><|im_end|>", True),
    ("<|im_start|><|im_start|>x", True),
    ("<|im_start", True),
    ("<|im_start|", True),
    ("im_start|>", True),
    ("<<|im_start|>>", True),
    ("<repo_name>detinfer<file_sep>main.c\nint x;", True),
    ("<filename>a.py<gh_stars>100", True),
    ("<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>", True),
    ("<issue_start>bug<issue_comment>fixed<issue_closed>", True),
    ("<jupyter_text>", False),
    ("  <|im_start|>  ", True),
    ("\n<|im_end|>\n", True),
    ("<|IM_START|>", True),
    ("<|im_start|>user\n", True),
    ("a<|im_start|>b<|im_end|>c<|endoftext|>d", True),
    ("a<|im_start|>b<|im_end|>c<|endoftext|>d", False),
    ("<reponame><repo_name>", True),
]

# Pieces the random strings are built from: every class the pre-tokenizer distinguishes.
RANDOM_PIECES = [
    "the", "The", " of", "and", "token", "ization", "x", "Q", "'s", "'t", "'re", "'ll", "'", "0", "7",
    "42", "2024", "3.5", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "!", "?", ".", ",", "...", "-",
    "_", "(", ")", "{", "}", "[", "]", "\"", "#", "@", "$", "%", "&", "*", "+", "=", "<", ">", "/",
    "\\", "|", "~", "^", "`", ":", ";", "é", "ß", "ñ", "中", "文", "日本", "мир", "Ж", "ع", "ह",
    "ि", "\u0301", "١", "٣", "½", "²", "Ⅻ", "😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "\u00a0", "\u3000", "\u2003",
    "€", "£", "—", "…", "“", "”", "·", "•", "→", "∑", "≈", "\u200d", "ﬁ",
]


def random_strings(count, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 24)
        out.append("".join(rng.choice(RANDOM_PIECES) for _ in range(n)))
    return out


def long_text():
    """~4 KB of mixed prose and code: many words in one string."""
    parts = PROSE[:20] + CODE[:8] + UNICODE[:10] + NUMBERS[:20]
    return "\n".join(parts) * 2


def corpus():
    items = [(s, False) for s in PROSE + CONTRACTIONS + CODE + NUMBERS + WHITESPACE + PUNCTUATION + UNICODE + EMOJI]
    items += SPECIAL
    items += [(s, False) for s in random_strings(120, seed=20240601)]
    items += [(s, True) for s in random_strings(10, seed=7) ]
    items.append((long_text(), False))
    return items


def escape(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def main():
    from llama_cpp import Llama, __version__ as llama_cpp_version

    path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/detinfer/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    seen = set()
    lines = []
    for text, special in corpus():
        if (text, special) in seen:
            continue
        seen.add((text, special))
        data = text.encode("utf-8")
        ids = llm.tokenize(data, add_bos=False, special=special)
        back = llm.detokenize(ids, special=True)
        if back != data:
            sys.exit(f"llama.cpp does not round-trip {text!r}: {back!r}")
        lines.append("%s\t%d\t%s\n" % (escape(text), int(special), " ".join(map(str, ids))))
    sys.stdout.write("".join(lines))
    print(f"{len(lines)} strings, llama-cpp-python {llama_cpp_version}", file=sys.stderr)


if __name__ == "__main__":
    main()
