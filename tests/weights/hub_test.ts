import { deepStrictEqual, equal, notEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { type HubSettings, hubSettingsFromEnv, pullModel, type PullProgress } from "../../weights/hub.ts";
import { loadModelFolder } from "../../weights/model_files.ts";
import { MkError } from "../../weights/errors.ts";
import { gitBlobSha1, HubServer, type RepoSpec, sha256Hex } from "./_hub_server.ts";
import { rejectsWith, smallModelFiles } from "./_fixtures.ts";

const REPO = "test-org/tiny-llama";
const TOKEN = "hf_secretTOKENvalue123";

function repoSpec(over: Partial<RepoSpec> = {}): RepoSpec {
  return { id: REPO, files: smallModelFiles(), lfs: ["model.safetensors"], ...over };
}

/** A fresh hub cache folder and settings pointing at `hub`; the folder is removed by the returned disposer. */
async function cacheFor(hub: HubServer | null, over: Partial<HubSettings> = {}) {
  const cacheDir = await Deno.makeTempDir({ prefix: "mkchat-hub-" });
  const settings: Partial<HubSettings> = {
    endpoint: hub?.url ?? "http://127.0.0.1:9",
    token: undefined,
    cacheDir,
    offline: false,
    etagTimeoutS: 5,
    downloadTimeoutS: 5,
    ...over,
  };
  return {
    cacheDir,
    settings,
    repoDir: join(cacheDir, "models--test-org--tiny-llama"),
    [Symbol.asyncDispose]: () => Deno.remove(cacheDir, { recursive: true }),
  };
}

async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    if (e.isDirectory) out.push(...await listTree(join(dir, e.name), rel + "/"));
    else out.push(rel);
  }
  return out.sort();
}

Deno.test("pullModel() fills the cache in huggingface_hub's layout", async () => {
  await using hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub, { token: TOKEN });
  const progress: PullProgress[] = [];
  const snap = await pullModel(REPO, { settings: c.settings, onProgress: (p) => progress.push(p) });
  const commit = hub.commitOf(REPO);
  equal(snap, join(c.repoDir, "snapshots", commit));
  equal(await Deno.readTextFile(join(c.repoDir, "refs", "main")), commit, "refs/main holds the commit, no newline");

  const files = smallModelFiles();
  const modelSha = sha256Hex(files["model.safetensors"] as Uint8Array);
  const configSha1 = gitBlobSha1(new TextEncoder().encode(files["config.json"] as string));
  for (const name of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
    const bytes = new TextEncoder().encode(files[name] as string);
    equal(await Deno.readLink(join(snap, name)), `../../blobs/${gitBlobSha1(bytes)}`, `${name} is a relative link`);
  }
  equal(await Deno.readLink(join(snap, "model.safetensors")), `../../blobs/${modelSha}`);
  const blobs = await listTree(join(c.repoDir, "blobs"));
  ok(blobs.includes(modelSha) && blobs.includes(configSha1));
  ok(!blobs.some((b) => b.endsWith(".incomplete")), "no partial file left");
  deepStrictEqual(await Deno.readFile(join(snap, "model.safetensors")), files["model.safetensors"]);

  const m = await loadModelFolder(snap);
  equal(m.config.vocabSize, 32);

  const last = progress.filter((p) => p.file === "model.safetensors").at(-1)!;
  deepStrictEqual(last, {
    file: "model.safetensors",
    done: last.total,
    total: (files["model.safetensors"] as Uint8Array).length,
  });

  // The token went to the hub's resolve URLs and never to the storage host it redirected to.
  const hubReqs = hub.requests.filter((r) => r.server === "hub");
  const storageReqs = hub.requests.filter((r) => r.server === "storage");
  ok(hubReqs.length >= 5 && hubReqs.every((r) => r.authorization === `Bearer ${TOKEN}`));
  equal(storageReqs.length, 1);
  equal(storageReqs[0].authorization, null);
  // Every file after config.json was asked for at the commit, not at "main".
  ok(hubReqs.slice(1).every((r) => r.path.includes(`/resolve/${commit}/`)));
});

Deno.test("pullModel() sends HF_TOKEN to a gated repo and says when it is missing or refused", async (t) => {
  await using hub = HubServer.start([repoSpec({ token: TOKEN })]);
  await t.step("no token", async () => {
    await using c = await cacheFor(hub);
    await rejectsWith(
      () => pullModel(REPO, { settings: c.settings }),
      "hub",
      /repo test-org\/tiny-llama needs authentication: set HF_TOKEN .*HTTP 401/,
    );
  });
  await t.step("wrong token: refused, and the token is not in the message", async () => {
    await using c = await cacheFor(hub, { token: "hf_wrongTOKEN999" });
    const err = await rejectsWith(() => pullModel(REPO, { settings: c.settings }), "hub", /the hub refused HF_TOKEN/);
    ok(!err.message.includes("hf_wrongTOKEN999"));
  });
  await t.step("right token", async () => {
    await using c = await cacheFor(hub, { token: TOKEN });
    const snap = await pullModel(REPO, { settings: c.settings });
    await loadModelFolder(snap);
  });
});

