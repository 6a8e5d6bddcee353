#!/usr/bin/env python3
"""
make_golden.py: golden fixtures for the CPU reference engine, made by HF transformers in float32.

For each tiny Llama config below it writes tests/fixtures/golden/<name>/:
  config.json        an HF Llama config.json in the classic format of the Llama-3 checkpoints
  model.safetensors  seeded random weights, stored as bf16 (lm_head absent when tied)
  golden.json        input_ids, the fp32 logits after every input token (base64 little-endian float32,
                     shape [len(input_ids), vocab]), and the greedy continuation of a prompt made by
                     HF generate(do_sample=False), with the torch/transformers versions

The model is loaded back from those files with LlamaForCausalLM.from_pretrained in float32 (the bf16 weights are
upcast exactly), eager attention. The RoPE inverse frequencies HF ends up with are checked against an independent
computation of the llama3 rule, so a config that HF reads differently from what we mean fails here, not later.

Run on a machine with torch, transformers and safetensors (tests/native/engine_test.ts reads the output):
    python3 tests/golden/make_golden.py            # writes tests/fixtures/golden/
    python3 tests/golden/make_golden.py --out DIR
"""
import argparse
import base64
import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "golden"))

# The configs. head_dim 16 with theta 1e4 and original_max_position 64 puts the RoPE frequencies in all three llama3
# regimes (kept, interpolated, divided by factor) at positions a 24-token test reaches; the third one is the real
# Llama-3.2 rope (theta 5e5, factor 32, original 8192) at head_dim 64.
CONFIGS = [
    dict(name="tiny-llama3-tied", seed=1234, seq_len=24, prompt_len=8, new_tokens=16,
         vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=64),
         tie_word_embeddings=True),
    dict(name="tiny-default-untied", seed=4321, seq_len=24, prompt_len=8, new_tokens=16,
         vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
         num_key_value_heads=4, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
         rope_scaling=None, tie_word_embeddings=False),
    dict(name="tiny-llama32-rope-hd64", seed=99, seq_len=40, prompt_len=10, new_tokens=16,
         vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
         num_key_value_heads=1, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192),
         tie_word_embeddings=True),
]

MIN_GREEDY_MARGIN = 1e-3   # top-1 minus top-2 logit at every greedy step, so fp32 rounding cannot flip a token
SEED_TRIES = 20


def config_json(c):
    """config.json as the Llama-3 checkpoints write it (rope_theta + rope_scaling)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "max_position_embeddings": c["max_position_embeddings"],
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": c["rope_scaling"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": c["vocab_size"] - 1,
        "torch_dtype": "bfloat16",
    }


def tensor_shapes(c):
    d, hd = c["hidden_size"], c["head_dim"]
    q, kv, f = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd, c["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (c["vocab_size"], d)
    return shapes


def random_weights(c, seed):
    """bf16 tensors: matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 0.5^2), norm weights ~ 1 + N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(tensor_shapes(c).items()):
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif "embed_tokens" in name or name.startswith("lm_head"):
            t = 0.5 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        out[name] = t.to(torch.bfloat16).contiguous()
    return out


def expected_inv_freq(c):
    """The RoPE inverse frequencies, computed here independently of transformers (float64, then compared)."""
    hd, theta = c["head_dim"], c["rope_theta"]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = c["rope_scaling"]
    if not rs:
        return inv
    factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, (1 - smooth) * out / factor + smooth * out, out)


def load_fp32(folder):
    kwargs = dict(attn_implementation="eager")
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    except TypeError:  # transformers < 4.56 calls it torch_dtype
        model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, **kwargs)
    model.eval()
    return model


def hf_inv_freq(model):
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and isinstance(mod.inv_freq, torch.Tensor):
            return mod.inv_freq.detach().double().cpu().numpy()
    raise SystemExit("make_golden: could not find the rotary embedding's inv_freq in the HF model")


@torch.no_grad()
def greedy_manual(model, prompt, n):
    """greedy decoding by full forward passes: the check on generate(), and the top-1/top-2 margins"""
    ids, margins = list(prompt), []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        top2 = torch.topk(logits, 2).values
        margins.append(float(top2[0] - top2[1]))
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):], min(margins)


@torch.no_grad()
def greedy_generate(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         eos_token_id=None, pad_token_id=0, num_beams=1)
    return [int(x) for x in out[0, len(prompt):]]


def make_one(c, out_root):
    folder = os.path.join(out_root, c["name"])
    os.makedirs(folder, exist_ok=True)
    cfg = config_json(c)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    rng = np.random.default_rng(c["seed"])
    input_ids = [int(x) for x in rng.integers(0, c["vocab_size"], c["seq_len"])]
    prompt = input_ids[: c["prompt_len"]]

    for attempt in range(SEED_TRIES):
        seed = c["seed"] + attempt
        torch.manual_seed(seed)
        save_file(random_weights(c, seed), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        model = load_fp32(folder)
        greedy, margin = greedy_manual(model, prompt, c["new_tokens"])
        if margin >= MIN_GREEDY_MARGIN:
            break
        print(f"  {c['name']}: seed {seed} has a greedy near-tie (margin {margin:.2e}), trying the next seed")
    else:
        raise SystemExit(f"make_golden: {c['name']}: no seed without greedy near-ties in {SEED_TRIES} tries")

    # HF must read the config the way we mean it
    got_inv, want_inv = hf_inv_freq(model), expected_inv_freq(c)
    if not np.allclose(got_inv, want_inv, rtol=1e-5, atol=0):
        raise SystemExit(f"make_golden: {c['name']}: HF inv_freq {got_inv} differs from the llama3 rule {want_inv}")
    assert model.config.tie_word_embeddings == c["tie_word_embeddings"]
    if c["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].float().contiguous()
    assert logits.shape == (c["seq_len"], c["vocab_size"])
    method = "generate(do_sample=False)"
    try:
        gen = greedy_generate(model, prompt, c["new_tokens"])
    except Exception as err:  # an API change in generate(): the manual loop is the same greedy decoding
        print(f"  {c['name']}: generate() failed ({err!r}); using the manual greedy loop")
        gen, method = greedy, "manual greedy loop (full forward per token)"
    if gen != greedy:
        raise SystemExit(f"make_golden: {c['name']}: generate() {gen} differs from the manual greedy loop {greedy}")

    golden = {
        "name": c["name"],
        "generator": "tests/golden/make_golden.py",
        "seed": seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "float32 (bf16 weights upcast), eager attention",
        "input_ids": input_ids,
        "logits_shape": list(logits.shape),
        "logits_f32_b64": base64.b64encode(logits.numpy().astype("<f4").tobytes()).decode("ascii"),
        "greedy_prompt": prompt,
        "greedy_new_tokens": gen,
        "greedy_method": method,
        "greedy_min_margin": margin,
        "rope_inv_freq": [float(x) for x in got_inv],
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    print(f"{c['name']}: seed {seed}, {c['seq_len']} positions, greedy margin {margin:.3f}, {size / 1024:.0f} KiB")
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, output {args.out}")
    total = sum(make_one(c, args.out) for c in CONFIGS)
    print(f"total {total / 1024:.0f} KiB")
    if total > 2 * 1024 * 1024:
        sys.exit("make_golden: the fixtures exceed 2 MiB")


if __name__ == "__main__":
    main()
