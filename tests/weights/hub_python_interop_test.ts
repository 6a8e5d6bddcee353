/**
 * The cache written by pullModel and the one written by Python's huggingface_hub are the same cache: each reuses
 * what the other downloaded. Runs where a Python with huggingface_hub is found ($MKCHAT_PYTHON, else python3), as
 * on the GPU machine; elsewhere it is reported as ignored.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { pullModel } from "../../weights/hub.ts";
import { smallModelFiles } from "./_fixtures.ts";
import { HubServer } from "./_hub_server.ts";

const PYTHON = Deno.env.get("MKCHAT_PYTHON") ?? "python3";
const FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"];
const SCRIPT = `
import os, sys
from huggingface_hub import hf_hub_download
for f in sys.argv[2].split(","):
    print(os.path.realpath(hf_hub_download(sys.argv[1], f)))
`;

function hasHfHub(): boolean {
  try {
    return new Deno.Command(PYTHON, { args: ["-c", "import huggingface_hub"], stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

async function hfHubDownload(hub: HubServer, cacheDir: string, env: Record<string, string> = {}): Promise<string[]> {
  const out = await new Deno.Command(PYTHON, {
    args: ["-c", SCRIPT, "org/model", FILES.join(",")],
    env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir, HF_HUB_DISABLE_XET: "1", HF_TOKEN: "", ...env },
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  ok(out.success, `hf_hub_download failed: ${stderr.slice(-600)}`);
  return new TextDecoder().decode(out.stdout).trim().split("\n");
}

Deno.test({
  name: "pullModel() and Python's hf_hub_download reuse each other's cache",
  ignore: !hasHfHub(),
  fn: async (t) => {
    await using hub = HubServer.start([{ id: "org/model", files: smallModelFiles(), lfs: ["model.safetensors"] }]);
    await t.step("Python first: pullModel only asks for metadata", async () => {
      const cacheDir = await Deno.makeTempDir();
      try {
        await hfHubDownload(hub, cacheDir);
        const before = hub.requests.length;
        await pullModel("org/model", { settings: { endpoint: hub.url, cacheDir, token: undefined, offline: false } });
        ok(hub.requests.slice(before).every((r) => r.method === "HEAD"));
      } finally {
        await Deno.remove(cacheDir, { recursive: true });
      }
    });
    await t.step("mkchat first: Python finds every file offline", async () => {
      const cacheDir = await Deno.makeTempDir();
      try {
        const snap = await pullModel("org/model", { settings: { endpoint: hub.url, cacheDir, token: undefined } });
        const before = hub.requests.length;
        const paths = await hfHubDownload(hub, cacheDir, { HF_HUB_OFFLINE: "1" });
        equal(hub.requests.length, before);
        deepStrictEqual(paths, await Promise.all(FILES.map((f) => Deno.realPath(`${snap}/${f}`))));
      } finally {
        await Deno.remove(cacheDir, { recursive: true });
      }
    });
  },
});