Deno.test("pullModel() resumes an interrupted download with Range", async () => {
  await using hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub);
  const model = smallModelFiles()["model.safetensors"] as Uint8Array;
  const sha = sha256Hex(model);
  hub.mode.cutAfter = 1000;
  await rejectsWith(
    () => pullModel(REPO, { settings: c.settings }),
    "hub",
    /download of test-org\/tiny-llama\/model\.safetensors interrupted after 1000 of \d+ bytes .*run again to resume/,
  );
  const partial = join(c.repoDir, "blobs", `${sha}.incomplete`);
  equal((await Deno.stat(partial)).size, 1000, "the bytes received are kept");
  const snapDir = join(c.repoDir, "snapshots", hub.commitOf(REPO));
  ok(!(await listTree(snapDir)).includes("model.safetensors"), "no snapshot link to a partial blob");

  const snap = await pullModel(REPO, { settings: c.settings });
  const storage = hub.requests.filter((r) => r.server === "storage");
  deepStrictEqual(storage.map((r) => r.range), [null, "bytes=1000-"]);
  deepStrictEqual(await Deno.readFile(join(snap, "model.safetensors")), model);
  ok(!(await listTree(join(c.repoDir, "blobs"))).some((b) => b.endsWith(".incomplete")));
});

Deno.test("pullModel() rejects corrupt bytes by sha256 and keeps nothing of them", async () => {
  await using hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub);
  hub.mode.corrupt = true;
  await rejectsWith(
    () => pullModel(REPO, { settings: c.settings }),
    "hub",
    /model\.safetensors: the downloaded bytes do not match the hub's sha256 \(got [0-9a-f]{64}, expected [0-9a-f]{64}\)/,
  );
  const blobs = await listTree(join(c.repoDir, "blobs"));
  const sha = sha256Hex(smallModelFiles()["model.safetensors"] as Uint8Array);
  ok(!blobs.includes(sha) && !blobs.includes(`${sha}.incomplete`), "neither blob nor partial file");
  ok(!(await listTree(join(c.repoDir, "snapshots"))).some((f) => f.endsWith("model.safetensors")));
  hub.mode.corrupt = false;
  await loadModelFolder(await pullModel(REPO, { settings: c.settings }));
});

Deno.test("pullModel() reports what was not found", async (t) => {
  const noTokenizer = smallModelFiles();
  delete noTokenizer["tokenizer.json"];
  await using hub = HubServer.start([repoSpec(), { id: "test-org/no-tok", files: noTokenizer }]);
  await using c = await cacheFor(hub);
  await t.step("unknown repo", async () => {
    await rejectsWith(
      () => pullModel("test-org/nope", { settings: c.settings }),
      "hub",
      /repo test-org\/nope not found on http:\/\/127\.0\.0\.1:\d+/,
    );
  });
  await t.step("unknown revision", async () => {
    await rejectsWith(
      () => pullModel(REPO, { settings: c.settings, revision: "v9" }),
      "hub",
      /revision v9 not found in repo test-org\/tiny-llama/,
    );
  });
  await t.step("missing required file", async () => {
    await rejectsWith(
      () => pullModel("test-org/no-tok", { settings: c.settings }),
      "hub",
      /file tokenizer\.json not found in repo test-org\/no-tok/,
    );
  });
});

Deno.test("pullModel() handles shards and records a missing generation_config.json", async () => {
  const files = smallModelFiles({ sharded: true, generationConfig: false });
  const lfs = Object.keys(files).filter((f) => f.endsWith(".safetensors"));
  await using hub = HubServer.start([repoSpec({ files, lfs })]);
  await using c = await cacheFor(hub);
  const snap = await pullModel(REPO, { settings: c.settings });
  const commit = hub.commitOf(REPO);
  deepStrictEqual(await listTree(snap), [
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  deepStrictEqual(await listTree(join(c.repoDir, ".no_exist", commit)), [
    "generation_config.json",
    "model.safetensors",
  ]);
  const m = await loadModelFolder(snap);
  equal(m.generationConfig, null);
});

Deno.test("pullModel() works offline from a complete cache", async (t) => {
  const hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub);
  const snap = await pullModel(REPO, { settings: c.settings });
  await t.step("HF_HUB_OFFLINE: no request at all", async () => {
    const before = hub.requests.length;
    equal(await pullModel(REPO, { settings: { ...c.settings, offline: true } }), snap);
    equal(hub.requests.length, before);
  });
  await t.step("hub unreachable: the cached snapshot", async () => {
    await hub.close();
    equal(await pullModel(REPO, { settings: c.settings }), snap);
  });
  await t.step("hub unreachable and nothing cached: one clear line", async () => {
    await rejectsWith(
      () => pullModel("test-org/other", { settings: c.settings }),
      "hub",
      /cannot reach http:\/\/127\.0\.0\.1:\d+ .*and the cache has no complete copy of test-org\/other@main/,
    );
  });
  await t.step("offline with an incomplete snapshot", async () => {
    await Deno.remove(join(snap, "tokenizer.json"));
    await rejectsWith(
      () => pullModel(REPO, { settings: { ...c.settings, offline: true } }),
      "hub",
      /HF_HUB_OFFLINE is set and the cache .* has no complete copy of test-org\/tiny-llama@main/,
    );
  });
});

Deno.test("pullModel() reuses a snapshot laid out by Python's huggingface_hub", async () => {
  await using hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub);
  // Lay the cache out by hand as hf_hub_download would: blobs by etag, relative links, refs/main.
  const commit = hub.commitOf(REPO);
  const files = smallModelFiles();
  for (const [name, v] of Object.entries(files)) {
    const bytes = typeof v === "string" ? new TextEncoder().encode(v) : v;
    const etag = name === "model.safetensors" ? sha256Hex(bytes) : gitBlobSha1(bytes);
    await Deno.mkdir(join(c.repoDir, "blobs"), { recursive: true });
    await Deno.writeFile(join(c.repoDir, "blobs", etag), bytes);
    await Deno.mkdir(join(c.repoDir, "snapshots", commit), { recursive: true });
    await Deno.symlink(`../../blobs/${etag}`, join(c.repoDir, "snapshots", commit, name));
  }
  await Deno.mkdir(join(c.repoDir, "refs"));
  await Deno.writeTextFile(join(c.repoDir, "refs", "main"), commit);
  const snap = await pullModel(REPO, { settings: c.settings });
  equal(snap, join(c.repoDir, "snapshots", commit));
  ok(hub.requests.every((r) => r.method === "HEAD"), "only metadata requests: nothing downloaded again");
});

