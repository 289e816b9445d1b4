import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Services } from '../../src/api/huawei/context.js';
import { createApp } from '../../src/app.js';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { TokenVerifier } from '../../src/auth/token-verifier.js';
import { DataKeyService } from '../../src/core/data-key.service.js';
import { KmsError } from '../../src/core/errors.js';
import { KeyService } from '../../src/core/key.service.js';
import { PasswordService } from '../../src/core/password.service.js';
import type { CmkVersionRef, GcmSealed, Hsm } from '../../src/core/ports.js';
import { RandomService } from '../../src/core/random.service.js';
import { NO_RATE_LIMIT } from '../../src/core/rate-limiter.js';
import { createLogger } from '../../src/logger.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

const P = 'projecthsm01';
let kms: TestService;

beforeAll(async () => {
  kms = await startTestService();
});
afterAll(async () => {
  await kms.destroy();
});

/** The real HSM with a switch that makes its next calls fail the way a broken device or a bug would. */
class FaultInjectingHsm implements Hsm {
  fault: Error | undefined;
  /** Fails only the encryptions, after the data key is drawn. */
  encryptFault: Error | undefined;
  /** The buffer the last generateRandom returned, as the service holds it. */
  lastRandom: Buffer | undefined;
  constructor(private readonly real: Hsm) {}
  private check() {
    if (this.fault) throw this.fault;
  }
  async generateRandom(length: number) {
    this.check();
    this.lastRandom = await this.real.generateRandom(length);
    return this.lastRandom;
  }
  async ensureRootKey(label: string) {
    this.check();
    return this.real.ensureRootKey(label);
  }
  async checkRootKey(label: string, tokenId: Buffer | null) {
    this.check();
    return this.real.checkRootKey(label, tokenId);
  }
  async destroyRootKey(label: string) {
    this.check();
    return this.real.destroyRootKey(label);
  }
  async createKeyVersion(keyId: string, version: number, rootKeyLabel: string) {
    this.check();
    return this.real.createKeyVersion(keyId, version, rootKeyLabel);
  }
  async createTokenKeyVersion(keyId: string, version: number, label: string, objectId: Buffer) {
    this.check();
    return this.real.createTokenKeyVersion(keyId, version, label, objectId);
  }
  async destroyTokenKeyVersion(objectId: Buffer) {
    this.check();
    return this.real.destroyTokenKeyVersion(objectId);
  }
  async rewrapKeyVersion(key: CmkVersionRef, rootKeyLabel: string) {
    this.check();
    return this.real.rewrapKeyVersion(key, rootKeyLabel);
  }
  async encrypt(key: CmkVersionRef, plaintext: Buffer, aad: Buffer) {
    this.check();
    if (this.encryptFault) throw this.encryptFault;
    return this.real.encrypt(key, plaintext, aad);
  }
  async decrypt(key: CmkVersionRef, iv: Buffer, ciphertextWithTag: Buffer, aad: Buffer) {
    this.check();
    return this.real.decrypt(key, iv, ciphertextWithTag, aad);
  }
  async reencrypt(
    from: CmkVersionRef,
    iv: Buffer,
    ciphertextWithTag: Buffer,
    fromAad: Buffer,
    to: CmkVersionRef,
    toAad: Buffer,
  ) {
    this.check();
    if (this.encryptFault) throw this.encryptFault;
    return this.real.reencrypt(from, iv, ciphertextWithTag, fromAad, to, toAad);
  }
  async destroyIncompleteTokenKeys() {
    this.check();
    return this.real.destroyIncompleteTokenKeys();
  }
  async sealSecret(plaintext: Buffer, aad: Buffer) {
    this.check();
    return this.real.sealSecret(plaintext, aad);
  }
  async openSecret(sealed: GcmSealed, aad: Buffer) {
    this.check();
    return this.real.openSecret(sealed, aad);
  }
  async credentialSecret(accessKeyId: string) {
    this.check();
    return this.real.credentialSecret(accessKeyId);
  }
  forget(keyId: string, version: number) {
    this.real.forget(keyId, version);
  }
  close() {
    return this.real.close();
  }
}

