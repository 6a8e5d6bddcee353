/**
 * Pulling a model from the Hugging Face Hub, speaking the protocol as the Python huggingface_hub library does and
 * filling the same cache (hf_cache.ts), so that either tool reuses what the other downloaded.
 *
 * Per file: `HEAD {HF_ENDPOINT}/{repo}/resolve/{revision}/{file}` (Authorization: Bearer $HF_TOKEN when set) gives
 * X-Repo-Commit, the ETag (X-Linked-Etag for LFS files, whose HEAD is a 302 to the storage URL) and the size
 * (X-Linked-Size or Content-Length). The HEAD follows redirects that stay on the same host (renamed repos); a
 * Location on another host (the storage) is where the GET goes, and its answer carries the metadata. The GET follows redirects itself and sends the token only to the hub's own origin,
 * never to the storage host. The first HEAD (config.json at the requested revision) fixes the commit; every other
 * file is fetched at that commit, so one pull never mixes two versions of a repo.
 *
 * A blob is downloaded into blobs/<etag>.incomplete (resumed with `Range: bytes=N-` after an interruption), its
 * sha256 checked against the etag when the etag is one (LFS files), and only then renamed into place and linked
 * from snapshots/<commit>/. A mismatch deletes the .incomplete. Offline (HF_HUB_OFFLINE=1, or the hub unreachable
 * or failing with 5xx/429) a complete cached snapshot of the revision is used instead.
 *
 * HF_TOKEN is sent in the Authorization header and nowhere else: every error leaving pullModel is scrubbed of it.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { join } from "node:path";
import { MkError, reasonOf } from "./errors.ts";
import {
  blobLockPath,
  diskError,
  findCompleteSnapshot,
  hubCacheDir,
  linkSnapshotFile,
  markMissing,
  pathExists,
  repoCacheDir,
  writeRef,
} from "./hf_cache.ts";

/** Progress of one file's download: `done` of `total` bytes (total 0 when the hub did not say). */
export interface PullProgress {
  file: string;
  done: number;
  total: number;
}

/** Options of pullModel. */
export interface PullOptions {
  /** Branch, tag or commit; "main" by default. */
  revision?: string;
  /** Called as bytes arrive (at most every 100 ms per file, and once when a file is complete). */
  onProgress?: (p: PullProgress) => void;
  /** Aborts the pull; a partial blob stays as .incomplete and the next pull resumes it. */
  signal?: AbortSignal;
  /** Settings that replace what the environment says (tests, embedders); see hubSettingsFromEnv. */
  settings?: Partial<HubSettings>;
}

/** Everything the pull takes from the environment. */
export interface HubSettings {
  /** $HF_ENDPOINT or https://huggingface.co, without a trailing slash. */
  endpoint: string;
  /** $HF_TOKEN (undefined when unset or empty). Sent as a bearer token to the endpoint's origin only. */
  token: string | undefined;
  /** The hub cache folder (hf_cache.ts hubCacheDir). */
  cacheDir: string;
  /** $HF_HUB_OFFLINE is true ("1", "on", "yes", "true"): use the cache only. */
  offline: boolean;
  /** $HF_HUB_ETAG_TIMEOUT: seconds to wait for the answer to a HEAD (default 10). */
  etagTimeoutS: number;
  /** $HF_HUB_DOWNLOAD_TIMEOUT: seconds (default 10); a transfer with no data for 3× this long is interrupted. */
  downloadTimeoutS: number;
}

/** The hub could not be reached or answered 5xx/429: the cache may stand in for it. */
class HubUnreachable extends MkError {
  constructor(message: string) {
    super("hub", message);
  }
}

/** The hub says the file does not exist (404 EntryNotFound): optional files may be skipped. */
class EntryMissing extends MkError {
  constructor(message: string) {
    super("hub", message);
  }
}

interface Ctx extends HubSettings {
  repo: string;
  repoDir: string;
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
}

interface FileMeta {
  commit: string;
  etag: string;
  size: number | null;
  location: string;
}

function envSeconds(name: string, fallback: number): number {
  const v = Number(Deno.env.get(name));
  return Number.isFinite(v) && v > 0 ? v : fallback;
}

function isTrue(v: string | undefined): boolean {
  return v !== undefined && ["1", "on", "yes", "true"].includes(v.trim().toLowerCase());
}

