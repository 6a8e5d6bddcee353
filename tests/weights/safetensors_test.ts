import { deepStrictEqual, equal } from "node:assert/strict";
import { join } from "node:path";
import { encodeSafetensorsHeader, readSafetensors } from "../../weights/safetensors.ts";
import { rawSafetensors, rejectsWith, safetensorsBytes } from "./_fixtures.ts";

async function withFile(bytes: Uint8Array, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mkchat-st-" });
  try {
    const path = join(dir, "model.safetensors");
    await Deno.writeFile(path, bytes);
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("readSafetensors() returns absolute offsets, sizes, dtypes and shapes", async () => {
  const specs = [
    { name: "a", dtype: "BF16" as const, shape: [3, 5] },
    { name: "b", dtype: "F32" as const, shape: [7] },
    { name: "c", dtype: "F16" as const, shape: [2, 2] },
  ];
  const bytes = safetensorsBytes(specs);
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  equal(headerLen % 8, 0, "the encoder pads the header to 8 bytes");
  await withFile(bytes, async (path) => {
    const entries = await readSafetensors(path);
    deepStrictEqual(entries, [
      { name: "a", path, offset: 8 + headerLen, nbytes: 30, dtype: "BF16", shape: [3, 5] },
      { name: "b", path, offset: 8 + headerLen + 30, nbytes: 28, dtype: "F32", shape: [7] },
      { name: "c", path, offset: 8 + headerLen + 58, nbytes: 8, dtype: "F16", shape: [2, 2] },
    ]);
    // The offsets point at the data: the fixture writes byte (i * 31 + 1) at data index i.
    const data = await Deno.readFile(path);
    equal(data[entries[1].offset], (30 * 31 + 1) & 0xff);
  });
});

Deno.test("readSafetensors() reports a missing file", async () => {
  await rejectsWith(
    () => readSafetensors("/nonexistent/model.safetensors"),
    "weights",
    /weights file not found: \/nonexistent/,
  );
});

Deno.test("readSafetensors() detects a truncated file", async (t) => {
  const whole = safetensorsBytes([{ name: "w", dtype: "BF16", shape: [64, 64] }]);
  await t.step("data cut short", async () => {
    await withFile(whole.subarray(0, whole.length - 100), async (path) => {
      await rejectsWith(() => readSafetensors(path), "weights", /model\.safetensors: truncated: tensor w ends at byte/);
    });
  });
  await t.step("header cut short", async () => {
    await withFile(whole.subarray(0, 20), async (path) => {
      await rejectsWith(
        () => readSafetensors(path),
        "weights",
        /truncated: header claims \d+ bytes but the file has only 12/,
      );
    });
  });
  await t.step("shorter than the length prefix", async () => {
    await withFile(new Uint8Array(5), async (path) => {
      await rejectsWith(() => readSafetensors(path), "weights", /not a safetensors file \(only 5 bytes\)/);
    });
  });
});

Deno.test("readSafetensors() rejects a header that claims gigabytes", async () => {
  await withFile(rawSafetensors({}, 0, 5_000_000_000n), async (path) => {
    await rejectsWith(() => readSafetensors(path), "weights", /header claims 5000000000 bytes/);
  });
});

Deno.test("readSafetensors() rejects overlapping tensors", async () => {
  const header = {
    a: { dtype: "BF16", shape: [4], data_offsets: [0, 8] },
    b: { dtype: "BF16", shape: [4], data_offsets: [6, 14] },
  };
  await withFile(rawSafetensors(header, 14), async (path) => {
    await rejectsWith(() => readSafetensors(path), "weights", /tensors a and b overlap/);
  });
});

Deno.test("readSafetensors() rejects bad dtypes, shapes and offsets", async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ["F64", { dtype: "F64", shape: [2], data_offsets: [0, 16] }, /tensor x has dtype "F64"; mkchat reads BF16, F16/],
    ["unknown dtype", { dtype: "Q4", shape: [2], data_offsets: [0, 1] }, /tensor x has unknown dtype "Q4"/],
    ["size mismatch", { dtype: "BF16", shape: [3], data_offsets: [0, 8] }, /shape \[3\] of BF16 needs 6 bytes but/],
    ["bad shape", { dtype: "BF16", shape: [-1], data_offsets: [0, 2] }, /shape \[-1\] is not a list/],
    ["reversed offsets", { dtype: "BF16", shape: [0], data_offsets: [8, 0] }, /data_offsets \[8,0\] is not/],
  ];
  for (const [label, entry, re] of cases) {
    await t.step(label, async () => {
      await withFile(rawSafetensors({ x: entry }, 16), async (path) => {
        await rejectsWith(() => readSafetensors(path), "weights", re);
      });
    });
  }
  await t.step("header that is not JSON", async () => {
    const bytes = rawSafetensors({}, 0);
    bytes.set(new TextEncoder().encode("[!"), 8);
    await withFile(bytes, async (path) => {
      await rejectsWith(() => readSafetensors(path), "weights", /header is not valid UTF-8 JSON/);
    });
  });
});

Deno.test("readSafetensors() accepts __metadata__ and empty tensors", async () => {
  const { prefix } = encodeSafetensorsHeader([{ name: "e", dtype: "F32", shape: [0, 3] }], { format: "pt" });
  await withFile(prefix, async (path) => {
    const [e] = await readSafetensors(path);
    deepStrictEqual([e.name, e.nbytes, e.shape], ["e", 0, [0, 3]]);
  });
});
