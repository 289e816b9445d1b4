import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyService } from '../../src/core/key.service.js';
import { huaweiKmsClient } from '../support/huawei-sdk.js';
import { type KeyStoreTestService, startKeyStoreTestService, type TenantConnection } from '../support/key-stores.js';
import { createKey, type HuaweiResponse, huaweiErrorBody, type TestService } from '../support/test-service.js';

const P = 'hwrotation-p';
const DAY = 86_400_000;
const CA_CERT =
  '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUb3duZXItY2EtZm9yLXRlc3Rz\n-----END CERTIFICATE-----\n';

let env: KeyStoreTestService;
let kms: TestService;

beforeAll(async () => {
  env = await startKeyStoreTestService();
  kms = env.kms;
});
afterAll(async () => {
  await env?.destroy();
});

function expectError(res: HuaweiResponse, status: number, code: string, message: string): void {
  expect({ status: res.status, body: res.body }).toEqual({ status, body: huaweiErrorBody(code, message) });
}

/**
 * The key version a cipher_text's frame carries: the u32 LE right after the key id, whose end is the u16 LE at bytes
 * 2–3 (docs/ciphertext-format.md). Read here byte by byte, not with the service's own decoder.
 */
function frameVersion(cipherText: Buffer): number {
  return cipherText.readUInt32LE(cipherText.readUInt16LE(2));
}

const status = (keyId: string) => kms.call(P, 'get-key-rotation-status', { key_id: keyId });

/** The core's own rotation, as AWS RotateKeyOnDemand and Alibaba CreateKeyVersion call it: Huawei has none. */
const rotateOnDemand = (keyId: string) => kms.running.services.keys.rotate(P, { kind: 'id', id: keyId }, 'ON_DEMAND');

/** The real sweep (KeyService.rotateDueKeys, as src/service.ts runs it) seen at `at`. */
function rotationSweepAt(at: number): Promise<number> {
  return new KeyService(kms.running.hsm, kms.running.store, { now: () => at }, 100, kms.running.services.keyStores)
    .rotateDueKeys()
    .then(({ rotated }) => rotated);
}

async function dataKey(keyId: string): Promise<{ cipherText: string; plainText: string }> {
  const made = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256' });
  expect(made.status).toBe(200);
  return { cipherText: made.body.cipher_text, plainText: made.body.plain_text };
}

async function decryptDataKey(keyId: string, cipherText: string): Promise<HuaweiResponse> {
  return kms.call(P, 'decrypt-datakey', { key_id: keyId, cipher_text: cipherText, datakey_cipher_length: '32' });
}

describe('get-key-rotation-status', () => {
  it('when rotation was never enabled, then it is off, with the default 365 days, no rotation time and no rotations', async () => {
    const keyId = await createKey(kms, P, 'never-rotated');
    const res = await status(keyId);
    // A boolean and integers, as Huawei's SDK models type them, and the example shows them.
    expect({ status: res.status, body: res.body }).toEqual({
      status: 200,
      body: { key_rotation_enabled: false, rotation_interval: 365, last_rotation_time: '', number_of_rotations: 0 },
    });
    expect((await kms.call(P, 'describe-key', { key_id: keyId })).body.key_info.key_rotation_enabled).toBe('false');
  });

  it('when the key is named by alias, unknown, or of another project, then it is refused as on the other management actions', async () => {
    const keyId = await createKey(kms, P, 'status-by-alias');
    expectError(
      await kms.call(P, 'get-key-rotation-status', { key_id: 'alias/status-by-alias' }),
      400,
      'KMS.0205',
      'Invalid key ID.',
    );
    expectError(
      await kms.call('hwrotation-other', 'get-key-rotation-status', { key_id: keyId }),
      404,
      'KMS.0207',
      'The key does not exist.',
    );
    expectError(
      await kms.call(P, 'get-key-rotation-status', {}),
      400,
      'KMS.0204',
      'Parameters missing in the request message: key_id.',
    );
  });
});

