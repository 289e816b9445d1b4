import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import { type GrapheneHsm, ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import { type AnyTestToken, createTestToken, removeTestToken, TOKEN_PROVIDERS } from '../support/softhsm.js';
import { ckrThrownBy, cmkVersion, expectBooleans, MODULE_FACTS, openHsm, readBooleans } from './hsm-fixtures.js';

describe.each(TOKEN_PROVIDERS)('on %s', (provider) => {
  const facts = MODULE_FACTS[provider];
  let token: AnyTestToken;
  let hsm: GrapheneHsm;

  beforeAll(async () => {
    token = createTestToken(provider);
    hsm = await openHsm(token);
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  const iv = () => randomBytes(12);
  const aad = Buffer.from('encryption context');

  async function expectInvalidCiphertext(promise: Promise<unknown>): Promise<void> {
    const err = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KmsError);
    expect((err as KmsError).code).toBe('InvalidCiphertext');
    expect((err as KmsError).message).toBe('The ciphertext is invalid.');
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
    const key = cmkVersion('11111111-1111-1111-1111-111111111111');

    it('when a plaintext is encrypted, then decrypting it with the same IV and AAD gives it back', async () => {
      const nonce = iv();
      const plaintext = Buffer.from('the quick brown fox jumps over the lazy dog');
      const ct = await hsm.encrypt(key, nonce, plaintext, aad);
      expect(ct.length).toBe(plaintext.length + 16);
      expect(ct.subarray(0, plaintext.length).equals(plaintext)).toBe(false);
      expect((await hsm.decrypt(key, nonce, ct, aad)).equals(plaintext)).toBe(true);
    });

    it('when the AAD is empty, then the round trip still works', async () => {
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('x'), Buffer.alloc(0));
      expect((await hsm.decrypt(key, nonce, ct, Buffer.alloc(0))).toString()).toBe('x');
    });

    it('when the AAD differs, then decrypt throws InvalidCiphertext', async () => {
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('secret'), aad);
      await expectInvalidCiphertext(hsm.decrypt(key, nonce, ct, Buffer.from('other context')));
    });

    it('when a ciphertext bit or a tag bit is flipped, then decrypt throws InvalidCiphertext', async () => {
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('secret data'), aad);
      for (const index of [0, ct.length - 1]) {
        const tampered = Buffer.from(ct);
        tampered[index] = (tampered[index] as number) ^ 0x01;
        await expectInvalidCiphertext(hsm.decrypt(key, nonce, tampered, aad));
      }
    });

    it('when the ciphertext is no longer than a tag, then decrypt throws InvalidCiphertext', async () => {
      await expectInvalidCiphertext(hsm.decrypt(key, iv(), Buffer.alloc(16), aad));
      await expectInvalidCiphertext(hsm.decrypt(key, iv(), Buffer.alloc(3), aad));
    });

    it('when decryption has failed, then the next operations still succeed', async () => {
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('after failure'), aad);
      await expectInvalidCiphertext(hsm.decrypt(key, nonce, ct, Buffer.from('wrong')));
      expect((await hsm.decrypt(key, nonce, ct, aad)).toString()).toBe('after failure');
      expect((await hsm.encrypt(key, nonce, Buffer.from('y'), aad)).length).toBe(17);
    });

    it('when the IV is not 12 bytes or the plaintext is empty, then encrypt throws InvalidParameter', async () => {
      await expect(hsm.encrypt(key, Buffer.alloc(16), Buffer.from('x'), aad)).rejects.toMatchObject({
        code: 'InvalidParameter',
      });
      await expect(hsm.encrypt(key, iv(), Buffer.alloc(0), aad)).rejects.toMatchObject({ code: 'InvalidParameter' });
    });

    it('when another version has different derivation data, then it cannot decrypt', async () => {
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('for v1 only'), aad);
      const other = cmkVersion(key.keyId, 2);
      await expectInvalidCiphertext(hsm.decrypt(other, nonce, ct, aad));
    });

    it('when the service restarts, then the same derivation data gives the same key', async () => {
      const derivationData = randomBytes(32);
      const before = cmkVersion('22222222-2222-2222-2222-222222222222', 1, derivationData);
      const nonce = iv();
      const ct = await hsm.encrypt(before, nonce, Buffer.from('survives restarts'), aad);

      await hsm.close();
      hsm = await openHsm(token, { createRootKeyIfMissing: false });

      const after = cmkVersion(before.keyId, 1, Buffer.from(derivationData));
      expect((await hsm.decrypt(after, nonce, ct, aad)).toString()).toBe('survives restarts');
    });

    it('when the caller zeroes its derivation data buffer after use, then the cached key is not confused', async () => {
      const data = randomBytes(32);
      const key3 = cmkVersion('33333333-3333-3333-3333-333333333333', 1, data);
      const nonce = iv();
      const ct = await hsm.encrypt(key3, nonce, Buffer.from('z'), aad);
      const copy = Buffer.from(data);
      data.fill(0);
      expect((await hsm.decrypt(cmkVersion(key3.keyId, 1, copy), nonce, ct, aad)).toString()).toBe('z');
    });
  });

  describe('key attributes read through PKCS#11', () => {
    it('when a CMK version is prepared, then its key is a sensitive, non-extractable session object (history per module)', async () => {
      const key = cmkVersion('44444444-4444-4444-4444-444444444444');
      await hsm.prepareKey(key);
      const handle = hsm.forTesting().derivedKeys.get(`${key.keyId}:1`) as Buffer;
      expect(handle).toBeDefined();
      expectBooleans(hsm, handle, {
        CKA_TOKEN: false,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        ...facts.derivedKeyHistory,
        CKA_ENCRYPT: true,
        CKA_DECRYPT: true,
        CKA_DERIVE: false,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
        CKA_SIGN: false,
        CKA_VERIFY: false,
      });
      const { lib, anchorSession } = hsm.forTesting();
      expect(
        ckrThrownBy(() => lib.C_GetAttributeValue(anchorSession as Buffer, handle, [{ type: pkcs11js.CKA_VALUE }])),
      ).toBe(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
      const label = lib.C_GetAttributeValue(anchorSession as Buffer, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value;
      expect(String(label)).toBe(`cmk:${key.keyId}:1`);
    });

    it('when the root key is read, then it is a sensitive, never-extractable, derive-only token object', async () => {
      const hooks = hsm.forTesting();
      const root = hooks.rootKeyHandle(ROOT_KEY_LABEL) as Buffer;
      expect(root).toBeDefined();
      expectBooleans(hsm, root, {
        CKA_TOKEN: true,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        CKA_NEVER_EXTRACTABLE: true,
        CKA_ALWAYS_SENSITIVE: true,
        CKA_MODIFIABLE: false,
        CKA_ENCRYPT: false,
        CKA_DECRYPT: false,
        CKA_DERIVE: true,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
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
  });

  describe('derived key cache', () => {
    it('when more versions are used than the cache holds, then the least recently used key object is destroyed', async () => {
      await hsm.close();
      hsm = await openHsm(token, { keyCacheSize: 2 });
      const hooks = hsm.forTesting();
      const a = cmkVersion('55555555-5555-5555-5555-55555555555a');
      const b = cmkVersion('55555555-5555-5555-5555-55555555555b');
      const c = cmkVersion('55555555-5555-5555-5555-55555555555c');
      await hsm.prepareKey(a);
      await hsm.prepareKey(b);
      const handleA = hooks.derivedKeys.get(`${a.keyId}:1`) as Buffer;
      const handleB = hooks.derivedKeys.get(`${b.keyId}:1`) as Buffer;
      await hsm.encrypt(a, iv(), Buffer.from('x'), aad); // b is now the least recently used

      await hsm.prepareKey(c);

      expect([...hooks.derivedKeys.keys()]).toEqual([`${a.keyId}:1`, `${c.keyId}:1`]);
      expect(ckrThrownBy(() => readBooleans(hsm, handleB, ['CKA_SENSITIVE']))).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
      expect(readBooleans(hsm, handleA, ['CKA_SENSITIVE']).CKA_SENSITIVE).toBe(true);
    });

    it('when a version is forgotten, then its key object is destroyed and it is derived again on next use', async () => {
      const key = cmkVersion('66666666-6666-6666-6666-666666666666');
      const nonce = iv();
      const ct = await hsm.encrypt(key, nonce, Buffer.from('forget me'), aad);
      const hooks = hsm.forTesting();
      const handle = hooks.derivedKeys.get(`${key.keyId}:1`) as Buffer;
      hsm.forget(key.keyId, 1);
      expect(hooks.derivedKeys.has(`${key.keyId}:1`)).toBe(false);
      expect(ckrThrownBy(() => readBooleans(hsm, handle, ['CKA_SENSITIVE']))).toBe(pkcs11js.CKR_OBJECT_HANDLE_INVALID);
      expect((await hsm.decrypt(key, nonce, ct, aad)).toString()).toBe('forget me');
    });
  });
});