describe('the HSM behind the API', () => {
  it('when a CMK is created through the API, then its key in the HSM is sensitive, not extractable and unreadable', async () => {
    const keyId = await createKey(kms, P, 'attributes');
    await kms.call(P, 'create-datakey', { key_id: keyId });
    const { lib, anchorSession, versionKeys } = kms.running.hsm.forTesting();
    const handle = versionKeys.get(`${keyId}:0`) as Buffer;
    expect(handle).toBeDefined();
    const attrs = lib.C_GetAttributeValue(anchorSession as Buffer, handle, [
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
      { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
      { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
      { type: pkcs11js.CKA_TOKEN },
      { type: pkcs11js.CKA_VALUE_LEN },
    ]);
    const [sensitive, extractable, neverExtractable, alwaysSensitive, onToken, valueLen] = attrs.map(
      (a) => a.value as Buffer,
    );
    expect(sensitive?.[0]).toBe(1);
    expect(extractable?.[0]).toBe(0);
    // Unwrapped from its kept form: SoftHSM (and every module) reports that it once was extractable (SECURITY.md).
    expect(neverExtractable?.[0]).toBe(0);
    expect(alwaysSensitive?.[0]).toBe(0);
    expect(onToken?.[0]).toBe(0);
    // SoftHSM 2.6.1 reports CKA_VALUE_LEN 0 for an unwrapped key (and refuses it in the unwrap template); NSS: 32.
    expect(valueLen?.readUInt32LE(0)).toBe(0);
    expect(() => lib.C_GetAttributeValue(anchorSession as Buffer, handle, [{ type: pkcs11js.CKA_VALUE }])).toThrow(
      /CKR_ATTRIBUTE_SENSITIVE/,
    );
  });

  it('when every pool session is closed behind the service, then the next requests still succeed', async () => {
    const keyId = await createKey(kms, P, 'resilient');
    const { lib, idleSessions } = kms.running.hsm.forTesting();
    for (const session of [...idleSessions]) lib.C_CloseSession(session);
    const made = await kms.call(P, 'create-datakey', { key_id: keyId });
    expect(made.status).toBe(200);
    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: made.body.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(opened.body.data_key).toBe(made.body.plain_text);
  });
});

describe('failures inside the service', () => {
  let server: Server;
  let url: string;
  let faulty: FaultInjectingHsm;
  const logged: string[] = [];
  let token: string;

  beforeAll(async () => {
    const { hsm, store } = kms.running;
    faulty = new FaultInjectingHsm(hsm);
    const { keyStores } = kms.running.services;
    const keys = new KeyService(faulty, store, { now: () => Date.now() }, 100, keyStores);
    const random = new RandomService(faulty, keyStores);
    const services: Services = {
      random,
      passwords: new PasswordService((n) => random.generate(n)),
      keys,
      keyStores,
      dataKeys: new DataKeyService(store, keys),
      region: 'local-1',
      cmkQuota: 100,
      rateLimiter: NO_RATE_LIMIT,
    };
    const issuer = loadOrCreateIssuerKeys(kms.dataDir);
    const verifier = new TokenVerifier({ key: issuer.publicKey });
    const app = createApp({
      services,
      verifier,
      logger: createLogger('error', (line) => logged.push(line)),
      huawei: { lookupSecret: (id) => kms.running.credentials.resolve(id) },
      aws: { regions: ['local-1'], lookupSecret: (id) => kms.running.credentials.resolve(id) },
      alibaba: {
        path: '/',
        region: 'local-1',
        lookupSecret: (id) => kms.running.credentials.resolve(id),
        claimNonce: (...args) => kms.running.nonces.claim(...args),
      },
      tls: false,
    });
    server = await new Promise<Server>((resolve) => {
      const s = createServer(app).listen(0, '127.0.0.1', () => resolve(s));
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    token = await signProjectToken(issuer, P, 600);
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const genRandom = async () => {
    const res = await fetch(`${url}/v1.0/${P}/kms/gen-random`, {
      method: 'POST',
      headers: { 'x-auth-token': token },
      body: '{}',
    });
    return { status: res.status, text: await res.text() };
  };

  it('when the HSM throws an unexpected error, then the client gets a generic KMS.0101/500 and the log gets the details', async () => {
    faulty.fault = new TypeError('secret internals at /src/hsm/graphene-hsm.ts:42');
    const res = await genRandom();
    faulty.fault = undefined;
    expect(res.status).toBe(500);
    expect(JSON.parse(res.text)).toEqual(huaweiErrorBody('KMS.0101', 'KMS error.'));
    expect(res.text).not.toContain('internals');
    expect(logged.join('\n')).toContain('secret internals');
  });

  it('when sealing a freshly drawn data key fails, then the data key is zeroed before the error is answered', async () => {
    const keyId = await createKey(kms, P, 'zeroed-on-failure');
    faulty.encryptFault = new KmsError('HsmUnavailable', 'HSM error CKR_DEVICE_ERROR (0x30) in C_EncryptInit');
    const res = await fetch(`${url}/v1.0/${P}/kms/create-datakey`, {
      method: 'POST',
      headers: { 'x-auth-token': token },
      body: JSON.stringify({ key_id: keyId, datakey_length: '512' }),
    });
    faulty.encryptFault = undefined;
    expect(res.status).toBe(503);
    // The 64 bytes of the data key (the HSM layer draws the IV itself).
    expect(faulty.lastRandom?.length).toBe(64);
    expect(faulty.lastRandom?.every((byte) => byte === 0)).toBe(true);
  });

  it('when the HSM reports a device failure, then the client gets KMS.0104/503 and can retry', async () => {
    faulty.fault = new KmsError('HsmUnavailable', 'HSM error CKR_DEVICE_ERROR (0x30) in C_GenerateRandom');
    const res = await genRandom();
    faulty.fault = undefined;
    expect(res.status).toBe(503);
    expect(JSON.parse(res.text).error.error_code).toBe('KMS.0104');
    expect(res.text).not.toContain('CKR_');
    expect((await genRandom()).status).toBe(200);
  });
});