describe('enable-key-rotation and disable-key-rotation', () => {
  it('when rotation is enabled, then the answer is {}, the status shows 365 days, and the first rotation is due in 365 days', async () => {
    const keyId = await createKey(kms, P, 'enabled-rotation');
    const before = Date.now();
    const enabled = await kms.call(P, 'enable-key-rotation', { key_id: keyId, sequence: randomUUID() });
    expect({ status: enabled.status, body: enabled.body }).toEqual({ status: 200, body: {} });

    expect((await status(keyId)).body).toEqual({
      key_rotation_enabled: true,
      rotation_interval: 365,
      last_rotation_time: '',
      number_of_rotations: 0,
    });
    expect((await kms.call(P, 'describe-key', { key_id: keyId })).body.key_info.key_rotation_enabled).toBe('true');
    const key = await kms.running.services.keys.get(P, { kind: 'id', id: keyId });
    expect(key.nextRotationAt).toBeGreaterThanOrEqual(before + 365 * DAY);
    expect(key.nextRotationAt).toBeLessThanOrEqual(Date.now() + 365 * DAY);
  });

  it('when rotation is already enabled, then enabling it again is KMS.2901 and its date does not move', async () => {
    const keyId = await createKey(kms, P, 'enabled-twice');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    const first = await kms.running.services.keys.get(P, { kind: 'id', id: keyId });
    expectError(
      await kms.call(P, 'enable-key-rotation', { key_id: keyId }),
      400,
      'KMS.2901',
      'Key rotation is not disabled.',
    );
    expect((await kms.running.services.keys.get(P, { kind: 'id', id: keyId })).nextRotationAt).toBe(
      first.nextRotationAt,
    );
  });

  it('when rotation is disabled, then it is off again with its rotations kept, and disabling it again is KMS.0313', async () => {
    const keyId = await createKey(kms, P, 'disabled-rotation');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 60 })).status).toBe(
      200,
    );
    await rotateOnDemand(keyId);

    const disabled = await kms.call(P, 'disable-key-rotation', { key_id: keyId });
    expect({ status: disabled.status, body: disabled.body }).toEqual({ status: 200, body: {} });
    const off = await status(keyId);
    expect(off.body).toMatchObject({ key_rotation_enabled: false, rotation_interval: 365, number_of_rotations: 1 });
    expect((await kms.running.services.keys.get(P, { kind: 'id', id: keyId })).nextRotationAt).toBeNull();

    expectError(
      await kms.call(P, 'disable-key-rotation', { key_id: keyId }),
      400,
      'KMS.0313',
      'Key rotation is not enabled.',
    );
    // Enabled again, it starts from Huawei's default, not from the interval it had.
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await status(keyId)).body.rotation_interval).toBe(365);
  });

  it('when the key is disabled or pending deletion, then rotation cannot be changed (KMS.0209, KMS.0210)', async () => {
    const keyId = await createKey(kms, P, 'rotation-key-states');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await kms.call(P, 'disable-key', { key_id: keyId })).status).toBe(200);
    const disabledKey = 'The key has been disabled.';
    expectError(await kms.call(P, 'enable-key-rotation', { key_id: keyId }), 400, 'KMS.0209', disabledKey);
    expectError(
      await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 90 }),
      400,
      'KMS.0209',
      disabledKey,
    );

    expect((await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' })).status).toBe(200);
    const pending = 'The key is in Scheduled deletion state and cannot be used.';
    expectError(await kms.call(P, 'disable-key-rotation', { key_id: keyId }), 400, 'KMS.0210', pending);
    expectError(await kms.call(P, 'enable-key-rotation', { key_id: keyId }), 400, 'KMS.0210', pending);
    // The status is still readable, as describe-key is.
    expect((await status(keyId)).body.key_rotation_enabled).toBe(true);

    // The key's state is told before its rotation state, also when rotation was never on.
    const neverEnabled = await createKey(kms, P, 'rotation-never-enabled-pending');
    expect((await kms.call(P, 'schedule-key-deletion', { key_id: neverEnabled, pending_days: '7' })).status).toBe(200);
    expectError(await kms.call(P, 'disable-key-rotation', { key_id: neverEnabled }), 400, 'KMS.0210', pending);
  });
});

