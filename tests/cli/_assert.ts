/**
 * The few assertions the CLI tests need (JSR's @std/assert is not reachable from every machine this runs on).
 * @module
 */

/** Throws unless `actual` and `expected` are deeply equal (JSON-comparable values). */
export function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message ? message + ": " : ""}expected ${e}, got ${a}`);
}

/** Throws unless `cond` is true. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

/** Throws unless `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, message?: string): void {
  if (!re.test(text)) throw new Error(`${message ? message + ": " : ""}${JSON.stringify(text)} does not match ${re}`);
}

/** Throws if `text` matches `re`. */
export function assertNotMatch(text: string, re: RegExp, message?: string): void {
  if (re.test(text)) throw new Error(`${message ? message + ": " : ""}${JSON.stringify(text)} matches ${re}`);
}
