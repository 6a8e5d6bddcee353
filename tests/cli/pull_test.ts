// `mkchat pull` against a loopback hub (tests/weights/_hub_server.ts), then the pulled model used by `run` offline.
import { assert, assertEquals, assertMatch, assertNotMatch } from "./_assert.ts";
import { assertOneLineError, mkchat } from "./_mkchat.ts";
import { HubServer } from "../weights/_hub_server.ts";

/** The files of the tiny synthetic model, as a hub repo would hold them. */
async function tinyRepoFiles(): Promise<Record<string, Uint8Array>> {
  const made = await mkchat(["pull", "synthetic:tiny"]);
  assertEquals(made.code, 0, made.stderr);
  const dir = made.stdout.trim();
  const files: Record<string, Uint8Array> = {};
  for await (const e of Deno.readDir(dir)) files[e.name] = await Deno.readFile(`${dir}/${e.name}`);
  return files;
}

Deno.test("pull downloads a model from the hub into the HF cache, and run uses it offline", async () => {
  const files = await tinyRepoFiles();
  const lfs = Object.keys(files).filter((f) => f.endsWith(".safetensors"));
  await using hub = HubServer.start([{ id: "testorg/tiny", files, lfs }]);
  const cache = await Deno.makeTempDir({ prefix: "mkchat-pull-" });
  try {
    const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache };
    const pulled = await mkchat(["pull", "testorg/tiny"], { env });
    assertEquals(pulled.code, 0, pulled.stderr);
    const snapshot = pulled.stdout.trim();
    assert(snapshot.startsWith(`${cache}/models--testorg--tiny/snapshots/`), snapshot);
    // Not a terminal: plain progress lines, no bar drawn with escape codes.
    assertMatch(pulled.stderr, /downloading .*\.safetensors/);
    assert(!pulled.stderr.includes("\r"), "no carriage returns when stderr is not a terminal");

    const r = await mkchat(
      ["run", "--device", "cpu", "--model", "testorg/tiny", "--json", "--logprobs", "5", "--max-tokens", "4", "hi"],
      { env: { ...env, HF_HUB_OFFLINE: "1" } },
    );
    assertEquals(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assertEquals(j.model, "testorg/tiny");
    assertEquals(j.logprobs.length, j.tokens.length);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("pull of a gated repo with a wrong HF_TOKEN is one line that does not show the token", async () => {
  await using hub = HubServer.start([{ id: "testorg/gated", files: { "config.json": "{}" }, token: "hf_right" }]);
  const cache = await Deno.makeTempDir({ prefix: "mkchat-gated-" });
  try {
    const token = "hf_WRONGwrongWRONG123456";
    const r = await mkchat(["pull", "testorg/gated"], {
      env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_TOKEN: token },
    });
    assertEquals(r.code, 1);
    assertOneLineError(r, /401|token|gated|access/i);
    assertNotMatch(r.stdout + r.stderr, /WRONG/);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
