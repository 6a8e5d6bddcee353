/**
 * Finding and opening the native library, in this order:
 *
 * 1. `MKCHAT_LIB` — an explicit path (an error if it cannot be opened; no fallback);
 * 2. `native/build/libmkchat.so` — what `deno task build` makes;
 * 3. `native/prebuilt/linux-x64/libmkchat.so` — only when `manifest.json` beside it records the sha256 of exactly
 *    the native sources in this checkout (`nativeSourceHash()`), so a stale binary is never picked up silently.
 *
 * Paths are relative to the repository (this file's location), never to the working directory. The opened library
 * must report `mk_abi_version() == MK_ABI_VERSION`.
 *
 * @module
 */

import { nativeSourceHash } from "../native/source_hash.ts";
import { MkError } from "./errors.ts";
import { MK_ABI_VERSION, type MkLibrary, readCPointer, SYMBOLS } from "./ffi.ts";

/** The repository root, as a file URL ending in "/". */
const REPO_ROOT = new URL("../", import.meta.url);

/** Where `deno task build` writes the library. */
export const BUILD_LIBRARY_PATH = new URL("native/build/libmkchat.so", REPO_ROOT).pathname;
/** The committed prebuilt library (linux x86-64). */
export const PREBUILT_LIBRARY_PATH = new URL("native/prebuilt/linux-x64/libmkchat.so", REPO_ROOT).pathname;
/** The manifest of the prebuilt library: `{ "source_sha256": "<hex>" , … }`. */
export const PREBUILT_MANIFEST_PATH = new URL("native/prebuilt/linux-x64/manifest.json", REPO_ROOT).pathname;

/** An opened, ABI-checked native library. */
export interface NativeLibrary {
  /** The symbol table (`lib.symbols.mk_*`). */
  lib: MkLibrary;
  /** The file it was opened from. */
  path: string;
  /** `mk_build_info()`, e.g. "mkchat 0.1.0 cpu src=…". */
  buildInfo: string;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Where findLibraryPath() looks after MKCHAT_LIB (the repository's paths unless a test points elsewhere). */
export interface LibraryLocations {
  /** The build output. */
  build: string;
  /** The prebuilt library. */
  prebuilt: string;
  /** Its manifest.json. */
  manifest: string;
}

const REPO_LOCATIONS: LibraryLocations = {
  build: BUILD_LIBRARY_PATH,
  prebuilt: PREBUILT_LIBRARY_PATH,
  manifest: PREBUILT_MANIFEST_PATH,
};

/** Why the prebuilt library cannot be used, or null when it can. */
async function prebuiltProblem(where: LibraryLocations): Promise<string | null> {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return "no prebuilt library for this platform";
  if (!await isFile(where.prebuilt)) return `no ${where.prebuilt}`;
  let recorded: unknown;
  try {
    recorded = JSON.parse(await Deno.readTextFile(where.manifest))?.source_sha256;
  } catch {
    return `the prebuilt library has no readable ${where.manifest}`;
  }
  if (recorded !== await nativeSourceHash()) {
    return "the prebuilt library was built from other native sources than this checkout's";
  }
  return null;
}

/**
 * The path of the library to open, by the order in the module comment; throws MkError("native") telling the user to
 * run `deno task build` when there is none.
 */
export async function findLibraryPath(
  env: { MKCHAT_LIB?: string } = { MKCHAT_LIB: Deno.env.get("MKCHAT_LIB") },
  where: LibraryLocations = REPO_LOCATIONS,
): Promise<string> {
  if (env.MKCHAT_LIB) {
    if (!await isFile(env.MKCHAT_LIB)) {
      throw new MkError("native", `MKCHAT_LIB=${env.MKCHAT_LIB}: no such file`);
    }
    return env.MKCHAT_LIB;
  }
  if (await isFile(where.build)) return where.build;
  const problem = await prebuiltProblem(where);
  if (problem === null) return where.prebuilt;
  throw new MkError(
    "native",
    `native library not found: no ${where.build} (and ${problem}); run \`deno task build\` or set MKCHAT_LIB`,
  );
}

/**
 * Opens the library at `path` and checks its ABI version; throws MkError("native") naming the file when it cannot be
 * opened, or naming both versions when they differ.
 */
export function openLibraryAt(path: string): NativeLibrary {
  let lib: MkLibrary;
  try {
    lib = Deno.dlopen(path, SYMBOLS);
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new MkError("native", `cannot open native library ${path}: ${why}`);
  }
  const version = lib.symbols.mk_abi_version();
  if (version !== MK_ABI_VERSION) {
    lib.close();
    throw new MkError(
      "native",
      `native library ${path} has ABI version ${version}, this mkchat needs ${MK_ABI_VERSION}; ` +
        "run `deno task build` to rebuild it",
    );
  }
  return { lib, path, buildInfo: readCPointer(lib.symbols.mk_build_info()) };
}

let opened: Promise<NativeLibrary> | null = null;

/**
 * The process's native library, found and opened once (later calls share it; a failure is not cached, so a library
 * built in the meantime is found on the next call).
 */
export function loadLibrary(): Promise<NativeLibrary> {
  if (opened === null) {
    opened = findLibraryPath().then(openLibraryAt);
    opened.catch(() => opened = null);
  }
  return opened;
}
