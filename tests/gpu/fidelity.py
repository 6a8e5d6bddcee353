#!/usr/bin/env python3
"""Fidelity of mkchat's engines against HF transformers, on the GPU machine.

    python3 tests/gpu/fidelity.py MODEL_DIR TOKENS_JSON NAME=LOGITS.f32 [NAME=LOGITS.f32 ...] [--json OUT]

Runs the model in MODEL_DIR with HF transformers in float32 (TF32 off: the reference) and in bfloat16 over the token
sequence in TOKENS_JSON (written by tests/gpu/dump_logits.ts), takes the logits after each of the last `steps` tokens,
and reports for every engine dump and for HF bf16 the relative L2 error against fp32 per step (mean, max) and the
agreement of the argmax. The megakernel passes when its mean error is no worse than HF bf16's.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoConfig, LlamaForCausalLM


def hf_logits(model_dir, tokens, start, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="eager").cuda().eval()
    with torch.no_grad():
        ids = torch.tensor([tokens], device="cuda")
        out = model(ids).logits[0, start:].float().cpu().numpy()
    del model
    torch.cuda.empty_cache()
    return out


def rel_l2(a, ref):
    return np.linalg.norm((a - ref).astype(np.float64), axis=1) / np.linalg.norm(ref.astype(np.float64), axis=1)


def main():
    args = [a for a in sys.argv[1:]]
    json_out = None
    if "--json" in args:
        i = args.index("--json")
        json_out = args[i + 1]
        del args[i : i + 2]
    model_dir, tokens_json, dumps = args[0], args[1], args[2:]
    seq = json.load(open(tokens_json))
    tokens, n_prompt, steps = seq["tokens"], seq["prompt"], seq["steps"]
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    # logits after token i predict token i+1: the dumps hold the logits after tokens n_prompt .. n_prompt+steps-1
    fp32 = hf_logits(model_dir, tokens, n_prompt, torch.float32)
    bf16 = hf_logits(model_dir, tokens, n_prompt, torch.bfloat16)
    assert fp32.shape == (steps, vocab), fp32.shape
    rows = {"hf_bf16": bf16}
    for d in dumps:
        name, path = d.split("=", 1)
        arr = np.fromfile(path, dtype=np.float32)
        n = arr.size // vocab
        rows[name] = arr.reshape(n, vocab)
    report = {"model_dir": model_dir, "steps": steps, "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "engines": {}}
    ref_arg = fp32.argmax(1)
    for name, arr in rows.items():
        n = arr.shape[0]
        err = rel_l2(arr, fp32[:n])
        report["engines"][name] = {
            "steps": int(n),
            "rel_l2_mean": float(err.mean()),
            "rel_l2_max": float(err.max()),
            "argmax_agree": float((arr.argmax(1) == ref_arg[:n]).mean()),
        }
    bf = report["engines"]["hf_bf16"]["rel_l2_mean"]
    for name, r in report["engines"].items():
        if name != "hf_bf16":
            r["no_worse_than_hf_bf16"] = bool(r["rel_l2_mean"] <= bf)
    print(f"{'engine':<16}{'steps':>6}{'rel L2 mean':>14}{'rel L2 max':>14}{'argmax agree':>14}")
    for name, r in report["engines"].items():
        print(f"{name:<16}{r['steps']:>6}{r['rel_l2_mean']:>14.3e}{r['rel_l2_max']:>14.3e}{r['argmax_agree']:>14.3f}")
    if json_out:
        json.dump(report, open(json_out, "w"), indent=1)
    ok = all(r.get("no_worse_than_hf_bf16", True) for r in report["engines"].values())
    print("PASS" if ok else "FAIL", "(each engine's mean error no worse than HF bf16's)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
