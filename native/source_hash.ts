/**
 * The identity of the native sources: sha256 over every native/**\/*.{c,h,cu,cuh} (sorted relative paths, each path
 * and its contents), excluding native/build/ and native/prebuilt/. The build stamps libraries with it and the engine's
 * library discovery uses it to accept a prebuilt library only when it was built from the sources in this tree.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

/** Absolute path of the native/ folder (this file's folder). */
export const NATIVE_DIR: string = fileURLToPath(new URL(".", import.meta.url));

const SOURCE_EXTENSIONS = [".c", ".h", ".cu", ".cuh"];
const EXCLUDED_DIRS = new Set(["build", "prebuilt"]);

/** Relative (forward-slash) paths of the native sources under `root`, sorted. */
export async function nativeSourceFiles(root: string = NATIVE_DIR): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string, top: boolean): Promise<void> {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (top && EXCLUDED_DIRS.has(entry.name)) continue;
        await walk(full, false);
      } else if (entry.isFile() && SOURCE_EXTENSIONS.some((ext) => entry.name.endsWith(ext))) {
        out.push(relative(root, full).split(sep).join("/"));
      }
    }
  }
  await walk(root, true);
  return out.sort();
}

/** sha256 (hex) of the native sources: each sorted relative path, a NUL, its bytes, a NUL. */
export async function nativeSourceHash(root: string = NATIVE_DIR): Promise<string> {
  const hash = createHash("sha256");
  for (const rel of await nativeSourceFiles(root)) {
    hash.update(rel);
    hash.update("\0");
    hash.update(await readFile(join(root, rel)));
    hash.update("\0");
  }
  return hash.digest("hex");
}
