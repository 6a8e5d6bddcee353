/**
 * The Hugging Face hub cache, laid out exactly as the Python huggingface_hub library lays it out, so that a model
 * pulled by Python tools is reused by mkchat and the other way round:
 *
 *   <cache>/models--<org>--<name>/
 *     blobs/<etag>                      file contents, named by the hub's ETag (sha256 for LFS files, git sha1 else)
 *     blobs/<etag>.incomplete           a download in progress (resumed with Range)
 *     snapshots/<commit>/<file>         relative symlinks to ../../blobs/<etag>
 *     refs/<revision>                   the commit a branch or tag pointed to when last resolved (no newline)
 *     .no_exist/<commit>/<file>         empty marker: the file does not exist at that commit
 *   <cache>/.locks/models--<org>--<name>/<etag>.lock   flock()ed while a blob is downloaded (as Python's filelock)
 *
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
 *
 * @module
 */

import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { isDiskFull, MkError, reasonOf } from "./errors.ts";

/** Where hub downloads live (see the module header for the order of the environment variables). */
export function hubCacheDir(): string {
  const hubCache = Deno.env.get("HF_HUB_CACHE") || Deno.env.get("HUGGINGFACE_HUB_CACHE");
  if (hubCache) return hubCache;
  const hfHome = Deno.env.get("HF_HOME");
  if (hfHome) return join(hfHome, "hub");
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return join(xdg || join(homedir(), ".cache"), "huggingface", "hub");
}

/** The folder of `repo` ("org/name" → "models--org--name") in the hub cache `cacheDir`. */
export function repoCacheDir(repo: string, cacheDir: string = hubCacheDir()): string {
  return join(cacheDir, "models--" + repo.replaceAll("/", "--"));
}

/** The lock file guarding the download of blob `etag` of `repo` in the hub cache `cacheDir`. */
export function blobLockPath(repo: string, etag: string, cacheDir: string = hubCacheDir()): string {
  return join(cacheDir, ".locks", "models--" + repo.replaceAll("/", "--"), etag + ".lock");
}

/** A commit hash as the hub writes them: 40 lower-case hex digits. */
export const COMMIT_RE = /^[0-9a-f]{40}$/;

/** Wraps a write failure into MkError("disk"), naming `path` (and saying "disk full" for ENOSPC). */
export function diskError(err: unknown, path: string): MkError {
  if (err instanceof MkError) return err;
  if (isDiskFull(err)) return new MkError("disk", `disk full while writing ${path}`);
  return new MkError("disk", `cannot write ${path}: ${reasonOf(err)}`);
}

/** True when `path` exists (following symlinks: a dangling snapshot link counts as missing). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes `text` to `path` through a temporary sibling and a rename, so that readers never see half of it. */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw diskError(err, path);
  }
}

/** Records that `revision` of the repo cached in `repoDir` is `commit` (refs/<revision>), unless it is the commit. */
export async function writeRef(repoDir: string, revision: string, commit: string): Promise<void> {
  if (revision === commit) return;
  const path = join(repoDir, "refs", revision);
  const old = await Deno.readTextFile(path).catch(() => null);
  if (old?.trim() !== commit) await writeFileAtomic(path, commit);
}

/** The commit `revision` names in the cache (itself when it is a commit hash), or null when never resolved. */
export async function readRef(repoDir: string, revision: string): Promise<string | null> {
  if (COMMIT_RE.test(revision)) return revision;
  try {
    const commit = (await Deno.readTextFile(join(repoDir, "refs", revision))).trim();
    return COMMIT_RE.test(commit) ? commit : null;
  } catch {
    return null;
  }
}

/** Makes snapshots/<commit>/<file> a relative symlink to `blob`, replacing any old link atomically. */
export async function linkSnapshotFile(pointer: string, blob: string): Promise<void> {
  const tmp = `${pointer}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.mkdir(dirname(pointer), { recursive: true });
    await Deno.symlink(relative(dirname(pointer), blob), tmp);
    await Deno.rename(tmp, pointer);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw diskError(err, pointer);
  }
}

/** Records that `file` does not exist at `commit` (.no_exist marker, as huggingface_hub does for a 404). */
export async function markMissing(repoDir: string, commit: string, file: string): Promise<void> {
  const path = join(repoDir, ".no_exist", commit, file);
  if (!(await pathExists(path))) await writeFileAtomic(path, "");
}

/** The weight files of a snapshot folder: model.safetensors, or the index and the shards it names; null if neither. */
export async function snapshotWeightFiles(dir: string): Promise<string[] | null> {
  if (await pathExists(join(dir, "model.safetensors"))) return ["model.safetensors"];
  try {
    const index = JSON.parse(await Deno.readTextFile(join(dir, "model.safetensors.index.json")));
    const shards = new Set<string>(Object.values(index.weight_map ?? {}) as string[]);
    if (shards.size === 0) return null;
    return ["model.safetensors.index.json", ...shards];
  } catch {
    return null;
  }
}

/** The files a snapshot must hold for mkchat to run it (generation_config.json is optional). */
export const REQUIRED_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json"];

/**
 * The snapshot folder of `repo` at `revision` when the cache holds everything mkchat needs (config, tokenizer files,
 * all weight files, every link resolving to a blob), else null. Reads only the local cache (`cacheDir`, by default
 * the one the environment names).
 */
export async function findCompleteSnapshot(
  repo: string,
  revision: string,
  cacheDir: string = hubCacheDir(),
): Promise<string | null> {
  const repoDir = repoCacheDir(repo, cacheDir);
  const commit = await readRef(repoDir, revision);
  if (commit === null) return null;
  const dir = join(repoDir, "snapshots", commit);
  for (const f of REQUIRED_FILES) if (!(await pathExists(join(dir, f)))) return null;
  const weights = await snapshotWeightFiles(dir);
  if (weights === null) return null;
  for (const f of weights) if (!(await pathExists(join(dir, f)))) return null;
  return dir;
}
