import { deepStrictEqual, equal } from "node:assert/strict";
import { DEFAULT_MODEL, formatModelRef, parseModelRef } from "../../weights/model_ref.ts";
import { rejectsWith } from "./_fixtures.ts";

Deno.test("parseModelRef() reads hub ids with and without a revision", () => {
  deepStrictEqual(parseModelRef(DEFAULT_MODEL), {
    kind: "hub",
    repo: "unsloth/Llama-3.2-1B-Instruct",
    revision: "main",
  });
  deepStrictEqual(parseModelRef("meta-llama/Llama-3.2-1B@refs/pr/3"), {
    kind: "hub",
    repo: "meta-llama/Llama-3.2-1B",
    revision: "refs/pr/3",
  });
  equal(formatModelRef(parseModelRef("a/b@v1")), "a/b@v1");
});

Deno.test("parseModelRef() reads synthetic shapes and seeds", async () => {
  deepStrictEqual(parseModelRef("synthetic:tiny"), { kind: "synthetic", shape: "tiny", seed: 0 });
  deepStrictEqual(parseModelRef("synthetic:llama-3.2-1b@7"), { kind: "synthetic", shape: "llama-3.2-1b", seed: 7 });
  await rejectsWith(() => parseModelRef("synthetic:huge"), "model", /unknown synthetic shape "huge"/);
  await rejectsWith(() => parseModelRef("synthetic:tiny@-1"), "model", /bad seed "-1"/);
  await rejectsWith(() => parseModelRef("synthetic:tiny@4294967296"), "model", /bad seed/);
});

Deno.test("parseModelRef() takes an existing folder as a local model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    deepStrictEqual(parseModelRef(dir), { kind: "local", path: dir });
    await Deno.writeTextFile(`${dir}/f.txt`, "x");
    await rejectsWith(() => parseModelRef(`${dir}/f.txt`), "model", /is a file/);
    await rejectsWith(() => parseModelRef(`${dir}/missing`), "model", /model folder not found: .*missing/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseModelRef() rejects text that is no reference", async () => {
  for (const bad of ["", "llama", "a/b/c", "org/na--me", "-org/name", "org/name@", "org/name@a b"]) {
    await rejectsWith(() => parseModelRef(bad), "model", /.+/);
  }
});
