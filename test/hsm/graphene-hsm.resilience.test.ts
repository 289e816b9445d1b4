import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CmkVersionRef, GcmSealed } from '../../src/core/ports.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { type AnyTestToken, createTestToken, removeTestToken, TOKEN_PROVIDERS } from '../support/softhsm.js';
import { newVersion, openHsmWithRoot, TEST_ROOT_KEY_LABEL } from './hsm-fixtures.js';

/** Faults are injected through the real library, behind the adapter's back. */

describe.each(TOKEN_PROVIDERS)('on %s', (provider) => {
  let token: AnyTestToken;
  let hsm: GrapheneHsm;
  let key: CmkVersionRef;
  const aad = Buffer.from('ctx');
  let sealed: GcmSealed;

  beforeAll(async () => {
    token = createTestToken(provider);
    hsm = await openHsmWithRoot(token, { poolSize: 2 });
    key = await newVersion(hsm, '77777777-7777-7777-7777-777777777777');
    sealed = await hsm.encrypt(key, Buffer.from('still here'), aad);
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  /** Version numbers of the versions expectWorking makes, one each time. */
  let versions = 0;

  /** Decrypts with the version made at the start, draws random bytes, and makes a new version under the root. */
  async function expectWorking(): Promise<void> {
    expect((await hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe('still here');
    expect((await hsm.generateRandom(32)).length).toBe(32);
    const fresh = await newVersion(hsm, '78787878-7878-7878-7878-787878787878', ++versions);
    const roundTrip = await hsm.encrypt(fresh, Buffer.from('new'), aad);
    expect((await hsm.decrypt(fresh, roundTrip.iv, roundTrip.ciphertextWithTag, aad)).toString()).toBe('new');
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

    it('when the anchor session is closed behind the adapter, then keys are unwrapped again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      const oldAnchor = hooks.anchorSession as Buffer;
      hooks.lib.C_CloseSession(oldAnchor);

      await expectWorking();

      expect((hooks.anchorSession as Buffer).equals(oldAnchor)).toBe(false);
      expect(hooks.versionKeys.has(`${key.keyId}:1`)).toBe(true);
    });

    it('when every session is closed (which logs the process out), then it logs in again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      hooks.lib.C_CloseAllSessions(hooks.slot);

      await expectWorking();
      expect((await hsm.encrypt(key, Buffer.from('new'), aad)).ciphertextWithTag).toHaveLength(19);
    });

    it('when the library is finalized behind the adapter, then it initializes again and operations succeed', async () => {
      const hooks = hsm.forTesting();
      hooks.lib.C_Finalize();

      await expectWorking();
    });

    it('when many operations run concurrently, then they all succeed on at most poolSize sessions', async () => {
      const results = await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const pt = Buffer.from(`message ${i}`);
          const { iv, ciphertextWithTag } = await hsm.encrypt(key, pt, aad);
          return (await hsm.decrypt(key, iv, ciphertextWithTag, aad)).equals(pt);
        }),
      );
      expect(results.every(Boolean)).toBe(true);
      expect(hsm.forTesting().idleSessions.length).toBeLessThanOrEqual(2);
    });

    it('when the adapter is closed, then operations throw HsmUnavailable', async () => {
      await hsm.close();
      await expect(hsm.generateRandom(8)).rejects.toMatchObject({ code: 'HsmUnavailable' });
      await expect(hsm.encrypt(key, Buffer.from('x'), aad)).rejects.toMatchObject({ code: 'HsmUnavailable' });
      await expect(hsm.createKeyVersion(key.keyId, 9, TEST_ROOT_KEY_LABEL)).rejects.toMatchObject({
        code: 'HsmUnavailable',
      });
      await expect(hsm.ensureRootKey(TEST_ROOT_KEY_LABEL)).rejects.toMatchObject({ code: 'HsmUnavailable' });
      await hsm.close(); // idempotent
    });
  });
});
