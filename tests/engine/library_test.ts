/**
 * engine/library.ts: the discovery order, the prebuilt library's source-hash check, and the one-line messages for a
 * missing library, a file that is not a library, and a library of another ABI version.
 */

import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { MkError } from "../../engine/errors.ts";
import { MK_ABI_VERSION, SYMBOLS } from "../../engine/ffi.ts";
import { BUILD_LIBRARY_PATH, findLibraryPath, loadLibrary, openLibraryAt } from "../../engine/library.ts";
import { nativeSourceHash } from "../../native/source_hash.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mkchat-lib-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Compiles a shared library that exports every symbol of the table (so that dlopen succeeds) but reports ABI
 * version `version`: what an old or newer libmkchat.so looks like to this mkchat.
 */
async function buildOtherAbiLibrary(dir: string, version: number): Promise<string> {
  const lines = Object.keys(SYMBOLS).map((name) =>
    name === "mk_abi_version" ? `int mk_abi_version(void) { return ${version}; }` : `int ${name}(void) { return 0; }`
  );
  await Deno.writeTextFile(`${dir}/other.c`, lines.join("\n") + "\n");
  const out = await new Deno.Command("cc", {
    args: ["-shared", "-fPIC", "-o", `${dir}/libother.so`, `${dir}/other.c`],
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return `${dir}/libother.so`;
}

Deno.test("findLibraryPath() prefers MKCHAT_LIB, then the build folder", async () => {
  await withTempDir(async (dir) => {
    const lib = `${dir}/libmine.so`;
    await Deno.writeTextFile(lib, "");
    assertEquals(await findLibraryPath({ MKCHAT_LIB: lib }), lib);
  });
  assertEquals(await findLibraryPath({}), BUILD_LIBRARY_PATH);
});

Deno.test("findLibraryPath() names a missing MKCHAT_LIB file", async () => {
  const err = await assertRejects(() => findLibraryPath({ MKCHAT_LIB: "/nonexistent/libmkchat.so" }), MkError);
  assertEquals(err.code, "native");
  assertEquals(err.message, "MKCHAT_LIB=/nonexistent/libmkchat.so: no such file");
});

Deno.test("findLibraryPath() tells the user to run `deno task build` when there is no library", async () => {
  await withTempDir(async (dir) => {
    const where = {
      build: `${dir}/build/libmkchat.so`,
      prebuilt: `${dir}/pre/libmkchat.so`,
      manifest: `${dir}/m.json`,
    };
    const err = await assertRejects(() => findLibraryPath({}, where), MkError);
    assertEquals(err.code, "native");
    assert(err.message.includes("run `deno task build`"), err.message);
    assert(err.message.includes(where.build), err.message);
  });
});

Deno.test({
  name: "findLibraryPath() uses the prebuilt library only when its manifest matches the sources",
  ignore: Deno.build.os !== "linux" || Deno.build.arch !== "x86_64",
  async fn() {
    await withTempDir(async (dir) => {
      const where = { build: `${dir}/build/libmkchat.so`, prebuilt: `${dir}/libmkchat.so`, manifest: `${dir}/m.json` };
      await Deno.writeTextFile(where.prebuilt, "");
      await Deno.writeTextFile(where.manifest, JSON.stringify({ source_sha256: "0".repeat(64) }));
      const err = await assertRejects(() => findLibraryPath({}, where), MkError);
      assert(err.message.includes("other native sources"), err.message);
      await Deno.writeTextFile(where.manifest, JSON.stringify({ source_sha256: await nativeSourceHash() }));
      assertEquals(await findLibraryPath({}, where), where.prebuilt);
    });
  },
});

Deno.test("openLibraryAt() names a file that is not a library", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/libbroken.so`;
    await Deno.writeTextFile(path, "this is not an ELF file");
    const err = assertThrows(() => openLibraryAt(path), MkError);
    assertEquals(err.code, "native");
    assert(err.message.startsWith(`cannot open native library ${path}: `), err.message);
    assert(!err.message.includes("\n"));
  });
});

Deno.test("openLibraryAt() names both ABI versions and the path on a mismatch", async () => {
  await withTempDir(async (dir) => {
    const path = await buildOtherAbiLibrary(dir, MK_ABI_VERSION + 1);
    const err = assertThrows(() => openLibraryAt(path), MkError);
    assertEquals(err.code, "native");
    assert(err.message.includes(path), err.message);
    assert(err.message.includes(`ABI version ${MK_ABI_VERSION + 1}`), err.message);
    assert(err.message.includes(`needs ${MK_ABI_VERSION}`), err.message);
  });
});

Deno.test("loadLibrary() opens the built library once and reports its build info", async () => {
  const a = await loadLibrary();
  const b = await loadLibrary();
  assert(a === b);
  assert(a.buildInfo.startsWith("mkchat"), a.buildInfo);
});
