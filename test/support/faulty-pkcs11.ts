import { performance } from 'node:perf_hooks';
import pkcs11js from 'pkcs11js';
import { ckrName } from '../../src/hsm/pkcs11-errors.js';

/**
 * A fault-injecting wrapper around the real pkcs11js binding (a Proxy), for GrapheneHsm's `wrapPkcs11` hook: every
 * call still reaches SoftHSM, so the adapter's real recovery code runs against a real token, but some calls fail
 * with a CKR code a device or a dropped session would answer, or are slowed down. Seeded, so that a run repeats.
 */

/** The codes the issue names: what a device that fails, goes away or loses sessions and logins answers. */
export const FAULT_CODES: readonly number[] = [
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_GENERAL_ERROR,
];

/**
 * Library-wide calls (no session), never failed here: GrapheneHsm makes them at start-up and when it re-initialises,
 * and a fault there is the token directory test's business (test/api/hsm-faults.test.ts), not a session's.
 */
const NEVER_FAILED: ReadonlySet<string> = new Set([
  'C_Initialize',
  'C_Finalize',
  'C_GetInfo',
  'C_GetSlotList',
  'C_GetSlotInfo',
  'C_GetTokenInfo',
  'C_GetMechanismList',
  'C_GetMechanismInfo',
]);

/**
 * Clean-up calls fail *after* the real call: failing before it would leak the session or object on the real token,
 * which a device that answers an error on close would not (its session is gone with it); the caller still sees the
 * error.
 */
const FAILED_AFTER: ReadonlySet<string> = new Set([
  'C_CloseSession',
  'C_CloseAllSessions',
  'C_DestroyObject',
  'C_FindObjectsFinal',
]);

export interface FaultPlan {
  /** Seed of the PRNG that chooses which calls fail, with which code, and which are delayed. */
  readonly seed: number;
  /** Each eligible call fails with this probability (0 to 1). */
  readonly probability?: number;
  /** The n-th eligible call (1-based, counted from `arm`) fails, once. */
  readonly nth?: number;
  /** Only these functions may fail (default: every session call). */
  readonly functions?: readonly string[];
  /** The codes a fault answers, chosen at random among them (default FAULT_CODES); one code: always that one. */
  readonly codes?: readonly number[];
  /** The codes a fault of this function answers, when not `codes` (undefined: `codes`). */
  readonly codesFor?: (name: string) => readonly number[] | undefined;
  /** After this many faults, injection stops by itself (as `clear()`), and `clearedAt` records when. */
  readonly maxFaults?: number;
  /** Added latency, in ms, to each call (with `latencyProbability`) while armed: blocking, as a slow device is. */
  readonly latencyMs?: number;
  readonly latencyProbability?: number;
}

export interface FaultCounters {
  /** Calls made through the wrapper (all functions, armed or not). */
  readonly calls: number;
  /** Calls that could fail while armed. */
  readonly eligible: number;
  readonly faults: number;
  readonly delayed: number;
  readonly faultsByCode: ReadonlyMap<number, number>;
  readonly faultsByFunction: ReadonlyMap<string, number>;
}

/** mulberry32: tiny, seeded, good enough to choose calls; Math.random could not be replayed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A synchronous PKCS#11 call to a slow device blocks the thread: so does this. */
function blockFor(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class FaultyPkcs11 {
  #plan: FaultPlan | undefined;
  #random: () => number = seededRandom(0);
  #calls = 0;
  #eligible = 0;
  #faults = 0;
  #delayed = 0;
  readonly #byCode = new Map<number, number>();
  readonly #byFunction = new Map<string, number>();
  /** performance.now() when injection stopped (clear() or maxFaults reached); undefined while armed. */
  clearedAt: number | undefined;

  /** For GrapheneHsm's `wrapPkcs11`: the binding, seen through this injector. */
  readonly wrap = (lib: pkcs11js.PKCS11): pkcs11js.PKCS11 =>
    new Proxy(lib, {
      get: (target, name, receiver) => {
        const value: unknown = Reflect.get(target, name, receiver);
        if (typeof name !== 'string' || !name.startsWith('C_') || typeof value !== 'function') return value;
        return (...args: unknown[]) => this.#call(name, target, value as (...a: unknown[]) => unknown, args);
      },
    });

  /** Starts injecting as `plan` says, counting from zero again. */
  arm(plan: FaultPlan): void {
    this.#plan = plan;
    this.#random = seededRandom(plan.seed);
    this.#eligible = 0;
    this.#faults = 0;
    this.#delayed = 0;
    this.#byCode.clear();
    this.#byFunction.clear();
    this.clearedAt = undefined;
  }

  /** The fault clears: every call goes through untouched from now on. */
  clear(): void {
    if (this.#plan === undefined) return;
    this.#plan = undefined;
    this.clearedAt = performance.now();
  }

  get armed(): boolean {
    return this.#plan !== undefined;
  }

  get counters(): FaultCounters {
    return {
      calls: this.#calls,
      eligible: this.#eligible,
      faults: this.#faults,
      delayed: this.#delayed,
      faultsByCode: new Map(this.#byCode),
      faultsByFunction: new Map(this.#byFunction),
    };
  }

  #call(name: string, target: pkcs11js.PKCS11, real: (...a: unknown[]) => unknown, args: unknown[]): unknown {
    this.#calls++;
    const plan = this.#plan;
    if (plan === undefined) return real.apply(target, args);
    const last = args.at(-1);
    const callback = typeof last === 'function' ? (last as (err: Error | null, result?: unknown) => void) : undefined;
    const delayMs = this.#delay(plan);
    const fault = this.#fault(plan, name);
    if (callback !== undefined) {
      // An asynchronous call: the delay and the error come through its callback, as the binding's worker would.
      setTimeout(() => {
        if (fault === undefined) {
          real.apply(target, args);
        } else if (FAILED_AFTER.has(name)) {
          real.apply(target, [...args.slice(0, -1), () => callback(fault)]);
        } else {
          callback(fault);
        }
      }, delayMs);
      return undefined;
    }
    if (delayMs > 0) blockFor(delayMs);
    if (fault === undefined) return real.apply(target, args);
    if (FAILED_AFTER.has(name)) {
      try {
        real.apply(target, args);
      } catch {
        // The injected fault is what the caller sees.
      }
    }
    throw fault;
  }

  #delay(plan: FaultPlan): number {
    const ms = plan.latencyMs ?? 0;
    if (ms <= 0 || this.#random() >= (plan.latencyProbability ?? 1)) return 0;
    this.#delayed++;
    return ms;
  }

  #fault(plan: FaultPlan, name: string): pkcs11js.Pkcs11Error | undefined {
    if (NEVER_FAILED.has(name) || (plan.functions !== undefined && !plan.functions.includes(name))) return undefined;
    this.#eligible++;
    const roll = this.#random();
    const hit = this.#eligible === plan.nth || (plan.probability !== undefined && roll < plan.probability);
    if (!hit) return undefined;
    const codes = plan.codesFor?.(name) ?? plan.codes ?? FAULT_CODES;
    const code = codes[Math.floor(this.#random() * codes.length)] as number;
    this.#faults++;
    this.#byCode.set(code, (this.#byCode.get(code) ?? 0) + 1);
    this.#byFunction.set(name, (this.#byFunction.get(name) ?? 0) + 1);
    if (plan.maxFaults !== undefined && this.#faults >= plan.maxFaults) this.clear();
    // The binding's own error class and message shape ("CKR_NAME:code"), so that ckrOf reads the code as usual.
    return new pkcs11js.Pkcs11Error(`${ckrName(code)}:${code}`, code, name);
  }
}