/** Reads the hub settings from the environment (see HubSettings for each variable). */
export function hubSettingsFromEnv(): HubSettings {
  return {
    endpoint: (Deno.env.get("HF_ENDPOINT") || "https://huggingface.co").replace(/\/+$/, ""),
    token: Deno.env.get("HF_TOKEN") || undefined,
    cacheDir: hubCacheDir(),
    offline: isTrue(Deno.env.get("HF_HUB_OFFLINE")),
    etagTimeoutS: envSeconds("HF_HUB_ETAG_TIMEOUT", 10),
    downloadTimeoutS: envSeconds("HF_HUB_DOWNLOAD_TIMEOUT", 10),
  };
}

/** The resolve URL of a file, quoted as huggingface_hub quotes it (the revision as one path segment). */
export function resolveUrl(endpoint: string, repo: string, revision: string, file: string): string {
  const path = file.split("/").map(encodeURIComponent).join("/");
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${path}`;
}

function normalizeEtag(raw: string | null): string | null {
  if (!raw) return null;
  return raw.replace(/^W\//, "").replace(/^"|"$/g, "");
}

// ---- HTTP ----------------------------------------------------------------------------------------------------------

function headersFor(ctx: Ctx, url: string, extra: Record<string, string> = {}): Headers {
  const h = new Headers({ "user-agent": "mkchat/0.1.0", "accept-encoding": "identity", ...extra });
  // The token goes to the hub's own origin only: storage redirects carry their own signed authorisation.
  if (ctx.token && new URL(url).origin === new URL(ctx.endpoint).origin) h.set("authorization", `Bearer ${ctx.token}`);
  return h;
}

async function send(ctx: Ctx, url: string, init: RequestInit, timeoutS: number): Promise<Response> {
  const signals = [AbortSignal.timeout(timeoutS * 1000)];
  if (ctx.signal) signals.push(ctx.signal);
  try {
    return await fetch(url, { ...init, redirect: "manual", signal: AbortSignal.any(signals) });
  } catch (err) {
    if (ctx.signal?.aborted) throw new MkError("hub", `pull of ${ctx.repo} cancelled`);
    const why = err instanceof DOMException && err.name === "TimeoutError"
      ? `no answer in ${timeoutS} s`
      : reasonOf(err);
    throw new HubUnreachable(`cannot reach ${new URL(url).origin} (${why})`);
  }
}

function isRedirect(status: number): boolean {
  return [301, 302, 303, 307, 308].includes(status);
}

function httpError(ctx: Ctx, res: Response, file: string, revision: string): MkError {
  const s = res.status;
  const code = res.headers.get("x-error-code");
  const repo = ctx.repo;
  if (s === 401 || s === 403) {
    if (code === "GatedRepo") {
      return new MkError(
        "hub",
        ctx.token
          ? `repo ${repo} is gated and HF_TOKEN has no access to it (HTTP ${s}): request access on its hub page`
          : `repo ${repo} is gated: accept its terms on the hub and set HF_TOKEN (HTTP ${s})`,
      );
    }
    if (code === "RepoNotFound") {
      return new MkError(
        "hub",
        ctx.token
          ? `repo ${repo} not found on ${ctx.endpoint}, or HF_TOKEN cannot see it (HTTP ${s})`
          : `repo ${repo} not found on ${ctx.endpoint} (if it is private or gated, set HF_TOKEN) (HTTP ${s})`,
      );
    }
    return new MkError(
      "hub",
      ctx.token
        ? `the hub refused HF_TOKEN for repo ${repo} (HTTP ${s}): check that the token can read it`
        : `repo ${repo} needs authentication: set HF_TOKEN to a token that can read it (HTTP ${s})`,
    );
  }
  if (s === 404) {
    if (code === "RevisionNotFound") return new MkError("hub", `revision ${revision} not found in repo ${repo}`);
    if (code === "RepoNotFound") return new MkError("hub", `repo ${repo} not found on ${ctx.endpoint}`);
    return new EntryMissing(`file ${file} not found in repo ${repo} at ${revision} (HTTP 404)`);
  }
  if (s >= 500 || s === 429) return new HubUnreachable(`${ctx.endpoint} answered HTTP ${s} for ${repo}/${file}`);
  return new MkError("hub", `${ctx.endpoint} answered HTTP ${s} for ${repo}/${file} at ${revision}`);
}

/** HEAD of a file: its commit, etag, size and the URL to GET. */
async function headFile(ctx: Ctx, revision: string, file: string): Promise<FileMeta> {
  let url = resolveUrl(ctx.endpoint, ctx.repo, revision, file);
  const timeout = ctx.etagTimeoutS;
  for (let hop = 0; hop < 10; hop++) {
    const res = await send(ctx, url, { method: "HEAD", headers: headersFor(ctx, url) }, timeout);
    await res.body?.cancel();
    const location = res.headers.get("location");
    if (isRedirect(res.status) && location && new URL(location, url).hostname === new URL(url).hostname) {
      url = new URL(location, url).href; // same host: the repo was renamed or moved, ask again there
      continue;
    }
    if (!res.ok && !(isRedirect(res.status) && location)) throw httpError(ctx, res, file, revision);
    const commit = res.headers.get("x-repo-commit");
    const etag = normalizeEtag(res.headers.get("x-linked-etag") ?? res.headers.get("etag"));
    const sizeText = res.headers.get("x-linked-size") ?? res.headers.get("content-length");
    if (!commit || !etag) {
      throw new MkError(
        "hub",
        `${url}: no X-Repo-Commit or ETag in the answer (is ${ctx.endpoint} a Hugging Face hub?)`,
      );
    }
    if (!/^[\w.-]+$/.test(etag)) throw new MkError("hub", `${url}: unusable ETag ${JSON.stringify(etag)}`);
    const size = sizeText !== null && /^\d+$/.test(sizeText) ? Number(sizeText) : null;
    // A regular file is fetched from the resolve URL at the commit, so that it is the version the HEAD described
    // even if the branch moves in between.
    const atCommit = url.replace(`/resolve/${encodeURIComponent(revision)}/`, `/resolve/${commit}/`);
    return { commit, etag, size, location: location ? new URL(location, url).href : atCommit };
  }
  throw new MkError("hub", `too many redirects for ${ctx.repo}/${file}`);
}

/** GET `url` from byte `start`, following redirects (the token only to the hub's origin). */
async function getFrom(ctx: Ctx, url: string, start: number, signal: AbortSignal): Promise<Response> {
  for (let hop = 0; hop < 10; hop++) {
    const headers = headersFor(ctx, url, start > 0 ? { range: `bytes=${start}-` } : {});
    let res: Response;
    try {
      res = await fetch(url, { headers, redirect: "manual", signal });
    } catch (err) {
      if (ctx.signal?.aborted) throw new MkError("hub", `pull of ${ctx.repo} cancelled`);
      throw new HubUnreachable(`cannot reach ${new URL(url).origin} (${reasonOf(err)})`);
    }
    const location = res.headers.get("location");
    if (!isRedirect(res.status) || !location) return res;
    await res.body?.cancel();
    url = new URL(location, url).href;
  }
  throw new MkError("hub", `too many redirects while downloading from ${ctx.repo}`);
}

// ---- blobs ---------------------------------------------------------------------------------------------------------

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return 0;
  }
}

async function hashExisting(hash: ReturnType<typeof createHash>, path: string, bytes: number): Promise<void> {
  if (bytes === 0) return;
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(1 << 20);
  for (let left = bytes; left > 0;) {
    const n = await f.read(buf.subarray(0, Math.min(buf.length, left)));
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    left -= n;
  }
}

/** Opens the GET of a blob from byte `start` (206), or from 0 when the server cannot resume (200, 416). */
async function openTransfer(
  ctx: Ctx,
  meta: FileMeta,
  file: string,
  start: number,
  signal: AbortSignal,
): Promise<{ res: Response; start: number }> {
  let res = await getFrom(ctx, meta.location, start, signal);
  if (res.status === 416 && start > 0) {
    // The server cannot serve from where the partial file ends: start over.
    await res.body?.cancel();
    start = 0;
    res = await getFrom(ctx, meta.location, 0, signal);
  }
  if (res.status === 200) return { res, start: 0 }; // Range ignored: the whole file comes
  const range = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "");
  if (res.status === 206 && start > 0 && range && Number(range[1]) === start) return { res, start };
  await res.body?.cancel();
  if (res.status === 206) throw new MkError("hub", `${ctx.repo}/${file}: the server resumed at the wrong byte`);
  throw httpError(ctx, res, file, meta.commit);
}

/** Downloads blob `meta.etag` into `blob` through `blob`.incomplete; resumes a partial one; verifies sha256. */
async function downloadBlob(ctx: Ctx, meta: FileMeta, blob: string, file: string): Promise<void> {
  const partial = blob + ".incomplete";
  const total = meta.size ?? 0;
  let start = await fileSize(partial);
  if (meta.size !== null && start > meta.size) start = 0;
  // A stalled transfer (no byte for this long) is an interruption like a dropped connection.
  const idleS = ctx.downloadTimeoutS * 3;
  const idle = new AbortController();
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, idle.signal]) : idle.signal;
  let timer = setTimeout(() => idle.abort(), idleS * 1000);
  let done = 0;
  const sha = /^[0-9a-f]{64}$/.test(meta.etag) ? createHash("sha256") : null;
  try {
    const opened = await openTransfer(ctx, meta, file, start, signal);
    start = done = opened.start;
    let out: Deno.FsFile;
    try {
      await Deno.mkdir(join(blob, ".."), { recursive: true });
      out = await Deno.open(partial, { write: true, create: true, append: start > 0, truncate: start === 0 });
    } catch (err) {
      await opened.res.body?.cancel();
      throw diskError(err, partial);
    }
    try {
      if (sha) await hashExisting(sha, partial, start);
      const reader = opened.res.body!.getReader();
      let lastReport = 0;
      while (true) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (ctx.signal?.aborted) throw new MkError("hub", `download of ${file} cancelled; run again to resume`);
          const why = idle.signal.aborted ? `no data for ${idleS} s` : reasonOf(err);
          throw new MkError(
            "hub",
            `download of ${ctx.repo}/${file} interrupted after ${done} of ${total} bytes (${why}); run again to resume`,
          );
        }
        if (chunk.done) break;
        clearTimeout(timer);
        timer = setTimeout(() => idle.abort(), idleS * 1000);
        try {
          for (let w = 0; w < chunk.value.length;) w += await out.write(chunk.value.subarray(w));
        } catch (err) {
          await reader.cancel().catch(() => {});
          throw diskError(err, partial);
        }
        sha?.update(chunk.value);
        done += chunk.value.length;
        if (ctx.onProgress && Date.now() - lastReport >= 100) {
          lastReport = Date.now();
          ctx.onProgress({ file, done, total });
        }
      }
    } finally {
      out.close();
    }
  } finally {
    clearTimeout(timer);
  }
  if (meta.size !== null && done < meta.size) {
    throw new MkError(
      "hub",
      `download of ${ctx.repo}/${file} interrupted after ${done} of ${meta.size} bytes (connection closed); ` +
        `run again to resume`,
    );
  }
  const digest = sha?.digest("hex");
  if ((meta.size !== null && done > meta.size) || (digest !== undefined && digest !== meta.etag)) {
    await Deno.remove(partial).catch(() => {});
    throw new MkError(
      "hub",
      `${ctx.repo}/${file}: the downloaded bytes do not match the hub's ` +
        (digest !== undefined && digest !== meta.etag ? `sha256 (got ${digest}, expected ${meta.etag})` : "size") +
        `; the partial file was deleted, run again to retry`,
    );
  }
  try {
    await Deno.rename(partial, blob);
  } catch (err) {
    throw diskError(err, blob);
  }
  ctx.onProgress?.({ file, done, total: total || done });
}

