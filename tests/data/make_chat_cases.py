#!/usr/bin/env python3
"""Writes tests/data/chat_cases.json: chat templates and the prompt each must render to.

    python3 tests/data/make_chat_cases.py path/to/llama.cpp/tests/test-chat-template.cpp > tests/data/chat_cases.json

The template texts (inputs) are read from llama.cpp's tests/test-chat-template.cpp, the cases
named below (from the llama-cpp-python 0.3.36 sdist: vendor/llama.cpp/tests/). The expected
prompts are written here, per family, for the conversation that test uses; "family": null means
detinfer must refuse the template (a family it does not render). Each case is
{"name", "template", "family", "expected"}; "conversation" is shared.
"""
import json
import re
import sys

CONVERSATION = [
    ["system", "You are a helpful assistant"], ["user", "Hello"], ["assistant", "Hi there"],
    ["user", "Who are you"], ["assistant", "   I am an assistant   "], ["user", "Another question"],
]
SYS, Q1, A1, Q2, A2, Q3 = (m[1] for m in CONVERSATION)


def chatml():
    turns = "".join("<|im_start|>%s\n%s<|im_end|>\n" % (r, c) for r, c in CONVERSATION)
    return turns + "<|im_start|>assistant\n"


def phi3():
    return "".join("<|%s|>\n%s<|end|>\n" % (r, c) for r, c in CONVERSATION) + "<|assistant|>\n"


def llama3():
    turns = "".join("<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>" % (r, c.strip()) for r, c in CONVERSATION)
    return turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def gemma():
    # no system role: its text leads the first user turn
    return ("<start_of_turn>user\n%s\n\n%s<end_of_turn>\n<start_of_turn>model\n%s<end_of_turn>\n"
            "<start_of_turn>user\n%s<end_of_turn>\n<start_of_turn>model\n%s<end_of_turn>\n"
            "<start_of_turn>user\n%s<end_of_turn>\n<start_of_turn>model\n") % (SYS, Q1, A1, Q2, A2.strip(), Q3)


EXPECTED = {
    "chatml": chatml(),
    "phi3": phi3(),
    "llama3": llama3(),
    "gemma": gemma(),
    # Llama 2 without a system block: the system text leads the first [INST]
    "llama2": "[INST] %s\n%s [/INST]%s</s>[INST] %s [/INST]%s</s>[INST] %s [/INST]" % (SYS, Q1, A1, Q2, A2, Q3),
    "llama2-sys-bos": "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]%s</s><s>[INST] %s [/INST]%s</s><s>[INST] %s [/INST]"
                      % (SYS, Q1, A1, Q2, A2, Q3),
    "llama2-sys-strip": "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]%s</s>[INST] %s [/INST]%s</s>[INST] %s [/INST]"
                        % (SYS, Q1, A1, Q2, A2.strip(), Q3),
    "mistral-v1": " [INST] %s\n\n%s [/INST] %s</s> [INST] %s [/INST] %s</s> [INST] %s [/INST]" % (SYS, Q1, A1, Q2, A2, Q3),
    "mistral-v3": "[INST] %s\n\n%s[/INST] %s</s>[INST] %s[/INST] %s</s>[INST] %s[/INST]" % (SYS, Q1, A1, Q2, A2.strip(), Q3),
    "mistral-v3-tekken": "[INST]%s\n\n%s[/INST]%s</s>[INST]%s[/INST]%s</s>[INST]%s[/INST]" % (SYS, Q1, A1, Q2, A2, Q3),
    "mistral-v7": "[SYSTEM_PROMPT] %s[/SYSTEM_PROMPT][INST] %s[/INST] %s</s>[INST] %s[/INST] %s</s>[INST] %s[/INST]"
                  % (SYS, Q1, A1, Q2, A2, Q3),
}

# test case name (prefix) in test-chat-template.cpp -> the family detinfer must find
CASES = [
    ("teknium/OpenHermes-2.5-Mistral-7B", "chatml"),
    ("mistralai/Mistral-7B-Instruct-v0.2 (NOTE", "llama2"),
    ("TheBloke/FusionNet_34Bx2_MoE-AWQ", "llama2-sys-bos"),
    ("bofenghuang/vigogne-2-70b-chat", "llama2-sys-strip"),
    ("google/gemma-7b-it", "gemma"),
    ("Llama-3", "llama3"),
    ("Phi-3-mini", "phi3"), ("Phi-3-small", "phi3"), ("Phi-3-medium", "phi3"), ("Phi-3-vision", "phi3"),
    ("mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1'", "mistral-v1"),
    ("Mistral-Large-Instruct-2407", "mistral-v3"),
    ("Mistral-Nemo-Instruct-2407", "mistral-v3-tekken"),
    ("mistralai/Mistral-Large-Instruct-2411", "mistral-v7"),
    # families detinfer does not render: each must be refused, not rendered as something else
    ("OrionStarAI/Orion-14B-Chat", None), ("openchat/openchat-3.5-0106", None),
    ("eachadea/vicuna-13b-1.1", None), ("CohereForAI/c4ai-command-r-plus", None), ("DeepSeek-V2", None),
    ("phi-4", None), ("ibm-granite/granite-3.0-8b-instruct", None),
]


def c_string(lit):
    """The value of a C string literal body (escapes \\n \\t \\\\ \\" \\' only: all the file uses)."""
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), lit)


def templates(src):
    out = {}
    for m in re.finditer(r'/\* \.name= \*/ "((?:[^"\\]|\\.)*)",\s*(?://[^\n]*\n\s*)*/\* \.template_str= \*/ (?:U8C\()?"((?:[^"\\]|\\.)*)"', src):
        out[c_string(m.group(1))] = c_string(m.group(2))
    return out


def main():
    src = open(sys.argv[1], encoding="utf-8").read()
    tmpls = templates(src)
    cases = []
    for prefix, fam in CASES:
        names = [n for n in tmpls if n.startswith(prefix)]
        assert len(names) == 1, (prefix, names)
        cases.append({"name": names[0], "template": tmpls[names[0]], "family": fam,
                      "expected": EXPECTED[fam] if fam else None})
    cases.append({"name": "not a template", "template": "INVALID TEMPLATE", "family": None, "expected": None})
    json.dump({"conversation": CONVERSATION, "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
