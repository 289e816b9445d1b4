import pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { SessionPool } from '../../src/hsm/session-pool.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';
import { openHsm, rejectionOf } from './hsm-fixtures.js';

/** The pool alone, over real SoftHSM sessions opened on the token an adapter logged in to. */
describe('SessionPool', () => {
  let token: TestToken;
  let hsm: GrapheneHsm;
  let opened: Buffer[];
  let closed: Buffer[];
  let pool: SessionPool | undefined;

  beforeAll(async () => {
    token = createTestToken();
    hsm = await openHsm(token);
  });

  afterEach(() => {
    pool?.closeAll();
    vi.restoreAllMocks();
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  function newPool(size: number, waitMs: number): SessionPool {
    const { lib, slot } = hsm.forTesting();
    opened = [];
    closed = [];
    pool = new SessionPool(
      size,
      waitMs,
      () => {
        const session = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
        opened.push(session);
        return session;
      },
      (session) => {
        closed.push(session);
        lib.C_CloseSession(session);
      },
    );
    return pool;
  }

  /** Whether the session is a live one of the module (a closed handle fails C_GetSessionInfo). */
  function isLive(session: Buffer): boolean {
    try {
      hsm.forTesting().lib.C_GetSessionInfo(session);
      return true;
    } catch {
      return false;
    }
  }

  /** Resolves after the promise settled or `ms` passed, telling which. */
  async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
    let settled = false;
    promise.then(
      () => {
        settled = true;
      },
      () => {
        settled = true;
      },
    );
    await new Promise((resolve) => setTimeout(resolve, ms));
    return settled;
  }

  it('when a session is idle or the pool is below size, then acquire gives one at once and sets no timer', async () => {
    const p = newPool(2, 100);
    const timers = vi.spyOn(globalThis, 'setTimeout');
    const a = await p.acquire();
    const b = await p.acquire();
    p.release(a);
    const c = await p.acquire();
    expect(c).toBe(a);
    expect(timers).not.toHaveBeenCalled();
    expect(opened).toHaveLength(2);
    expect(isLive(b)).toBe(true);
    expect(p.state).toEqual({ idle: 0, leased: 2, waiting: 0 });
  });

  it('when every session is leased, then callers wait and are served first come, first served as sessions come back', async () => {
    const p = newPool(1, 5_000);
    const session = await p.acquire();
    const order: number[] = [];
    const waiters = [0, 1, 2].map((i) =>
      p.acquire().then((s) => {
        order.push(i);
        return s;
      }),
    );
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 3 });
    expect(await settledWithin(waiters[0] as Promise<Buffer>, 20)).toBe(false);

    for (const waiter of waiters) {
      p.release(session);
      expect(await waiter).toBe(session);
    }
    expect(order).toEqual([0, 1, 2]);
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 0 });
    p.release(session);
    expect(p.state).toEqual({ idle: 1, leased: 0, waiting: 0 });
    expect(opened).toHaveLength(1);
  });

  it('when a caller waits past the deadline, then it is refused with HsmUnavailable and a Retry-After, and removed from the queue', async () => {
    const p = newPool(1, 100);
    const session = await p.acquire();
    const started = performance.now();
    const err = await rejectionOf(p.acquire());
    const waited = performance.now() - started;

    expect(err).toBeInstanceOf(KmsError);
    expect(err).toMatchObject({
      code: 'HsmUnavailable',
      message: 'All 1 HSM sessions stayed busy for 100 ms: the HSM is slower than the load; retry later.',
      retryAfterSeconds: 1,
    });
    expect(waited).toBeGreaterThanOrEqual(95);
    expect(waited).toBeLessThan(5_000);
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 0 });

    // The refused caller is gone: the session comes back to the pool, not to it.
    p.release(session);
    expect(p.state).toEqual({ idle: 1, leased: 0, waiting: 0 });
    expect(await p.acquire()).toBe(session);
  });

  it('when many callers wait, then one timer serves the queue, and a caller that came after the refused ones still gets a session', async () => {
    const p = newPool(1, 100);
    const session = await p.acquire();
    const timers = vi.spyOn(globalThis, 'setTimeout');
    const early = Array.from({ length: 20 }, () => rejectionOf(p.acquire()));
    expect(timers).toHaveBeenCalledTimes(1);

    await new Promise((resolve) => setTimeout(resolve, 60));
    const late = p.acquire();
    const refused = await Promise.all(early);
    for (const err of refused) expect(err).toMatchObject({ code: 'HsmUnavailable' });
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 1 });

    p.release(session);
    expect(await late).toBe(session);
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 0 });
    // One timer at a time, set again only when it fired early or for the late caller: far fewer than one per waiter.
    expect(timers.mock.calls.length).toBeLessThan(early.length / 2);
  });

  it('when a waited-for session is discarded, then it is closed and the first waiter gets a new one', async () => {
    const p = newPool(1, 5_000);
    const session = await p.acquire();
    const waiter = p.acquire();
    p.discard(session);
    const fresh = await waiter;
    expect(fresh.equals(session)).toBe(false);
    expect(closed).toEqual([session]);
    expect(isLive(fresh)).toBe(true);
    expect(p.state).toEqual({ idle: 0, leased: 1, waiting: 0 });
  });

  it('when sessions are abandoned after a re-initialisation, then waiters get new sessions and the counts start over', async () => {
    const p = newPool(2, 5_000);
    await p.acquire();
    await p.acquire();
    const waiters = [p.acquire(), p.acquire(), p.acquire()];
    p.abandonAll();
    expect(p.state).toEqual({ idle: 0, leased: 2, waiting: 1 });
    const [first, second] = await Promise.all(waiters.slice(0, 2));
    expect(opened).toHaveLength(4);
    expect(opened.slice(2)).toEqual([first, second]);
    p.release(first as Buffer);
    expect(await waiters[2]).toBe(first);
  });

  it('when idle sessions are purged, then only the unusable ones are closed and the pool opens replacements as needed', async () => {
    const p = newPool(2, 5_000);
    const a = await p.acquire();
    const b = await p.acquire();
    p.release(a);
    p.release(b);
    p.purge((session) => session !== a);
    expect(closed).toEqual([a]);
    expect(p.state).toEqual({ idle: 1, leased: 0, waiting: 0 });
    await p.acquire();
    await p.acquire();
    expect(opened).toHaveLength(3);
    expect(p.state).toEqual({ idle: 0, leased: 2, waiting: 0 });
  });

  it('when the pool is closed, then waiters are refused at once, and drained() waits for the leased sessions, which are closed as they come back', async () => {
    const p = newPool(2, 5_000);
    const a = await p.acquire();
    const b = await p.acquire();
    const queued = p.acquire();
    p.closeAll();
    expect(await rejectionOf(queued)).toMatchObject({ code: 'HsmUnavailable', message: 'The HSM adapter is closed.' });
    expect(() => p.tryAcquire()).toThrow('The HSM adapter is closed.');

    const drained = p.drained();
    p.release(a);
    expect(await settledWithin(drained, 20)).toBe(false);
    p.discard(b);
    await drained;
    expect(closed).toEqual([a, b]);
    expect(p.state).toEqual({ idle: 0, leased: 0, waiting: 0 });
  });

  it('when the pool is closed, then its idle sessions are closed', async () => {
    const p = newPool(2, 5_000);
    const a = await p.acquire();
    p.release(a);
    p.closeAll();
    expect(closed).toEqual([a]);
    expect(isLive(a)).toBe(false);
    await p.drained();
  });
});