/**
 * Makes sure snapshots/<commit>/<file> exists for `meta`: reuses the link, or the blob (maybe downloaded by Python
 * for another revision), else downloads it under the blob's lock so that concurrent pulls do not fight.
 */
async function fetchFile(ctx: Ctx, meta: FileMeta, file: string): Promise<void> {
  const pointer = join(ctx.repoDir, "snapshots", meta.commit, file);
  const blob = join(ctx.repoDir, "blobs", meta.etag);
  if ((await pathExists(pointer)) && (await pathExists(blob))) {
    ctx.onProgress?.({ file, done: meta.size ?? 0, total: meta.size ?? 0 });
    return;
  }
  if (!(await pathExists(blob))) {
    const lockPath = blobLockPath(ctx.repo, meta.etag, ctx.cacheDir);
    let lock: Deno.FsFile;
    try {
      await Deno.mkdir(join(lockPath, ".."), { recursive: true });
      lock = await Deno.open(lockPath, { write: true, create: true });
      await lock.lock(true);
    } catch (err) {
      throw diskError(err, lockPath);
    }
    try {
      if (!(await pathExists(blob))) await downloadBlob(ctx, meta, blob, file);
    } finally {
      lock.close(); // closing releases the flock
    }
  } else {
    ctx.onProgress?.({ file, done: meta.size ?? 0, total: meta.size ?? 0 });
  }
  await linkSnapshotFile(pointer, blob);
}

