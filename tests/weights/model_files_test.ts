import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { loadModelFolder } from "../../weights/model_files.ts";
import {
  rawSafetensors,
  rejectsWith,
  safetensorsBytes,
  smallConfigJson,
  smallModelFiles,
  specsFor,
  writeFolder,
} from "./_fixtures.ts";

async function withModel(
  files: Record<string, Uint8Array | string>,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await writeFolder(files);
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("loadModelFolder() loads a folder with every tensor in canonical order", async () => {
  await withModel(smallModelFiles(), async (dir) => {
    const m = await loadModelFolder(dir, "my-model");
    equal(m.id, "my-model");
    equal(m.config.dim, 8);
    equal(m.config.tieEmbeddings, true);
    equal(m.tensors.length, 1 + 2 * 9 + 1);
    equal(m.tensors[0].name, "model.embed_tokens.weight");
    deepStrictEqual(m.tensors[0].shape, [32, 8]);
    equal(m.tensors.at(-1)!.name, "model.norm.weight");
    equal(m.tokenizerJsonPath, join(dir, "tokenizer.json"));
    equal(m.tokenizerConfig.bos_token, "<s>");
    deepStrictEqual(m.generationConfig, { eos_token_id: [2, 3] });
  });
});

Deno.test("loadModelFolder() loads sharded weights through the index", async () => {
  await withModel(smallModelFiles({ sharded: true, generationConfig: false }), async (dir) => {
    const m = await loadModelFolder(dir);
    equal(m.generationConfig, null);
    const shards = new Set(m.tensors.map((t) => t.path));
    deepStrictEqual([...shards].sort(), [
      join(dir, "model-00001-of-00002.safetensors"),
      join(dir, "model-00002-of-00002.safetensors"),
    ]);
  });
});

Deno.test("loadModelFolder() decides tied embeddings from the config and from lm_head", async (t) => {
  await t.step("untied config with lm_head: lm_head is the last tensor", async () => {
    const config = smallConfigJson({ tie_word_embeddings: false });
    await withModel(smallModelFiles({ config, withLmHead: true }), async (dir) => {
      const m = await loadModelFolder(dir);
      equal(m.config.tieEmbeddings, false);
      equal(m.tensors.at(-1)!.name, "lm_head.weight");
    });
  });
  await t.step("untied config without lm_head: tied", async () => {
    const config = smallConfigJson({ tie_word_embeddings: false });
    await withModel(smallModelFiles({ config, withLmHead: false }), async (dir) => {
      const m = await loadModelFolder(dir);
      equal(m.config.tieEmbeddings, true);
      ok(!m.tensors.some((x) => x.name === "lm_head.weight"));
    });
  });
  await t.step("tied config with a stored lm_head: tied, lm_head dropped", async () => {
    await withModel(smallModelFiles({ withLmHead: true }), async (dir) => {
      const m = await loadModelFolder(dir);
      equal(m.config.tieEmbeddings, true);
      ok(!m.tensors.some((x) => x.name === "lm_head.weight"));
    });
  });
});

Deno.test("loadModelFolder() rejects a tensor whose shape does not match config.json", async () => {
  const files = smallModelFiles();
  const specs = specsFor(smallConfigJson()).map((s) =>
    s.name === "model.layers.1.mlp.down_proj.weight" ? { ...s, shape: [8, 12] } : s
  );
  files["model.safetensors"] = safetensorsBytes(specs);
  await withModel(files, async (dir) => {
    await rejectsWith(
      () => loadModelFolder(dir),
      "weights",
      /model\.safetensors: tensor model\.layers\.1\.mlp\.down_proj\.weight has shape \[8, 12\] but config\.json implies \[8, 16\]/,
    );
  });
});

Deno.test("loadModelFolder() rejects missing and unknown tensors by name, allowing rotary inv_freq", async (t) => {
  const specs = specsFor(smallConfigJson());
  await t.step("missing", async () => {
    const files = smallModelFiles();
    files["model.safetensors"] = safetensorsBytes(
      specs.filter((s) => s.name !== "model.layers.0.self_attn.k_proj.weight"),
    );
    await withModel(files, async (dir) => {
      await rejectsWith(
        () => loadModelFolder(dir),
        "weights",
        /missing tensor model\.layers\.0\.self_attn\.k_proj\.weight/,
      );
    });
  });
  await t.step("unknown", async () => {
    const files = smallModelFiles();
    files["model.safetensors"] = safetensorsBytes([...specs, { name: "model.extra.bias", dtype: "BF16", shape: [8] }]);
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "weights", /unexpected tensor model\.extra\.bias/);
    });
  });
  await t.step("inv_freq buffers are ignored", async () => {
    const files = smallModelFiles();
    const invFreq = { name: "model.layers.0.self_attn.rotary_emb.inv_freq", dtype: "F32" as const, shape: [2] };
    files["model.safetensors"] = safetensorsBytes([...specs, invFreq]);
    await withModel(files, async (dir) => {
      const m = await loadModelFolder(dir);
      ok(!m.tensors.some((x) => x.name.includes("inv_freq")));
    });
  });
});

Deno.test("loadModelFolder() reports missing files, naming them", async (t) => {
  for (
    const [drop, code, re] of [
      ["config.json", "config", /missing config\.json: .*config\.json/],
      ["tokenizer.json", "tokenizer", /missing tokenizer\.json in /],
      ["tokenizer_config.json", "tokenizer", /missing tokenizer_config\.json/],
      [
        "model.safetensors",
        "weights",
        /no weights in .*: expected model\.safetensors or model\.safetensors\.index\.json/,
      ],
    ] as const
  ) {
    await t.step(drop, async () => {
      const files = smallModelFiles();
      delete files[drop];
      await withModel(files, async (dir) => {
        await rejectsWith(() => loadModelFolder(dir), code, re);
      });
    });
  }
  await t.step("a shard named by the index", async () => {
    const files = smallModelFiles({ sharded: true });
    delete files["model-00002-of-00002.safetensors"];
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "weights", /missing shard model-00002-of-00002\.safetensors/);
    });
  });
  await t.step("the folder itself", async () => {
    await rejectsWith(
      () => loadModelFolder("/nonexistent/model"),
      "model",
      /model folder not found: \/nonexistent\/model/,
    );
  });
});

Deno.test("loadModelFolder() rejects a non-llama config and corrupt weights", async (t) => {
  await t.step("config", async () => {
    const files = smallModelFiles();
    files["config.json"] = JSON.stringify(smallConfigJson({ model_type: "gpt2", architectures: ["GPT2LMHeadModel"] }));
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "config", /config\.json: model_type is "gpt2"/);
    });
  });
  await t.step("config that is not JSON", async () => {
    const files = smallModelFiles();
    files["config.json"] = "{ not json";
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "config", /config\.json: not valid JSON/);
    });
  });
  await t.step("weights header claiming gigabytes", async () => {
    const files = smallModelFiles();
    files["model.safetensors"] = rawSafetensors({}, 0, 3n << 30n);
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "weights", /header claims 3221225472 bytes/);
    });
  });
  await t.step("index pointing outside the folder", async () => {
    const files = smallModelFiles({ sharded: true });
    files["model.safetensors.index.json"] = JSON.stringify({ weight_map: { "model.norm.weight": "../x.safetensors" } });
    await withModel(files, async (dir) => {
      await rejectsWith(() => loadModelFolder(dir), "weights", /not a \.safetensors file name/);
    });
  });
});
