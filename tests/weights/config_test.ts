import { deepStrictEqual, equal } from "node:assert/strict";
import { parseLlamaConfig } from "../../weights/config.ts";
import { syntheticConfigJson } from "../../weights/synthetic.ts";
import { rejectsWith, smallConfigJson } from "./_fixtures.ts";

const F = "/m/config.json";

Deno.test("parseLlamaConfig() reads Llama-3.2-1B's config with llama3 rope scaling exactly", () => {
  const c = parseLlamaConfig(syntheticConfigJson("llama-3.2-1b"), F);
  deepStrictEqual(c, {
    vocabSize: 128256,
    dim: 2048,
    hiddenDim: 8192,
    nLayers: 16,
    nHeads: 32,
    nKvHeads: 8,
    headDim: 64,
    maxPosition: 131072,
    rmsEps: 1e-5,
    ropeTheta: 500000,
    ropeType: 1,
    ropeFactor: 32,
    ropeLowFreqFactor: 1,
    ropeHighFreqFactor: 4,
    ropeOriginalMaxPosition: 8192,
    tieEmbeddings: true,
    bosTokenId: 128000,
    eosTokenIds: [128001, 128008, 128009],
  });
});

Deno.test("parseLlamaConfig() handles rope_scaling variants", async (t) => {
  const llama3 = { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
  await t.step('legacy "type" key', () => {
    const c = parseLlamaConfig(smallConfigJson({ rope_scaling: { type: "llama3", ...llama3 } }), F);
    equal(c.ropeType, 1);
    equal(c.ropeFactor, 8);
  });
  await t.step("null → default rope with neutral factors", () => {
    const c = parseLlamaConfig(smallConfigJson({ rope_scaling: null, max_position_embeddings: 64 }), F);
    deepStrictEqual([c.ropeType, c.ropeFactor, c.ropeLowFreqFactor, c.ropeHighFreqFactor], [0, 1, 1, 1]);
    equal(c.ropeOriginalMaxPosition, 64);
  });
  await t.step("transformers 5 rope_parameters with rope_theta inside", () => {
    const json = smallConfigJson({ rope_parameters: { rope_type: "llama3", rope_theta: 123, ...llama3 } });
    delete json.rope_theta;
    const c = parseLlamaConfig(json, F);
    deepStrictEqual([c.ropeType, c.ropeTheta, c.ropeOriginalMaxPosition], [1, 123, 8192]);
  });
  await t.step("other rope types rejected, naming the type", async () => {
    await rejectsWith(
      () => parseLlamaConfig(smallConfigJson({ rope_scaling: { rope_type: "yarn", factor: 4 } }), F),
      "config",
      /config\.json: rope_scaling\.rope_type "yarn" is not supported/,
    );
  });
  await t.step("llama3 with a missing field", async () => {
    const { factor: _, ...noFactor } = llama3;
    await rejectsWith(
      () => parseLlamaConfig(smallConfigJson({ rope_scaling: { rope_type: "llama3", ...noFactor } }), F),
      "config",
      /missing rope_scaling\.factor/,
    );
  });
  await t.step("llama3 with high_freq_factor <= low_freq_factor", async () => {
    await rejectsWith(
      () =>
        parseLlamaConfig(smallConfigJson({ rope_scaling: { rope_type: "llama3", ...llama3, high_freq_factor: 1 } }), F),
      "config",
      /high_freq_factor \(1\) must be greater than low_freq_factor \(1\)/,
    );
  });
});

Deno.test("parseLlamaConfig() rejects a non-llama model_type", async () => {
  await rejectsWith(
    () => parseLlamaConfig(smallConfigJson({ model_type: "mistral", architectures: ["MistralForCausalLM"] }), F),
    "config",
    /^\/m\/config\.json: model_type is "mistral", but mkchat runs Llama models only/,
  );
  await rejectsWith(
    () => parseLlamaConfig(smallConfigJson({ architectures: ["LlamaForSequenceClassification"] }), F),
    "config",
    /architectures is \["LlamaForSequenceClassification"\]/,
  );
  const bare = smallConfigJson();
  delete bare.model_type;
  delete bare.architectures;
  await rejectsWith(() => parseLlamaConfig(bare, F), "config", /neither model_type nor architectures/);
  await rejectsWith(() => parseLlamaConfig([1, 2], F), "config", /not a JSON object/);
});

Deno.test("parseLlamaConfig() rejects bad values, naming the setting", async (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ hidden_size: 0 }, /hidden_size must be a positive integer, got 0/],
    [{ vocab_size: 12.5 }, /vocab_size must be a positive integer, got 12\.5/],
    [{ num_hidden_layers: "2" }, /num_hidden_layers must be a positive integer, got "2"/],
    [{ intermediate_size: undefined }, /missing intermediate_size/],
    [{ num_key_value_heads: 3 }, /num_attention_heads \(4\) is not a multiple of num_key_value_heads \(3\)/],
    [{ hidden_size: 10 }, /hidden_size \(10\) is not a multiple of num_attention_heads \(4\)/],
    [{ head_dim: 3 }, /head_dim \(3\) must be even/],
    [{ rms_norm_eps: -1 }, /rms_norm_eps must be a positive number/],
    [{ rope_theta: "big" }, /rope_theta must be a positive number/],
    [{ tie_word_embeddings: "yes" }, /tie_word_embeddings must be true or false/],
    [{ eos_token_id: [2, -1] }, /eos_token_id\[1\] must be a token id/],
    [{ eos_token_id: 99 }, /token id 99 \(bos\/eos\) is outside the vocabulary of 32/],
    [{ hidden_act: "gelu" }, /hidden_act is "gelu"/],
    [{ attention_bias: true }, /attention_bias is true/],
  ];
  for (const [over, re] of cases) {
    await t.step(Object.keys(over)[0], async () => {
      await rejectsWith(() => parseLlamaConfig(smallConfigJson(over), F), "config", re);
    });
  }
});

Deno.test("parseLlamaConfig() applies transformers' defaults and explicit head_dim", () => {
  const json = smallConfigJson({ head_dim: 4, eos_token_id: 2 });
  for (const k of ["num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings"]) delete json[k];
  const c = parseLlamaConfig(json, F);
  deepStrictEqual(
    [c.nKvHeads, c.headDim, c.rmsEps, c.ropeTheta, c.maxPosition, c.eosTokenIds],
    [4, 4, 1e-6, 10000, 2048, [2]],
  );
});