/** HEAD + fetch of one file at `commit`; returns false (and records .no_exist) when `optional` and 404. */
async function pullFile(ctx: Ctx, commit: string, file: string, optional: boolean): Promise<boolean> {
  let meta: FileMeta;
  try {
    meta = await headFile(ctx, commit, file);
  } catch (err) {
    if (optional && err instanceof EntryMissing) {
      await markMissing(ctx.repoDir, commit, file);
      return false;
    }
    throw err;
  }
  await fetchFile(ctx, meta, file);
  return true;
}

async function shardsOf(ctx: Ctx, commit: string): Promise<string[]> {
  const path = join(ctx.repoDir, "snapshots", commit, "model.safetensors.index.json");
  let map: unknown;
  try {
    map = JSON.parse(await Deno.readTextFile(path)).weight_map;
  } catch (err) {
    throw new MkError("weights", `${path}: not a valid weights index (${reasonOf(err)})`);
  }
  const shards = new Set<string>();
  for (const v of Object.values(typeof map === "object" && map !== null ? map : {})) {
    if (typeof v !== "string" || !/^[\w.-]+\.safetensors$/.test(v)) {
      throw new MkError("weights", `${path}: weight_map names ${JSON.stringify(v)}, not a .safetensors file name`);
    }
    shards.add(v);
  }
  if (shards.size === 0) throw new MkError("weights", `${path}: empty weight_map`);
  return [...shards];
}

