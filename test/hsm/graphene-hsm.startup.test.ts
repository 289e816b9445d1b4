import { existsSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import { ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import {
  type AnyTestToken,
  createTestToken,
  type NssTestToken,
  removeTestToken,
  TOKEN_PROVIDERS,
} from '../support/softhsm.js';
import { openHsm } from './hsm-fixtures.js';

async function startupError(promise: Promise<{ close(): Promise<void> }>): Promise<KmsError> {
  const result = await promise.then(
    async (hsm) => {
      await hsm.close();
      return undefined;
    },
    (err: unknown) => err,
  );
  expect(result).toBeInstanceOf(KmsError);
  return result as KmsError;
}

/** Everything an operator might see of an error: message, stack and the causes' messages. */
function everythingIn(err: unknown): string {
  const parts: string[] = [];
  for (let e = err; e instanceof Error; e = e.cause) parts.push(e.message, e.stack ?? '', JSON.stringify(e));
  return parts.join('\n');
}

describe.each(TOKEN_PROVIDERS)('on %s', (provider) => {
  let token: AnyTestToken;

  beforeEach(() => {
    token = createTestToken(provider);
  });

  afterEach(() => {
    removeTestToken(token.dir);
  });

  describe('start-up', () => {
    it('when no token has the label, then open fails naming the label, the labels found and where tokens come from', async () => {
      const err = await startupError(openHsm(token, { tokenLabel: 'no-such-token' }));
      expect(err.code).toBe('HsmUnavailable');
      expect(err.message).toContain('"no-such-token"');
      if (token.provider === 'softhsm') {
        expect(err.message).toContain(JSON.stringify([token.tokenLabel]));
        expect(err.message).toContain(`SOFTHSM2_CONF=${token.softhsmConf}`);
      } else {
        // NSS always shows its crypto-services token beside the database's; the parameters hold paths: not printed.
        expect(err.message).toContain(JSON.stringify(['NSS Generic Crypto Services', token.tokenLabel]));
        expect(err.message).toContain('check the library parameters (KMS_PKCS11_INIT_PARAMS).');
        expect(err.message).not.toContain(token.dir);
      }
      expect(everythingIn(err)).not.toContain(token.pin);
    });

    it('when the PIN is wrong, then open fails with a message that contains neither PIN', async () => {
      const wrongPin = `${token.pin}0`;
      const err = await startupError(openHsm(token, { pin: wrongPin }));
      expect(err.message).toBe(`Login to token "${token.tokenLabel}" failed: the PIN is incorrect.`);
      expect(everythingIn(err)).not.toContain(token.pin); // also covers wrongPin, which starts with it
    });

    it('when the root key is missing and may not be created, then open fails after retrying', async () => {
      const err = await startupError(openHsm(token, { createRootKeyIfMissing: false }));
      expect(err.code).toBe('HsmUnavailable');
      expect(err.message).toContain(
        `Root key "${ROOT_KEY_LABEL}" is not on token "${token.tokenLabel}" (looked 2 times)`,
      );
    });

    it('when the root key exists, then a later open finds it instead of creating another', async () => {
      const first = await openHsm(token);
      await first.close();
      const second = await openHsm(token, { createRootKeyIfMissing: false });
      const { lib, anchorSession } = second.forTesting();
      lib.C_FindObjectsInit(anchorSession as Buffer, [{ type: pkcs11js.CKA_LABEL, value: ROOT_KEY_LABEL }]);
      const found = lib.C_FindObjects(anchorSession as Buffer, 10);
      lib.C_FindObjectsFinal(anchorSession as Buffer);
      expect(found).toHaveLength(1);
      await second.close();
    });

    it('when two objects carry the root key label, then open refuses to start', async () => {
      const first = await openHsm(token);
      const { lib, anchorSession } = first.forTesting();
      lib.C_GenerateKey(anchorSession as Buffer, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_LABEL, value: ROOT_KEY_LABEL },
      ]);
      await first.close();

      const err = await startupError(openHsm(token));
      expect(err.code).toBe('InternalError');
      expect(err.message).toContain(
        `more than one object on token "${token.tokenLabel}" is labelled "${ROOT_KEY_LABEL}"`,
      );
    });

    it('when the object with the root label is not a sensitive derive-only AES key, then open refuses to start', async () => {
      const first = await openHsm(token);
      const { lib, anchorSession, rootKeyHandle } = first.forTesting();
      lib.C_DestroyObject(anchorSession as Buffer, rootKeyHandle(ROOT_KEY_LABEL) as Buffer);
      lib.C_GenerateKey(anchorSession as Buffer, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_DERIVE, value: true },
        { type: pkcs11js.CKA_LABEL, value: ROOT_KEY_LABEL },
      ]);
      await first.close();

      const err = await startupError(openHsm(token));
      expect(err.code).toBe('InternalError');
      expect(err.message).toContain('is not a sensitive, non-extractable AES key that can derive');
    });
  });
});

describe('library parameters (NSS softokn reads its database from them)', () => {
  let nss: NssTestToken;

  beforeEach(() => {
    nss = createTestToken('nss');
  });

  afterEach(() => {
    removeTestToken(nss.dir);
  });

  it('when they are missing, then open fails naming C_Initialize and the code NSS answered', async () => {
    const err = await startupError(openHsm(nss, { initParams: undefined }));
    expect(err.code).toBe('InternalError');
    expect(err.message).toBe('HSM error CKR_ARGUMENTS_BAD (0x7) in C_Initialize');
  });

  it('when they end with an unquoted configdir, then that database is opened, not one a character shorter', async () => {
    // pkcs11js drops the last character of the parameters: the adapter must make that character harmless.
    const hsm = await openHsm(nss, {
      initParams: `certPrefix='' keyPrefix='' secmod='' flags= configdir=sql:${nss.dir}`,
    });
    try {
      expect((await hsm.credentialSecret('AKIAAAAAAAAAAAAAAAAA')).length).toBe(32);
    } finally {
      await hsm.close();
    }
    expect(existsSync(nss.dir.slice(0, -1))).toBe(false);
  });
});
