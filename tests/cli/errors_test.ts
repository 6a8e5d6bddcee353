// Bad input reaches the user as one line naming what is wrong, never a stack trace, never the HF token.
import { assert, assertEquals, assertNotMatch } from "./_assert.ts";
import { assertOneLineError, mkchat } from "./_mkchat.ts";

Deno.test("a missing local model folder is one line naming it, exit 1", async () => {
  const r = await mkchat(["run", "--device", "cpu", "--model", "./no/such/model", "hi"]);
  assertEquals(r.code, 1);
  assertOneLineError(r, /no\/such\/model/);
});

Deno.test("a corrupt safetensors file is one line naming the file, exit 1", async () => {
  // A complete tiny model folder, then its weights replaced by garbage.
  const pulled = await mkchat(["pull", "synthetic:tiny"]);
  assertEquals(pulled.code, 0, pulled.stderr);
  const src = pulled.stdout.trim();
  const dir = await Deno.makeTempDir({ prefix: "mkchat-corrupt-" });
  try {
    for await (const e of Deno.readDir(src)) {
      if (e.name.endsWith(".safetensors")) {
        // A header length that claims far more than the file holds.
        const bytes = new Uint8Array(64);
        new DataView(bytes.buffer).setBigUint64(0, 1n << 40n, true);
        await Deno.writeFile(`${dir}/${e.name}`, bytes);
      } else if (e.isFile || e.isSymlink) {
        await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
      }
    }
    const r = await mkchat(["run", "--device", "cpu", "--model", dir, "hi"]);
    assertEquals(r.code, 1);
    assertOneLineError(r, /safetensors/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a truncated safetensors file is one line, exit 1", async () => {
  const pulled = await mkchat(["pull", "synthetic:tiny"]);
  const src = pulled.stdout.trim();
  const dir = await Deno.makeTempDir({ prefix: "mkchat-trunc-" });
  try {
    for await (const e of Deno.readDir(src)) {
      const from = `${src}/${e.name}`;
      if (e.name.endsWith(".safetensors")) {
        const bytes = await Deno.readFile(from);
        await Deno.writeFile(`${dir}/${e.name}`, bytes.subarray(0, bytes.length >> 1));
      } else await Deno.copyFile(from, `${dir}/${e.name}`);
    }
    const r = await mkchat(["run", "--device", "cpu", "--model", dir, "hi"]);
    assertEquals(r.code, 1);
    assertOneLineError(r);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HF_TOKEN never appears in the output when the hub cannot be reached", async () => {
  const cache = await Deno.makeTempDir({ prefix: "mkchat-hub-" });
  const token = "hf_SECRETsecretSECRET1234567890";
  try {
    for (
      const args of [["pull", "someorg/somemodel"], ["run", "--device", "cpu", "--model", "someorg/somemodel", "hi"]]
    ) {
      for (const extra of [[], ["--verbose"]]) {
        const r = await mkchat([...args, ...extra], {
          env: { HF_TOKEN: token, HF_ENDPOINT: "http://127.0.0.1:9", HF_HUB_CACHE: cache, HF_HOME: cache },
        });
        assert(r.code !== 0, "fails");
        assertNotMatch(r.stdout + r.stderr, /SECRET/);
        if (extra.length === 0) assertOneLineError(r);
      }
    }
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("--device cuda that cannot run is one clear line, exit 1; auto falls back to the CPU with a note", async (t) => {
  const probe = await mkchat(["run", "--device", "cuda", "--model", "synthetic:tiny", "--max-tokens", "1", "hi"]);
  await t.step("cuda", () => {
    // No usable GPU: "no usable GPU"; a GPU: the megakernel refuses tiny's hidden size 64. One line either way.
    assertEquals(probe.code, 1, probe.stderr);
    assertOneLineError(probe, /no usable GPU|hidden_size 64/i);
  });
  await t.step("auto", async () => {
    const r = await mkchat(["run", "--device", "auto", "--model", "synthetic:tiny", "--max-tokens", "1", "hi"]);
    assertEquals(r.code, 0, r.stderr);
    assert(/note: .*running on the CPU/i.test(r.stderr), r.stderr);
    assertEquals(r.stderr.trim().split("\n").filter((l) => /note:/.test(l)).length, 1, r.stderr);
  });
});