async function pull(ctx: Ctx, revision: string): Promise<string> {
  const cached = () => findCompleteSnapshot(ctx.repo, revision, ctx.cacheDir);
  if (ctx.offline) {
    const dir = await cached();
    if (dir) return dir;
    throw new MkError(
      "hub",
      `HF_HUB_OFFLINE is set and the cache ${ctx.repoDir} has no complete copy of ${ctx.repo}@${revision}`,
    );
  }
  let config: FileMeta;
  try {
    config = await headFile(ctx, revision, "config.json");
  } catch (err) {
    if (!(err instanceof HubUnreachable)) throw err;
    const dir = await cached();
    if (dir) return dir;
    throw new MkError("hub", `${err.message}, and the cache has no complete copy of ${ctx.repo}@${revision}`);
  }
  const commit = config.commit;
  if (!/^[0-9a-f]{40}$/.test(commit)) throw new MkError("hub", `the hub sent a bad X-Repo-Commit for ${ctx.repo}`);
  await writeRef(ctx.repoDir, revision, commit);
  await fetchFile(ctx, config, "config.json");
  await pullFile(ctx, commit, "tokenizer.json", false);
  await pullFile(ctx, commit, "tokenizer_config.json", false);
  await pullFile(ctx, commit, "generation_config.json", true);
  if (!(await pullFile(ctx, commit, "model.safetensors", true))) {
    if (!(await pullFile(ctx, commit, "model.safetensors.index.json", true))) {
      throw new MkError("hub", `repo ${ctx.repo} has neither model.safetensors nor model.safetensors.index.json`);
    }
    for (const shard of await shardsOf(ctx, commit)) await pullFile(ctx, commit, shard, false);
  }
  return join(ctx.repoDir, "snapshots", commit);
}

/**
 * Pulls the files mkchat needs of hub repo `repo` ("org/name") into the HF cache and returns the snapshot folder.
 * Files already cached (by mkchat or by Python tools) are not downloaded again. Settings come from the environment
 * (HubSettings), overridable by `opts.settings`. Throws
 * MkError ("hub", "disk", "weights") with one line that never contains the token.
 */
export async function pullModel(repo: string, opts: PullOptions = {}): Promise<string> {
  const settings = { ...hubSettingsFromEnv(), ...opts.settings };
  const token = settings.token;
  const ctx: Ctx = {
    ...settings,
    repo,
    repoDir: repoCacheDir(repo, settings.cacheDir),
    signal: opts.signal,
    onProgress: opts.onProgress,
  };
  try {
    return await pull(ctx, opts.revision ?? "main");
  } catch (err) {
    const e = err instanceof MkError ? err : new MkError("hub", `pull of ${repo} failed: ${reasonOf(err)}`);
    // Defence in depth: no path through here should put the token in a message, but make sure of it.
    if (token && e.message.includes(token)) throw new MkError(e.code, e.message.replaceAll(token, "<HF_TOKEN>"));
    throw e;
  }
}
