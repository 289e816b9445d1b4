import { createDecipheriv, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { CmkVersionRef } from '../../src/core/ports.js';
import { type GrapheneHsm, LEGACY_ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import {
  AES_KEY_GEN_MECHANISM,
  asSessionObject,
  credentialKeyTemplate,
  gcmMechanism,
  rootWrappingKeyTemplate,
} from '../../src/hsm/key-templates.js';
import { ckrName } from '../../src/hsm/pkcs11-errors.js';
import { type AnyTestToken, createTestToken, removeTestToken, TOKEN_PROVIDERS } from '../support/softhsm.js';
import {
  addLegacyRootKey,
  allObjects,
  ckrThrownBy,
  expectBooleans,
  legacyVersion,
  MODULE_FACTS,
  newVersion,
  objectsLabelled,
  openHsm,
  openHsmWithRoot,
  readBooleans,
  rejectionOf,
  storedCopy,
  TEST_ROOT_KEY_LABEL,
  UNWRAPPED_KEY_HISTORY,
} from './hsm-fixtures.js';

/**
 * Every provider with synchronous calls and with pkcs11js's callback variants (KMS_HSM_ASYNC_CALLS): the asynchronous
 * path must keep every guarantee of the synchronous one, and make the same bytes.
 */
const CASES = TOKEN_PROVIDERS.flatMap((provider) => [
  { provider, calls: 'synchronous', asyncCalls: false },
  { provider, calls: 'asynchronous', asyncCalls: true },
]);

describe.each(CASES)('on $provider with $calls calls', ({ provider, asyncCalls }) => {
  const facts = MODULE_FACTS[provider];
  let token: AnyTestToken;
  let hsm: GrapheneHsm;

  beforeAll(async () => {
    token = createTestToken(provider);
    hsm = await openHsmWithRoot(token, { asyncCalls });
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  const aad = Buffer.from('encryption context');

  /** Closes the adapter and opens a new one on the same token, as a service restart does. */
  async function restart(overrides: { asyncCalls?: boolean } = {}): Promise<void> {
    await hsm.close();
    hsm = await openHsm(token, { createTokenKeysIfMissing: false, asyncCalls, ...overrides });
  }

  async function expectInvalidCiphertext(promise: Promise<unknown>): Promise<void> {
    const err = await rejectionOf(promise);
    expect(err).toBeInstanceOf(KmsError);
    expect((err as KmsError).code).toBe('InvalidCiphertext');
    expect((err as KmsError).message).toBe('The ciphertext is invalid.');
  }

  /** A version whose key cannot be brought back must fail as a fault, never pass for a bad ciphertext. */
  async function expectInternalError(promise: Promise<unknown>, message: string): Promise<void> {
    const err = await rejectionOf(promise);
    expect(err).toBeInstanceOf(KmsError);
    expect(err).toMatchObject({ code: 'InternalError', message });
  }

  describe('generateRandom', () => {
    it('when asked for n bytes, then it returns n bytes, different every time', async () => {
      for (const n of [1, 16, 32, 64, 1024]) {
        const a = await hsm.generateRandom(n);
        const b = await hsm.generateRandom(n);
        expect(a.length).toBe(n);
        if (n >= 16) expect(a.equals(b)).toBe(false);
      }
      expect((await hsm.generateRandom(0)).length).toBe(0);
    });

    it('when 1 MiB is asked for (more than NSS gives in one call), then it is drawn in pieces and all filled', async () => {
      const big = await hsm.generateRandom(1024 * 1024);
      expect(big.length).toBe(1024 * 1024);
      // 64 KiB pieces: every one was written (a zero-filled 4 KiB run has odds of 2^-32768 otherwise).
      for (let at = 0; at < big.length; at += 4096) {
        expect(big.subarray(at, at + 4096).some((byte) => byte !== 0)).toBe(true);
      }
      await expect(hsm.generateRandom(1024 * 1024 + 1)).rejects.toMatchObject({
        code: 'InvalidParameter',
        message: 'Invalid random length.',
      });
    });

    it('when the length is negative or fractional, then it throws InvalidParameter', async () => {
      await expect(hsm.generateRandom(-1)).rejects.toMatchObject({ code: 'InvalidParameter' });
      await expect(hsm.generateRandom(1.5)).rejects.toMatchObject({ code: 'InvalidParameter' });
    });
  });

  describe('encrypt and decrypt', () => {
    let key: CmkVersionRef;

    beforeAll(async () => {
      key = await newVersion(hsm, '11111111-1111-1111-1111-111111111111');
    });

    it('when a plaintext is encrypted, then decrypting it with the IV the HSM chose and the same AAD gives it back', async () => {
      const plaintext = Buffer.from('the quick brown fox jumps over the lazy dog');
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, plaintext, aad);
      expect(ciphertextWithTag.length).toBe(plaintext.length + 16);
      expect(ciphertextWithTag.subarray(0, plaintext.length).equals(plaintext)).toBe(false);
      expect((await hsm.decrypt(key, iv, ciphertextWithTag, aad)).equals(plaintext)).toBe(true);
    });

    it('when plaintexts are encrypted, then each gets its own 12-byte IV, and decrypt needs that one', async () => {
      const plaintext = Buffer.from('same plaintext every time');
      const sealed = await Promise.all(Array.from({ length: 50 }, () => hsm.encrypt(key, plaintext, aad)));
      for (const { iv } of sealed) expect(iv.length).toBe(12);
      expect(new Set(sealed.map(({ iv }) => iv.toString('hex'))).size).toBe(sealed.length);
      expect(new Set(sealed.map(({ ciphertextWithTag }) => ciphertextWithTag.toString('hex'))).size).toBe(50);

      const [first, second] = sealed as [(typeof sealed)[0], (typeof sealed)[0]];
      await expectInvalidCiphertext(hsm.decrypt(key, second.iv, first.ciphertextWithTag, aad));
      expect((await hsm.decrypt(key, first.iv, first.ciphertextWithTag, aad)).equals(plaintext)).toBe(true);
    });

    it('when the adapter opens, then it makes the calls it was told to make', () => {
      expect(hsm.forTesting().asyncCalls).toBe(asyncCalls);
    });

    it('when a ciphertext is made with one kind of calls, then the adapter with the other kind opens it, and the other way round', async () => {
      const plaintext = randomBytes(4096);
      const sealed = await hsm.encrypt(key, plaintext, aad);
      await restart({ asyncCalls: !asyncCalls });
      try {
        expect(hsm.forTesting().asyncCalls).toBe(!asyncCalls);
        expect((await hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad)).equals(plaintext)).toBe(true);
        const back = await hsm.encrypt(key, plaintext, aad);
        await restart();
        expect((await hsm.decrypt(key, back.iv, back.ciphertextWithTag, aad)).equals(plaintext)).toBe(true);
      } finally {
        if (hsm.forTesting().asyncCalls !== asyncCalls) await restart();
      }
    });

    it('when the AAD is empty, then the round trip still works', async () => {
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('x'), Buffer.alloc(0));
      expect((await hsm.decrypt(key, iv, ciphertextWithTag, Buffer.alloc(0))).toString()).toBe('x');
    });

    it('when the AAD differs, then decrypt throws InvalidCiphertext', async () => {
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('secret'), aad);
      await expectInvalidCiphertext(hsm.decrypt(key, iv, ciphertextWithTag, Buffer.from('other context')));
    });

    it('when an IV bit, a ciphertext bit or a tag bit is flipped, then decrypt throws InvalidCiphertext', async () => {
      const { iv, ciphertextWithTag: ct } = await hsm.encrypt(key, Buffer.from('secret data'), aad);
      const flipped = (buffer: Buffer, index: number) => {
        const copy = Buffer.from(buffer);
        copy[index] = (copy[index] as number) ^ 0x01;
        return copy;
      };
      await expectInvalidCiphertext(hsm.decrypt(key, flipped(iv, 0), ct, aad));
      for (const index of [0, ct.length - 1]) {
        await expectInvalidCiphertext(hsm.decrypt(key, iv, flipped(ct, index), aad));
      }
    });

    it('when the ciphertext is no longer than a tag or the IV is not 12 bytes, then decrypt throws InvalidCiphertext', async () => {
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('x'), aad);
      await expectInvalidCiphertext(hsm.decrypt(key, iv, Buffer.alloc(16), aad));
      await expectInvalidCiphertext(hsm.decrypt(key, iv, Buffer.alloc(3), aad));
      await expectInvalidCiphertext(hsm.decrypt(key, Buffer.concat([iv, Buffer.alloc(4)]), ciphertextWithTag, aad));
      await expectInvalidCiphertext(hsm.decrypt(key, iv.subarray(0, 8), ciphertextWithTag, aad));
    });

    it('when decryption has failed, then the next operations still succeed', async () => {
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('after failure'), aad);
      await expectInvalidCiphertext(hsm.decrypt(key, iv, ciphertextWithTag, Buffer.from('wrong')));
      expect((await hsm.decrypt(key, iv, ciphertextWithTag, aad)).toString()).toBe('after failure');
      expect((await hsm.encrypt(key, Buffer.from('y'), aad)).ciphertextWithTag.length).toBe(17);
    });

    it('when the plaintext is empty or more than the profile allows in one call, then encrypt throws InvalidParameter', async () => {
      await expect(hsm.encrypt(key, Buffer.alloc(0), aad)).rejects.toMatchObject({
        code: 'InvalidParameter',
        message: 'The plaintext must not be empty.',
      });
      const most = hsm.profile.gcmMaxBytesPerCall;
      await expect(hsm.encrypt(key, Buffer.alloc(most + 1), aad)).rejects.toMatchObject({
        code: 'InvalidParameter',
        message: `At most ${most} bytes can be encrypted at once.`,
      });
      expect((await hsm.encrypt(key, Buffer.alloc(most), aad)).ciphertextWithTag.length).toBe(most + 16);
    });
  });

  describe('reencrypt: decrypt under one version and encrypt under another inside the adapter', () => {
    let from: CmkVersionRef;
    let to: CmkVersionRef;
    const toAad = Buffer.from('destination context');

    beforeAll(async () => {
      from = await newVersion(hsm, '22222222-2222-2222-2222-222222222222', 0);
      to = await newVersion(hsm, '22222222-2222-2222-2222-222222222222', 1);
    });

    it('when a ciphertext is re-encrypted, then the destination version opens it with the destination AAD, to the same plaintext, and the source no longer does', async () => {
      const plaintext = Buffer.from('moved without leaving the adapter');
      const sealed = await hsm.encrypt(from, plaintext, aad);
      const moved = await hsm.reencrypt(from, sealed.iv, sealed.ciphertextWithTag, aad, to, toAad);
      expect(moved.iv.length).toBe(12);
      expect(moved.ciphertextWithTag.length).toBe(plaintext.length + 16);
      expect((await hsm.decrypt(to, moved.iv, moved.ciphertextWithTag, toAad)).equals(plaintext)).toBe(true);
      await expectInvalidCiphertext(hsm.decrypt(to, moved.iv, moved.ciphertextWithTag, aad));
      await expectInvalidCiphertext(hsm.decrypt(from, moved.iv, moved.ciphertextWithTag, toAad));
    });

    it('when the source and destination are the same version, then the ciphertext gets a fresh IV and still opens', async () => {
      const sealed = await hsm.encrypt(from, Buffer.from('same version'), aad);
      const moved = await hsm.reencrypt(from, sealed.iv, sealed.ciphertextWithTag, aad, from, aad);
      expect(moved.iv.equals(sealed.iv)).toBe(false);
      expect((await hsm.decrypt(from, moved.iv, moved.ciphertextWithTag, aad)).toString()).toBe('same version');
    });

    it('when the tag, a ciphertext bit or the source AAD is wrong, then reencrypt throws InvalidCiphertext and the next operations still succeed', async () => {
      const { iv, ciphertextWithTag: ct } = await hsm.encrypt(from, Buffer.from('tampered'), aad);
      for (const index of [0, ct.length - 1]) {
        const copy = Buffer.from(ct);
        copy[index] = (copy[index] as number) ^ 0x01;
        await expectInvalidCiphertext(hsm.reencrypt(from, iv, copy, aad, to, toAad));
      }
      await expectInvalidCiphertext(hsm.reencrypt(from, iv, ct, Buffer.from('other context'), to, toAad));
      await expectInvalidCiphertext(hsm.reencrypt(to, iv, ct, aad, to, toAad));
      await expectInvalidCiphertext(hsm.reencrypt(from, iv, Buffer.alloc(16), aad, to, toAad));
      const moved = await hsm.reencrypt(from, iv, ct, aad, to, toAad);
      expect((await hsm.decrypt(to, moved.iv, moved.ciphertextWithTag, toAad)).toString()).toBe('tampered');
    });

    it('when the key cache holds one version, then bringing the destination back evicts the source only after it has decrypted', async () => {
      await hsm.close();
      hsm = await openHsm(token, { createTokenKeysIfMissing: false, keyCacheSize: 1, asyncCalls });
      try {
        const sealed = await hsm.encrypt(from, Buffer.from('one cached key'), aad);
        const moved = await hsm.reencrypt(from, sealed.iv, sealed.ciphertextWithTag, aad, to, toAad);
        expect([...hsm.forTesting().versionKeys.keys()]).toEqual([`${to.keyId}:${to.version}`]);
        expect((await hsm.decrypt(to, moved.iv, moved.ciphertextWithTag, toAad)).toString()).toBe('one cached key');
      } finally {
        await restart();
      }
    });
  });

  // CloudHSM's rules, which only the shim enforces here: the module writes the IV, and GCM takes 16,224 bytes a call.
  describe('AES-GCM on the CloudHSM shim', { skip: provider !== 'cloudhsm-shim' }, () => {
    let key: CmkVersionRef;

    beforeAll(async () => {
      key = await newVersion(hsm, '12121212-1212-1212-1212-121212121212');
    });

    it('when plaintexts are encrypted, then each IV is one the module wrote: not zero, all distinct, and the one the ciphertext needs', async () => {
      expect(hsm.profile.ivMode).toBe('module-writes-piv');
      const plaintext = Buffer.from('under an IV the module chose');
      const sealed = [];
      for (let i = 0; i < 20; i++) sealed.push(await hsm.encrypt(key, plaintext, aad));
      expect(new Set(sealed.map(({ iv }) => iv.toString('hex'))).size).toBe(sealed.length);
      for (const { iv, ciphertextWithTag } of sealed) {
        expect(iv.length).toBe(12);
        expect(iv.equals(Buffer.alloc(12))).toBe(false);
        expect((await hsm.decrypt(key, iv, ciphertextWithTag, aad)).equals(plaintext)).toBe(true);
        // The adapter passed 12 zero bytes in: the module did not encrypt under those.
        await expectInvalidCiphertext(hsm.decrypt(key, Buffer.alloc(12), ciphertextWithTag, aad));
      }
    });

    it('when the plaintext is above 16,224 bytes, then the adapter refuses it with InvalidParameter before reaching the module', async () => {
      expect(hsm.profile.gcmMaxBytesPerCall).toBe(16_224);
      const hooks = hsm.forTesting();
      const id = `${key.keyId}:1`;
      hsm.forget(key.keyId, 1); // reaching the module would unwrap the key again
      await hsm.generateRandom(1); // leaves a pool session idle: reaching the module would take it (and drop it)
      const idle = hooks.idleSessions;
      expect(idle.length).toBeGreaterThan(0);
      // 16,225 bytes the shim itself would take (up to 16,384); beyond that it answers CKR_DATA_LEN_RANGE.
      for (const size of [16_225, 16_384, 16_385, 64 * 1024]) {
        await expect(hsm.encrypt(key, Buffer.alloc(size, 7), aad)).rejects.toMatchObject({
          code: 'InvalidParameter',
          message: 'At most 16224 bytes can be encrypted at once.',
        });
      }
      expect(hooks.versionKeys.has(id)).toBe(false);
      expect(hooks.idleSessions).toEqual(idle);

      // The control: the most the profile allows goes through, and the module would also have taken one byte more.
      const sealed = await hsm.encrypt(key, Buffer.alloc(16_224, 7), aad);
      expect(sealed.ciphertextWithTag.length).toBe(16_224 + 16);
      const session = hooks.anchorSession as Buffer;
      // Held until after C_Encrypt, which writes the module's IV into it.
      const pIv = Buffer.alloc(12);
      hooks.lib.C_EncryptInit(session, gcmMechanism(pIv, aad), hooks.versionKeys.get(id) as Buffer);
      const direct = hooks.lib.C_Encrypt(session, Buffer.alloc(16_225, 7), Buffer.alloc(16_225 + 16));
      expect(direct.length).toBe(16_225 + 16);
      expect(pIv.equals(Buffer.alloc(12))).toBe(false);
    });
  });

  describe('key versions (kwp-v1: generated in the HSM, kept wrapped under a root key)', () => {
    it('when a version is created, then it is kept as 40 bytes of kwp-v1 material under the root, which opens the same key after a restart', async () => {
      const ref = await newVersion(hsm, '22222222-2222-2222-2222-222222222222');
      expect(ref.scheme).toBe('kwp-v1');
      expect(ref.rootKeyLabel).toBe(TEST_ROOT_KEY_LABEL);
      expect(ref.keyMaterial.length).toBe(40);
      const stored = storedCopy(ref);
      const { iv, ciphertextWithTag } = await hsm.encrypt(ref, Buffer.from('survives restarts'), aad);

      await restart();

      // Nothing cached and the root never named since the restart: the version opens from its stored bytes alone.
      expect(hsm.forTesting().versionKeys.size).toBe(0);
      expect((await hsm.decrypt(stored, iv, ciphertextWithTag, aad)).toString()).toBe('survives restarts');
      expect(hsm.forTesting().versionKeys.has(`${ref.keyId}:1`)).toBe(true);
    });

    it('when two versions are created, then their material differs and one cannot decrypt what the other encrypted', async () => {
      const v1 = await newVersion(hsm, '33333333-3333-3333-3333-333333333333', 1);
      const v2 = await newVersion(hsm, v1.keyId, 2);
      expect(v1.keyMaterial.equals(v2.keyMaterial)).toBe(false);
      const { iv, ciphertextWithTag } = await hsm.encrypt(v1, Buffer.from('for v1 only'), aad);
      await expectInvalidCiphertext(hsm.decrypt(v2, iv, ciphertextWithTag, aad));
      expect((await hsm.decrypt(v1, iv, ciphertextWithTag, aad)).toString()).toBe('for v1 only');
    });

    it('when a version is created again under the same id and number, then the key kept ready is the new one', async () => {
      // The core retries a creation whose root was replaced meanwhile with the same id and version number.
      const keyId = '34343434-3434-3434-3434-343434343434';
      await newVersion(hsm, keyId);
      const again = await newVersion(hsm, keyId);
      const { iv, ciphertextWithTag } = await hsm.encrypt(again, Buffer.from('under the kept key'), aad);
      hsm.forget(keyId, 1);
      expect((await hsm.decrypt(storedCopy(again), iv, ciphertextWithTag, aad)).toString()).toBe('under the kept key');
    });

    it("when two versions share an id and number (a lost rotation race), then each is used with its own key, never the other's cached one", async () => {
      const keyId = '35353535-3535-3535-3535-353535353535';
      const winner = await newVersion(hsm, keyId);
      // The loser made its version after the winner: its key is the one the adapter holds ready under that number.
      const loser = await newVersion(hsm, keyId);
      const { iv, ciphertextWithTag } = await hsm.encrypt(storedCopy(winner), Buffer.from('under the winner'), aad);
      hsm.forget(keyId, 1);
      expect((await hsm.decrypt(storedCopy(winner), iv, ciphertextWithTag, aad)).toString()).toBe('under the winner');
      await expectInvalidCiphertext(hsm.decrypt(storedCopy(loser), iv, ciphertextWithTag, aad));
    });

    it('when the kept material is not the size its scheme gives, then using the version throws InternalError', async () => {
      const real = await newVersion(hsm, '35353535-3535-3535-3535-353535353535');
      for (const [i, size] of [39, 41, 0].entries()) {
        const ref = { ...real, keyId: `35353535-3535-3535-3535-35353535353${i}`, keyMaterial: Buffer.alloc(size, 1) };
        await expectInternalError(hsm.prepareKey(ref), `Wrapped key of version ${ref.keyId}:1 is not 40 bytes.`);
        await expectInternalError(
          hsm.decrypt(ref, Buffer.alloc(12, 1), Buffer.alloc(17), aad),
          `Wrapped key of version ${ref.keyId}:1 is not 40 bytes.`,
        );
      }
    });

    it('when the kept material is corrupted, then it fails as an HSM error with the module code, never as an invalid ciphertext', async () => {
      const ref = await newVersion(hsm, '36363636-3636-3636-3636-363636363636');
      const { iv, ciphertextWithTag } = await hsm.encrypt(ref, Buffer.from('x'), aad);
      const corrupted = storedCopy(ref);
      corrupted.keyMaterial[5] = (corrupted.keyMaterial[5] as number) ^ 0x01;
      hsm.forget(ref.keyId, 1);
      const code = facts.corruptWrappedKey;
      await expectInternalError(
        hsm.decrypt(corrupted, iv, ciphertextWithTag, aad),
        `HSM error ${ckrName(code)} (0x${code.toString(16)}) in C_UnwrapKey`,
      );
      expect((await hsm.decrypt(ref, iv, ciphertextWithTag, aad)).toString()).toBe('x');
    });

    it('when the caller zeroes the material it passed, then a stored copy still opens the version and the zeroed one does not', async () => {
      const ref = await newVersion(hsm, '37373737-3737-3737-3737-373737373737');
      const stored = storedCopy(ref);
      const { iv, ciphertextWithTag } = await hsm.encrypt(ref, Buffer.from('z'), aad);
      ref.keyMaterial.fill(0);
      hsm.forget(ref.keyId, 1);
      // A cache miss reads the material it is given: zeroed bytes fail RFC 5649's integrity check.
      await expect(hsm.decrypt(ref, iv, ciphertextWithTag, aad)).rejects.toMatchObject({ code: 'InternalError' });
      expect((await hsm.decrypt(stored, iv, ciphertextWithTag, aad)).toString()).toBe('z');
    });

    it('when a version names a root key the token does not have, then using it fails naming the root', async () => {
      const message = `Root key "no-such-root": no object with this label on token "${token.tokenLabel}".`;
      await expectInternalError(
        hsm.createKeyVersion('38383838-3838-3838-3838-383838383838', 1, 'no-such-root'),
        message,
      );
      const ref = { ...(await newVersion(hsm, '39393939-3939-3939-3939-393939393939')), rootKeyLabel: 'no-such-root' };
      hsm.forget(ref.keyId, 1);
      await expectInternalError(hsm.decrypt(ref, Buffer.alloc(12, 1), Buffer.alloc(17), aad), message);
    });
  });

  describe('root rotation: rewrapKeyVersion and destroyRootKey', () => {
    const OLD_ROOT = 'hsm-kms-wrap-rotation-old';
    const NEW_ROOT = 'hsm-kms-wrap-rotation-new';

    beforeAll(async () => {
      await hsm.ensureRootKey(OLD_ROOT);
      await hsm.ensureRootKey(NEW_ROOT);
    });

    it('when a version is rewrapped under a second root, then its new material opens the same key, and once the first root is destroyed only the new material does', async () => {
      const ref = await newVersion(hsm, '88888888-8888-8888-8888-888888888888', 1, OLD_ROOT);
      const old = storedCopy(ref);
      const { iv, ciphertextWithTag } = await hsm.encrypt(ref, Buffer.from('made before the rotation'), aad);

      const rewrapped = { ...ref, ...(await hsm.rewrapKeyVersion(ref, NEW_ROOT)) };
      expect(rewrapped.scheme).toBe('kwp-v1');
      expect(rewrapped.rootKeyLabel).toBe(NEW_ROOT);
      expect(rewrapped.keyMaterial.length).toBe(40);
      expect(rewrapped.keyMaterial.equals(ref.keyMaterial)).toBe(false);
      hsm.forget(ref.keyId, 1);
      expect((await hsm.decrypt(rewrapped, iv, ciphertextWithTag, aad)).toString()).toBe('made before the rotation');

      expect(await hsm.destroyRootKey(OLD_ROOT)).toBe(true);
      expect(objectsLabelled(hsm, OLD_ROOT)).toHaveLength(0);
      expect(await hsm.destroyRootKey(OLD_ROOT)).toBe(false);

      hsm.forget(ref.keyId, 1);
      await expectInternalError(
        hsm.decrypt(old, iv, ciphertextWithTag, aad),
        `Root key "${OLD_ROOT}": no object with this label on token "${token.tokenLabel}".`,
      );
      hsm.forget(ref.keyId, 1);
      expect((await hsm.decrypt(rewrapped, iv, ciphertextWithTag, aad)).toString()).toBe('made before the rotation');
    });

    it('when a version is rewrapped, then the extractable copy made for the wrap is gone afterwards', async () => {
      const ref = await newVersion(hsm, '89898989-8989-8989-8989-898989898989', 1, NEW_ROOT);
      const before = allObjects(hsm).length;
      await hsm.rewrapKeyVersion(ref, TEST_ROOT_KEY_LABEL);
      expect(allObjects(hsm).length).toBe(before);
      hsm.forget(ref.keyId, 1);
      await hsm.rewrapKeyVersion(ref, TEST_ROOT_KEY_LABEL);
      expect(allObjects(hsm).length).toBe(before - 1);
    });
  });

  // Where the module cannot derive, the legacy root cannot even be made: the refusal is tested there instead.
  describe('legacy versions (cbc-encrypt-data-v1: derived from a derive-only root)', {
    skip: !facts.derivesCbcEncryptData,
  }, () => {
    beforeAll(() => {
      addLegacyRootKey(hsm);
    });

    it('when the derivation data is not 32 bytes, then using the version throws InternalError', async () => {
      const legacy = legacyVersion('35353535-3535-3535-3535-35353535353f', 1, randomBytes(31));
      await expectInternalError(
        hsm.prepareKey(legacy),
        `Derivation data of version ${legacy.keyId}:1 is not 32 bytes.`,
      );
    });

    it('when a legacy version is used, then the same derivation data gives the same key, also after a restart', async () => {
      const derivationData = randomBytes(32);
      const ref = legacyVersion('aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa', 1, derivationData);
      const { iv, ciphertextWithTag } = await hsm.encrypt(ref, Buffer.from('made by an older release'), aad);

      await restart();

      const after = legacyVersion(ref.keyId, 1, Buffer.from(derivationData));
      expect((await hsm.decrypt(after, iv, ciphertextWithTag, aad)).toString()).toBe('made by an older release');
      const other = legacyVersion(ref.keyId, 2);
      await expectInvalidCiphertext(hsm.decrypt(other, iv, ciphertextWithTag, aad));
    });

    it('when a legacy version is prepared, then its key is a sensitive, non-extractable encrypt/decrypt-only session object (history per module)', async () => {
      const ref = legacyVersion('bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb');
      await hsm.prepareKey(ref);
      const handle = hsm.forTesting().versionKeys.get(`${ref.keyId}:1`) as Buffer;
      expect(handle).toBeDefined();
      expectBooleans(hsm, handle, {
        CKA_TOKEN: false,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        ...facts.derivedKeyHistory,
        CKA_ENCRYPT: true,
        CKA_DECRYPT: true,
        CKA_DERIVE: false,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
        CKA_SIGN: false,
      });
    });

    it('when a legacy version is rewrapped, then it becomes kwp-v1 under the root with the same key, and still opens once the legacy root is gone', async () => {
      const legacy = legacyVersion('cccccccc-cccc-cccc-cccc-cccccccccccc');
      const { iv, ciphertextWithTag } = await hsm.encrypt(legacy, Buffer.from('migrated'), aad);

      const migrated = { ...legacy, ...(await hsm.rewrapKeyVersion(legacy, TEST_ROOT_KEY_LABEL)) };
      expect(migrated.scheme).toBe('kwp-v1');
      expect(migrated.rootKeyLabel).toBe(TEST_ROOT_KEY_LABEL);
      expect(migrated.keyMaterial.length).toBe(40);
      hsm.forget(legacy.keyId, 1);
      expect((await hsm.decrypt(migrated, iv, ciphertextWithTag, aad)).toString()).toBe('migrated');

      expect(await hsm.destroyRootKey(LEGACY_ROOT_KEY_LABEL)).toBe(true);
      hsm.forget(legacy.keyId, 1);
      await expectInternalError(
        hsm.decrypt(legacy, iv, ciphertextWithTag, aad),
        `Root key "${LEGACY_ROOT_KEY_LABEL}": no object with this label on token "${token.tokenLabel}".`,
      );
      hsm.forget(legacy.keyId, 1);
      expect((await hsm.decrypt(migrated, iv, ciphertextWithTag, aad)).toString()).toBe('migrated');
    });
  });

  describe('legacy versions on a module that cannot derive them', { skip: facts.derivesCbcEncryptData }, () => {
    it('when a legacy version is used or rewrapped, then it is refused with HsmUnavailable naming `kms root rotate`, and no object is made', async () => {
      const legacy = legacyVersion('abababab-abab-abab-abab-abababababab');
      const message =
        `Version ${legacy.keyId}:1 is kept with the legacy scheme cbc-encrypt-data-v1, which profile ` +
        `${facts.profile} cannot open: migrate it with \`kms root rotate\` on a module that can.`;
      const before = allObjects(hsm).length;
      for (const attempt of [
        () => hsm.prepareKey(legacy),
        () => hsm.encrypt(legacy, Buffer.from('x'), aad),
        () => hsm.decrypt(legacy, Buffer.alloc(12, 1), Buffer.alloc(17), aad),
        () => hsm.rewrapKeyVersion(legacy, TEST_ROOT_KEY_LABEL),
      ]) {
        const err = await rejectionOf(attempt());
        expect(err).toBeInstanceOf(KmsError);
        expect(err).toMatchObject({ code: 'HsmUnavailable', message });
      }
      expect(allObjects(hsm).length).toBe(before);
      expect(hsm.forTesting().versionKeys.has(`${legacy.keyId}:1`)).toBe(false);
    });
  });

  describe('key attributes read through PKCS#11', () => {
    it('when a CMK version is prepared, then its key is a sensitive, non-extractable session object that can only encrypt and decrypt', async () => {
      const key = await newVersion(hsm, '44444444-4444-4444-4444-444444444444');
      hsm.forget(key.keyId, 1);
      await hsm.prepareKey(key);
      const hooks = hsm.forTesting();
      const handle = hooks.versionKeys.get(`${key.keyId}:1`) as Buffer;
      expect(handle).toBeDefined();
      expectBooleans(hsm, handle, {
        CKA_TOKEN: false,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        ...UNWRAPPED_KEY_HISTORY,
        CKA_ENCRYPT: true,
        CKA_DECRYPT: true,
        CKA_DERIVE: false,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
        CKA_SIGN: false,
        CKA_VERIFY: false,
      });
      const { lib } = hooks;
      const session = hooks.anchorSession as Buffer;
      expect(ckrThrownBy(() => lib.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]))).toBe(
        pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      );
      const label = lib.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value;
      expect(String(label)).toBe(`cmk:${key.keyId}:1`);
      // Wrapped out under the very root it came from: refused where the module enforces CKA_EXTRACTABLE.
      const root = hooks.rootKeyHandle(TEST_ROOT_KEY_LABEL) as Buffer;
      const kwp = { mechanism: facts.kwpMechanism };
      expect(ckrThrownBy(() => lib.C_WrapKey(session, kwp, root, handle, Buffer.alloc(64)))).toBe(
        facts.wrapNonExtractable,
      );
    });

    it('when a root key is made, then it is a sensitive, never-extractable token object that can only wrap and unwrap', async () => {
      const hooks = hsm.forTesting();
      const root = hooks.rootKeyHandle(TEST_ROOT_KEY_LABEL) as Buffer;
      expect(root).toBeDefined();
      expectBooleans(hsm, root, {
        CKA_TOKEN: true,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        CKA_NEVER_EXTRACTABLE: true,
        CKA_ALWAYS_SENSITIVE: true,
        // Frozen where the module allows it; CloudHSM keeps CKA_MODIFIABLE at its default.
        CKA_MODIFIABLE: !facts.templatesMayFreeze,
        CKA_ENCRYPT: false,
        CKA_DECRYPT: false,
        CKA_DERIVE: false,
        CKA_WRAP: true,
        CKA_UNWRAP: true,
        CKA_SIGN: false,
        CKA_VERIFY: false,
      });
      const session = hooks.anchorSession as Buffer;
      expect(ckrThrownBy(() => hooks.lib.C_GetAttributeValue(session, root, [{ type: pkcs11js.CKA_VALUE }]))).toBe(
        pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      );
      const gcm = {
        mechanism: pkcs11js.CKM_AES_GCM,
        parameter: { type: pkcs11js.CK_PARAMS_GCM, iv: Buffer.alloc(12), ivBits: 96, tagBits: 128 },
      };
      expect(ckrThrownBy(() => hooks.lib.C_EncryptInit(session, gcm, root))).toBe(facts.keyFunctionRefused);
    });

    /** [whose keys …, CKA_MODIFIABLE they get, templatesMayFreeze]. */
    const templateCases: readonly [string, boolean, boolean][] = [
      ['may be frozen (SoftHSM, NSS)', false, true],
      ['may not be frozen (CloudHSM)', true, false],
    ];
    // A module that refuses frozen templates cannot make the keys of the first case: its refusal is the test below.
    it.each(templateCases.filter(([, , templatesMayFreeze]) => facts.templatesMayFreeze || !templatesMayFreeze))(
      'when templates are made for a module whose keys %s, then root and credential keys get CKA_MODIFIABLE=%s',
      (_, modifiable, templatesMayFreeze) => {
        const { lib, anchorSession } = hsm.forTesting();
        const session = anchorSession as Buffer;
        const rules = { templatesMayFreeze };
        const made = [
          [AES_KEY_GEN_MECHANISM, rootWrappingKeyTemplate('template-probe', rules)],
          [{ mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, credentialKeyTemplate('template-probe', rules)],
        ] as const;
        for (const [mechanism, template] of made) {
          // CloudHSM accepts CKA_MODIFIABLE only at its default: the template must not name it at all there.
          expect(template.some((attribute) => attribute.type === pkcs11js.CKA_MODIFIABLE)).toBe(templatesMayFreeze);
          const handle = lib.C_GenerateKey(session, mechanism, asSessionObject(template));
          try {
            expect(readBooleans(hsm, handle, ['CKA_MODIFIABLE', 'CKA_SENSITIVE'])).toEqual({
              CKA_MODIFIABLE: modifiable,
              CKA_SENSITIVE: true,
            });
          } finally {
            lib.C_DestroyObject(session, handle);
          }
        }
      },
    );

    it.skipIf(facts.templatesMayFreeze)(
      'when a template freezes a key on a module that keeps CKA_MODIFIABLE at its default, then the module refuses it with CKR_ATTRIBUTE_VALUE_INVALID',
      () => {
        const { lib, anchorSession } = hsm.forTesting();
        const frozen = asSessionObject(rootWrappingKeyTemplate('template-probe', { templatesMayFreeze: true }));
        expect(ckrThrownBy(() => lib.C_GenerateKey(anchorSession as Buffer, AES_KEY_GEN_MECHANISM, frozen))).toBe(
          pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
        );
      },
    );
  });

  describe('what the module enforces (SECURITY.md states it per module)', () => {
    it('when a sensitive, non-extractable session key is wrapped, then the module answers as its facts say', async () => {
      const { lib, anchorSession } = hsm.forTesting();
      const session = anchorSession as Buffer;
      const aesKey = (extra: pkcs11js.Template) =>
        lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
          { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
          { type: pkcs11js.CKA_TOKEN, value: false },
          ...extra,
        ]);
      const kek = aesKey([{ type: pkcs11js.CKA_WRAP, value: true }]);
      const secret = aesKey([
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      ]);
      try {
        const wrap = { mechanism: pkcs11js.CKM_AES_KEY_WRAP };
        expect(ckrThrownBy(() => lib.C_WrapKey(session, wrap, kek, secret, Buffer.alloc(64)))).toBe(
          facts.wrapNonExtractable,
        );
      } finally {
        lib.C_DestroyObject(session, secret);
        lib.C_DestroyObject(session, kek);
      }
    });
    it('when a holder of the user PIN unwraps stored material with a template of their own, then they can read the CMK (SECURITY.md)', async () => {
      // What SECURITY.md says a PIN holder with the database can do on these modules: the root key enforces no unwrap
      // template, so the 40 stored bytes open into a readable key, which decrypts what the service sealed.
      const version = await newVersion(hsm, 'c0ffee00-0000-4000-8000-000000000001');
      const sealed = await hsm.encrypt(version, Buffer.from('meant to stay in the HSM'), aad);
      const { lib, anchorSession, rootKeyHandle } = hsm.forTesting();
      const session = anchorSession as Buffer;
      const readable = lib.C_UnwrapKey(
        session,
        { mechanism: facts.kwpMechanism },
        rootKeyHandle(TEST_ROOT_KEY_LABEL) as Buffer,
        version.keyMaterial,
        [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_SENSITIVE, value: false },
          { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        ],
      );
      try {
        const [value] = lib.C_GetAttributeValue(session, readable, [{ type: pkcs11js.CKA_VALUE }]);
        const decipher = createDecipheriv('aes-256-gcm', value?.value as Buffer, sealed.iv);
        decipher.setAAD(aad);
        decipher.setAuthTag(sealed.ciphertextWithTag.subarray(-16));
        const opened = Buffer.concat([decipher.update(sealed.ciphertextWithTag.subarray(0, -16)), decipher.final()]);
        expect(opened.toString()).toBe('meant to stay in the HSM');
      } finally {
        lib.C_DestroyObject(session, readable);
      }
    });
  });

  describe('version key cache', () => {
    it('when more versions are used than the cache holds, then the least recently used key object is destroyed', async () => {
      await hsm.close();
      hsm = await openHsm(token, { keyCacheSize: 2, asyncCalls });
      const hooks = hsm.forTesting();
      const a = await newVersion(hsm, '55555555-5555-5555-5555-55555555555a');
      const b = await newVersion(hsm, '55555555-5555-5555-5555-55555555555b');
      const handleA = hooks.versionKeys.get(`${a.keyId}:1`) as Buffer;
      const handleB = hooks.versionKeys.get(`${b.keyId}:1`) as Buffer;
      await hsm.encrypt(a, Buffer.from('x'), aad); // b is now the least recently used

      const c = await newVersion(hsm, '55555555-5555-5555-5555-55555555555c');

      expect([...hooks.versionKeys.keys()]).toEqual([`${a.keyId}:1`, `${c.keyId}:1`]);
      expect(ckrThrownBy(() => readBooleans(hsm, handleB, ['CKA_SENSITIVE']))).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
      expect(readBooleans(hsm, handleA, ['CKA_SENSITIVE']).CKA_SENSITIVE).toBe(true);
      // The evicted version opens again from its material, evicting the next least recently used (a).
      await hsm.prepareKey(b);
      expect([...hooks.versionKeys.keys()]).toEqual([`${c.keyId}:1`, `${b.keyId}:1`]);
    });

    it('when a version is forgotten, then its key object is destroyed and it is unwrapped again on next use', async () => {
      const key = await newVersion(hsm, '66666666-6666-6666-6666-666666666666');
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('forget me'), aad);
      const hooks = hsm.forTesting();
      const handle = hooks.versionKeys.get(`${key.keyId}:1`) as Buffer;
      hsm.forget(key.keyId, 1);
      expect(hooks.versionKeys.has(`${key.keyId}:1`)).toBe(false);
      expect(ckrThrownBy(() => readBooleans(hsm, handle, ['CKA_SENSITIVE']))).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
      expect((await hsm.decrypt(key, iv, ciphertextWithTag, aad)).toString()).toBe('forget me');
      expect(hooks.versionKeys.has(`${key.keyId}:1`)).toBe(true);
    });
  });
});
