/**
 * The assertions the engine tests use, on node:assert (JSR's @std/assert is not reachable from every machine).
 * @module
 */

import { deepStrictEqual, ok } from "node:assert/strict";

/** Throws unless `actual` deep-equals `expected`. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  deepStrictEqual(actual, expected, message);
}

/** Throws unless `cond` is truthy. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  ok(cond, message);
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

function check<E extends Error>(e: unknown, cls?: ErrorClass<E>): E {
  if (cls && !(e instanceof cls)) throw new Error(`expected a ${cls.name}, got ${e}`);
  return e as E;
}

/** Runs `fn`, which must throw (an instance of `cls` when given); returns what it threw. */
export function assertThrows<E extends Error = Error>(fn: () => unknown, cls?: ErrorClass<E>): E {
  try {
    fn();
  } catch (e) {
    return check(e, cls);
  }
  throw new Error("expected an exception, none was thrown");
}

/** Awaits `fn()`, which must reject (with an instance of `cls` when given); returns the reason. */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  cls?: ErrorClass<E>,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return check(e, cls);
  }
  throw new Error("expected a rejection, none happened");
}