Deno.test("pullModel() follows a relative redirect of a renamed repo", async () => {
  await using hub = HubServer.start([repoSpec()]);
  hub.renamed["old-org/tiny-llama"] = REPO;
  await using c = await cacheFor(hub);
  const snap = await pullModel("old-org/tiny-llama", { settings: c.settings });
  await loadModelFolder(snap);
  ok(hub.requests.some((r) => r.path.startsWith("/old-org/")));
});

Deno.test("pullModel() says the disk is full and leaves nothing outside .incomplete", {
  ignore: !(() => {
    try {
      return Deno.statSync("/dev/full").isCharDevice;
    } catch {
      return false;
    }
  })(),
}, async () => {
  await using hub = HubServer.start([repoSpec()]);
  await using c = await cacheFor(hub);
  const sha = sha256Hex(smallModelFiles()["model.safetensors"] as Uint8Array);
  // /dev/full fails every write with ENOSPC: standing in for the partial file, it is a disk that just filled up.
  await Deno.mkdir(join(c.repoDir, "blobs"), { recursive: true });
  await Deno.symlink("/dev/full", join(c.repoDir, "blobs", `${sha}.incomplete`));
  await rejectsWith(
    () => pullModel(REPO, { settings: c.settings }),
    "disk",
    new RegExp(`^disk full while writing .*blobs/${sha}\\.incomplete$`),
  );
  ok(!(await listTree(join(c.repoDir, "blobs"))).includes(sha));
  ok(!(await listTree(join(c.repoDir, "snapshots"))).some((f) => f.endsWith("model.safetensors")));
});

Deno.test("pullModel() never puts HF_TOKEN in a thrown message", async () => {
  await using hub = HubServer.start([repoSpec({ token: "hf_otherTOKEN" })]);
  const messages: string[] = [];
  for (const settings of [{ token: TOKEN }, { token: TOKEN, endpoint: "http://127.0.0.1:9" }]) {
    await using c = await cacheFor(hub, settings);
    for (const repo of [REPO, "test-org/missing", "bad repo"]) {
      try {
        await pullModel(repo, { settings: c.settings });
        messages.push("no error");
      } catch (err) {
        ok(err instanceof MkError);
        messages.push(err.message);
      }
    }
  }
  equal(messages.length, 6);
  ok(messages.every((m) => m !== "no error" && !m.includes(TOKEN)), messages.join("\n"));
});

Deno.test("hubSettingsFromEnv() reads the HF_* variables and huggingface_hub's cache order", () => {
  const names = ["HF_ENDPOINT", "HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "HF_HUB_OFFLINE"];
  const saved = names.map((n) => Deno.env.get(n));
  try {
    for (const n of names) Deno.env.delete(n);
    Deno.env.set("HF_ENDPOINT", "http://mirror.example/");
    Deno.env.set("HF_HOME", "/tmp/hfhome");
    Deno.env.set("HF_HUB_OFFLINE", "1");
    let s = hubSettingsFromEnv();
    deepStrictEqual([s.endpoint, s.cacheDir, s.offline, s.token], [
      "http://mirror.example",
      "/tmp/hfhome/hub",
      true,
      undefined,
    ]);
    Deno.env.set("HF_HUB_CACHE", "/tmp/hubcache");
    Deno.env.set("HF_TOKEN", "hf_x");
    Deno.env.set("HF_HUB_OFFLINE", "0");
    s = hubSettingsFromEnv();
    deepStrictEqual([s.cacheDir, s.offline, s.token], ["/tmp/hubcache", false, "hf_x"]);
  } finally {
    names.forEach((n, i) => saved[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, saved[i]!));
  }
  notEqual(hubSettingsFromEnv().endpoint, "");
});