describe('update-key-rotation-interval', () => {
  it('when the interval is given as an integer or as a string of one, then the status shows it', async () => {
    const keyId = await createKey(kms, P, 'interval-forms');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    const updated = await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 30 });
    expect({ status: updated.status, body: updated.body }).toEqual({ status: 200, body: {} });
    expect((await status(keyId)).body).toMatchObject({ key_rotation_enabled: true, rotation_interval: 30 });
    expect(
      (await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: '365' })).status,
    ).toBe(200);
    expect((await status(keyId)).body.rotation_interval).toBe(365);
  });

  it('when the interval changes, then the next rotation is the new interval after rotation was enabled', async () => {
    const keyId = await createKey(kms, P, 'interval-date');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    const enabled = await kms.running.services.keys.get(P, { kind: 'id', id: keyId });
    expect((await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 45 })).status).toBe(
      200,
    );
    const updated = await kms.running.services.keys.get(P, { kind: 'id', id: keyId });
    expect(updated.nextRotationAt).toBe((enabled.nextRotationAt as number) - 365 * DAY + 45 * DAY);
  });

  const outOfRange = 'Invalid rotation_interval.';
  const notAnInteger = 'Invalid parameter: rotation_interval.';
  it.each([
    [29, outOfRange],
    [366, outOfRange],
    [0, outOfRange],
    ['29', outOfRange],
    ['366', outOfRange],
    [-30, notAnInteger],
    [30.5, notAnInteger],
    ['thirty', notAnInteger],
    ['', notAnInteger],
    [true, notAnInteger],
    [null, notAnInteger],
  ])(
    'when rotation_interval is %j, then it is KMS.3001 %j and the interval is unchanged',
    async (interval, message) => {
      const keyId = await createKey(kms, P, `bad-interval-${randomUUID()}`);
      expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
      expectError(
        await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: interval }),
        400,
        'KMS.3001',
        message,
      );
      expect((await status(keyId)).body.rotation_interval).toBe(365);
    },
  );

  it('when rotation_interval is missing, then it is KMS.0204', async () => {
    const keyId = await createKey(kms, P, 'interval-missing');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expectError(
      await kms.call(P, 'update-key-rotation-interval', { key_id: keyId }),
      400,
      'KMS.0204',
      'Parameters missing in the request message: rotation_interval.',
    );
  });

  it('when rotation is not enabled, then changing its interval is KMS.0313 and leaves it off', async () => {
    const keyId = await createKey(kms, P, 'interval-not-enabled');
    expectError(
      await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 90 }),
      400,
      'KMS.0313',
      'Key rotation is not enabled.',
    );
    expect((await status(keyId)).body).toMatchObject({ key_rotation_enabled: false, rotation_interval: 365 });
  });
});

