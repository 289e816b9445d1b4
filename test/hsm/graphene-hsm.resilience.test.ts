import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { type AnyTestToken, createTestToken, removeTestToken, TOKEN_PROVIDERS } from '../support/softhsm.js';
import { cmkVersion, openHsm } from './hsm-fixtures.js';

/** Faults are injected through the real library, behind the adapter's back. */

describe.each(TOKEN_PROVIDERS)('on %s', (provider) => {
  let token: AnyTestToken;
  let hsm: GrapheneHsm;
  const key = cmkVersion('77777777-7777-7777-7777-777777777777');
  const aad = Buffer.from('ctx');
  const nonce = randomBytes(12);
  let ciphertext: Buffer;

  beforeAll(async () => {
    token = createTestToken(provider);
    hsm = await openHsm(token, { poolSize: 2 });
    ciphertext = await hsm.encrypt(key, nonce, Buffer.from('still here'), aad);
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  async function expectWorking(): Promise<void> {
    expect((await hsm.decrypt(key, nonce, ciphertext, aad)).toString()).toBe('still here');
    expect((await hsm.generateRandom(32)).length).toBe(32);
  }

  describe('session failures', () => {
    it('when pool sessions are closed behind the adapter, then they are replaced and the next operation succeeds', async () => {
      const hooks = hsm.forTesting();
      const closed = hooks.idleSessions;
      expect(closed.length).toBeGreaterThan(0);
      for (const session of closed) hooks.lib.C_CloseSession(session);

      await expectWorking();

      const now = hooks.idleSessions.map((s) => s.toString('hex'));
      for (const session of closed) expect(now).not.toContain(session.toString('hex'));
    });

    it('when the anchor session is closed behind the adapter, then keys are derived again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      const oldAnchor = hooks.anchorSession as Buffer;
      hooks.lib.C_CloseSession(oldAnchor);

      await expectWorking();

      expect((hooks.anchorSession as Buffer).equals(oldAnchor)).toBe(false);
      expect(hooks.derivedKeys.has(`${key.keyId}:1`)).toBe(true);
    });

    it('when every session is closed (which logs the process out), then it logs in again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      hooks.lib.C_CloseAllSessions(hooks.slot);

      await expectWorking();
      await expect(hsm.encrypt(key, randomBytes(12), Buffer.from('new'), aad)).resolves.toHaveLength(19);
    });

    it('when the library is finalized behind the adapter, then it initializes again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      hooks.lib.C_Finalize();

      await expectWorking();
    });

    it('when many operations run concurrently, then they all succeed on at most poolSize sessions', async () => {
      const results = await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const iv = randomBytes(12);
          const pt = Buffer.from(`message ${i}`);
          const ct = await hsm.encrypt(key, iv, pt, aad);
          return (await hsm.decrypt(key, iv, ct, aad)).equals(pt);
        }),
      );
      expect(results.every(Boolean)).toBe(true);
      expect(hsm.forTesting().idleSessions.length).toBeLessThanOrEqual(2);
    });

    it('when the adapter is closed, then operations throw HsmUnavailable', async () => {
      await hsm.close();
      await expect(hsm.generateRandom(8)).rejects.toMatchObject({ code: 'HsmUnavailable' });
      await expect(hsm.encrypt(key, nonce, Buffer.from('x'), aad)).rejects.toMatchObject({ code: 'HsmUnavailable' });
      await hsm.close(); // idempotent
    });
  });
});
