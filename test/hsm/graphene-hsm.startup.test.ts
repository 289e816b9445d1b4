import pkcs11js from 'pkcs11js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import { ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';
import { openHsm } from './hsm-fixtures.js';

let token: TestToken;

beforeEach(() => {
  token = createTestToken();
});

afterEach(() => {
  removeTestToken(token.dir);
});

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

describe('start-up', () => {
  it('when no token has the label, then open fails naming the label, the labels found and SOFTHSM2_CONF', async () => {
    const err = await startupError(openHsm(token, { tokenLabel: 'no-such-token' }));
    expect(err.code).toBe('HsmUnavailable');
    expect(err.message).toContain('"no-such-token"');
    expect(err.message).toContain(JSON.stringify([token.tokenLabel]));
    expect(err.message).toContain(`SOFTHSM2_CONF=${token.softhsmConf}`);
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