describe('keys of a dedicated keystore', () => {
  /** One keystore per connection (a connection serves one store), enabled, made on first use. */
  const keystores = new Map<string, string>();

  async function keystoreOf(connection: TenantConnection): Promise<string> {
    const known = keystores.get(connection.id);
    if (known !== undefined) return known;
    const store = await kms.running.services.keyStores.create({
      projectId: P,
      name: `rotation-${connection.keyScheme}`,
      connectionId: connection.id,
      trustAnchorCertificate: CA_CERT,
      pin: Buffer.from(connection.pin, 'utf8'),
    });
    const url = `${kms.url}/v1.0/${P}/keystores/${store.id}/enable`;
    const enabled = await fetch(url, { method: 'POST', headers: { 'x-auth-token': await kms.tokenFor(P) } });
    expect(enabled.status).toBe(200);
    keystores.set(connection.id, store.id);
    return store.id;
  }

  async function keystoreKey(alias: string, connection: TenantConnection): Promise<string> {
    const keystoreId = await keystoreOf(connection);
    const created = await kms.call(P, 'create-key', { key_alias: alias, keystore_id: keystoreId });
    expect(created.status).toBe(200);
    return created.body.key_info.key_id;
  }

  it.each([
    ['token objects', 'token-object'],
    ['wrapped keys', 'wrapped'],
  ] as const)(
    'when the keystore keeps %s, then enabling rotation or changing its interval is KMS.0338',
    async (_, scheme) => {
      const keyId = await keystoreKey(`rotation-${scheme}`, scheme === 'wrapped' ? env.softhsmWrapped : env.softhsm);
      const refused = 'The custom keystore do not support rotation.';
      expectError(await kms.call(P, 'enable-key-rotation', { key_id: keyId }), 400, 'KMS.0338', refused);
      expectError(
        await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: 90 }),
        400,
        'KMS.0338',
        refused,
      );
      expect((await status(keyId)).body).toEqual({
        key_rotation_enabled: false,
        rotation_interval: 365,
        last_rotation_time: '',
        number_of_rotations: 0,
      });
      expect((await kms.running.services.keys.get(P, { kind: 'id', id: keyId })).rotationPeriodDays).toBeNull();
    },
  );

  it('when a wrapped keystore key was rotated through another dialect, then Huawei reports it and can turn it off', async () => {
    const keyId = await keystoreKey('rotation-elsewhere', env.softhsmWrapped);
    const ref = { kind: 'id', id: keyId } as const;
    // What Alibaba's UpdateRotationPolicy and CreateKeyVersion do for an HsmEncryptedDatabase key.
    await kms.running.services.keys.enableRotation(P, ref, 180);
    await rotateOnDemand(keyId);
    expect((await status(keyId)).body).toMatchObject({
      key_rotation_enabled: true,
      rotation_interval: 180,
      number_of_rotations: 1,
    });
    expect((await kms.call(P, 'disable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await status(keyId)).body.key_rotation_enabled).toBe(false);
  });
});

describe('versions', () => {
  it('when a key is rotated 3 times between create-datakey calls, then each cipher_text carries the newest version and all decrypt', async () => {
    const keyId = await createKey(kms, P, 'rotated-thrice');
    const made = [await dataKey(keyId)];
    const encrypted = [await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'version 0' })];
    for (let version = 1; version <= 3; version++) {
      await rotateOnDemand(keyId);
      made.push(await dataKey(keyId));
      encrypted.push(await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: `version ${version}` }));
    }

    expect(made.map((m) => frameVersion(Buffer.from(m.cipherText, 'hex')))).toEqual([0, 1, 2, 3]);
    expect(encrypted.map((e) => frameVersion(Buffer.from(e.body.cipher_text, 'base64')))).toEqual([0, 1, 2, 3]);
    for (const [version, { cipherText, plainText }] of made.entries()) {
      const opened = await decryptDataKey(keyId, cipherText);
      expect([version, opened.status, opened.body.data_key]).toEqual([version, 200, plainText]);
    }
    for (const [version, e] of encrypted.entries()) {
      const opened = await kms.call(P, 'decrypt-data', { cipher_text: e.body.cipher_text });
      expect([opened.status, opened.body.plain_text]).toEqual([200, `version ${version}`]);
    }

    const after = await status(keyId);
    // On-demand rotations count, and do not turn automatic rotation on.
    expect(after.body).toMatchObject({ key_rotation_enabled: false, number_of_rotations: 3 });
    expect(after.body.last_rotation_time).toMatch(/^\d{13}$/);
    expect(Math.abs(Number(after.body.last_rotation_time) - Date.now())).toBeLessThan(60_000);
  });

  it('when automatic rotation falls due, then the sweep rotates the key once per interval and old cipher_texts still decrypt', async () => {
    const keyId = await createKey(kms, P, 'rotated-automatically');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await kms.call(P, 'update-key-rotation-interval', { key_id: keyId, rotation_interval: '30' })).status).toBe(
      200,
    );
    const v0 = await dataKey(keyId);

    // Before the interval has passed, nothing is due.
    await rotationSweepAt(Date.now() + 29 * DAY);
    expect((await status(keyId)).body.number_of_rotations).toBe(0);

    const firstDue = Date.now() + 31 * DAY;
    await rotationSweepAt(firstDue);
    expect((await status(keyId)).body).toEqual({
      key_rotation_enabled: true,
      rotation_interval: 30,
      last_rotation_time: String(firstDue),
      number_of_rotations: 1,
    });
    // Swept again at the same moment, it is not rotated twice.
    await rotationSweepAt(firstDue);
    expect((await status(keyId)).body.number_of_rotations).toBe(1);
    const v1 = await dataKey(keyId);
    expect(frameVersion(Buffer.from(v1.cipherText, 'hex'))).toBe(1);

    // The next one is due 30 days after the first automatic rotation, not after the date it fell due.
    await rotationSweepAt(firstDue + 29 * DAY);
    expect((await status(keyId)).body.number_of_rotations).toBe(1);
    await rotationSweepAt(firstDue + 30 * DAY);
    expect((await status(keyId)).body).toMatchObject({
      number_of_rotations: 2,
      last_rotation_time: String(firstDue + 30 * DAY),
    });
    const v2 = await dataKey(keyId);
    expect(frameVersion(Buffer.from(v2.cipherText, 'hex'))).toBe(2);

    for (const { cipherText, plainText } of [v0, v1, v2]) {
      const opened = await decryptDataKey(keyId, cipherText);
      expect([opened.status, opened.body.data_key]).toEqual([200, plainText]);
    }
  });

  it('when rotation is disabled, then the sweep no longer rotates the key', async () => {
    const keyId = await createKey(kms, P, 'rotation-turned-off');
    expect((await kms.call(P, 'enable-key-rotation', { key_id: keyId })).status).toBe(200);
    expect((await kms.call(P, 'disable-key-rotation', { key_id: keyId })).status).toBe(200);
    await rotationSweepAt(Date.now() + 400 * DAY);
    expect((await status(keyId)).body.number_of_rotations).toBe(0);
    expect(frameVersion(Buffer.from((await dataKey(keyId)).cipherText, 'hex'))).toBe(0);
  });
});

describe("Huawei's SDK", () => {
  it('when the Node core SDK enables rotation and reads its status, then it gets the documented fields', async () => {
    const keyId = await createKey(kms, P, 'rotation-through-sdk');
    const call = huaweiKmsClient(kms.url, { ...(await kms.running.credentials.create(P)), projectId: P });
    await call('enable-key-rotation', { key_id: keyId });
    await call('update-key-rotation-interval', { key_id: keyId, rotation_interval: 90 });
    const answer = await call('get-key-rotation-status', { key_id: keyId });
    expect(answer).toMatchObject({
      key_rotation_enabled: true,
      rotation_interval: 90,
      last_rotation_time: '',
      number_of_rotations: 0,
    });
  });
});
