import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { parseModelRef } from "../../weights/model_ref.ts";
import { resolveModel } from "../../weights/resolve.ts";
import { rejectsWith, smallModelFiles, writeFolder } from "./_fixtures.ts";
import { HubServer } from "./_hub_server.ts";

Deno.test("resolveModel() loads a local folder", async () => {
  const dir = await writeFolder(smallModelFiles());
  try {
    const m = await resolveModel(parseModelRef(dir));
    deepStrictEqual([m.dir, m.id, m.config.vocabSize], [dir, dir, 32]);
    await Deno.remove(join(dir, "tokenizer.json"));
    await rejectsWith(() => resolveModel(parseModelRef(dir)), "tokenizer", /missing tokenizer\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resolveModel() materialises a synthetic model", async () => {
  const cacheDir = await Deno.makeTempDir();
  try {
    const m = await resolveModel(parseModelRef("synthetic:tiny@2"), { cacheDir });
    equal(m.id, "synthetic:tiny@2");
    equal(m.dir, join(cacheDir, "synthetic", "tiny@2"));
    equal(m.config.dim, 64);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("resolveModel() pulls a hub model once, then uses the complete cache without asking", async () => {
  await using hub = HubServer.start([{ id: "org/m", files: smallModelFiles(), lfs: ["model.safetensors"] }]);
  const cacheDir = await Deno.makeTempDir();
  try {
    const settings = { endpoint: hub.url, cacheDir, token: undefined, offline: false };
    const progress: string[] = [];
    const m = await resolveModel(parseModelRef("org/m"), { hub: settings, onProgress: (p) => progress.push(p.file) });
    equal(m.id, "org/m");
    ok(progress.includes("model.safetensors"));
    const count = hub.requests.length;
    const again = await resolveModel(parseModelRef("org/m"), { hub: settings });
    equal(again.dir, m.dir);
    equal(hub.requests.length, count, "no request for a complete snapshot");
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});
