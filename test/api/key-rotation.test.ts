import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeFrame } from '../../src/core/ciphertext-blob.js';
import { KeyService } from '../../src/core/key.service.js';
import { type KeyStoreTestService, startKeyStoreTestService } from '../support/key-stores.js';
import { createKey, type TestService } from '../support/test-service.js';

/** Key rotation in the core, seen through the Huawei dialect's crypto and the real metadata store. */
const P = 'rotating-project';
const DAY = 86_400_000;

let t: KeyStoreTestService;
let kms: TestService;
beforeAll(async () => {
  t = await startKeyStoreTestService();
  kms = t.kms;
});
afterAll(async () => t?.destroy());

const keys = () => kms.running.services.keys;
const id = (keyId: string) => ({ kind: 'id', id: keyId }) as const;

/** A KeyService over the same store and HSM whose clock is `offsetMs` ahead: a sweep run later. */
function keyServiceAt(offsetMs: number): KeyService {
  const { hsm, store, services } = kms.running;
  return new KeyService(hsm, store, { now: () => Date.now() + offsetMs }, 100, services.keyStores);
}

/** How many keys the sweep rotates `offsetMs` ahead; it must report no failure. */
async function sweepAt(offsetMs: number): Promise<number> {
  const { rotated, failed } = await keyServiceAt(offsetMs).rotateDueKeys();
  expect(failed).toEqual([]);
  return rotated;
}

async function dataKey(keyId: string) {
  const made = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256' });
  expect(made.status, JSON.stringify(made.body)).toBe(200);
  return { cipherText: made.body.cipher_text as string, plainText: made.body.plain_text as string };
}

async function opens(keyId: string, made: { cipherText: string; plainText: string }): Promise<boolean> {
  const opened = await kms.call(P, 'decrypt-datakey', {
    key_id: keyId,
    cipher_text: made.cipherText,
    datakey_cipher_length: '32',
  });
  return opened.status === 200 && opened.body.data_key === made.plainText;
}

const versionOf = (cipherText: string) => decodeFrame(Buffer.from(cipherText, 'hex')).keyVersion;

describe('rotation', () => {
  it('when a key is rotated n times, then each new ciphertext names the newest version and every older one still decrypts', async () => {
    const keyId = await createKey(kms, P, 'rotated-on-demand');
    const made = [await dataKey(keyId)];
    for (let n = 1; n <= 3; n++) {
      const rotated = await keys().rotate(P, id(keyId), 'ON_DEMAND');
      expect(rotated).toMatchObject({ currentVersion: n, rotations: n, onDemandRotations: n });
      made.push(await dataKey(keyId));
    }
    expect(made.map((m) => versionOf(m.cipherText))).toEqual([0, 1, 2, 3]);
    for (const m of made) expect(await opens(keyId, m)).toBe(true);
    expect((await keys().rotations(P, id(keyId))).map((r) => [r.version, r.rotationType])).toEqual([
      [0, null],
      [1, 'ON_DEMAND'],
      [2, 'ON_DEMAND'],
      [3, 'ON_DEMAND'],
    ]);
  });

  it('when automatic rotation is due, then the sweep rotates the key once, also after a long downtime, and never twice when two run at once', async () => {
    const keyId = await createKey(kms, P, 'rotated-on-schedule');
    const before = await dataKey(keyId);
    const enabled = await keys().enableRotation(P, id(keyId), 30);
    expect(enabled.rotationPeriodDays).toBe(30);
    expect(enabled.nextRotationAt).toBeGreaterThan(Date.now() + 29 * DAY);

    expect(await sweepAt(29 * DAY)).toBe(0);
    // Down for 100 days: due once, not three times over.
    const [a, b] = await Promise.all([sweepAt(100 * DAY), sweepAt(100 * DAY)]);
    expect(a + b).toBe(1);
    expect(await sweepAt(100 * DAY)).toBe(0);
    const after = await keys().get(P, id(keyId));
    expect(after).toMatchObject({ currentVersion: 1, rotations: 1, onDemandRotations: 0 });
    // The next one is a period after this rotation, not after the missed date.
    expect(after.nextRotationAt).toBeGreaterThan(Date.now() + 129 * DAY);
    expect(await opens(keyId, before)).toBe(true);
    expect(versionOf((await dataKey(keyId)).cipherText)).toBe(1);
  });

  it('when a key is disabled, then its due rotation waits; when rotation is disabled, nothing is due', async () => {
    const waiting = await createKey(kms, P, 'disabled-while-due');
    await keys().enableRotation(P, id(waiting), 30);
    await keys().disable(P, id(waiting));
    const off = await createKey(kms, P, 'rotation-off');
    await keys().enableRotation(P, id(off), 30);
    await keys().disableRotation(P, id(off));
    expect(await sweepAt(40 * DAY)).toBe(0);
    expect((await keys().get(P, id(waiting))).currentVersion).toBe(0);
    await keys().enable(P, id(waiting));
    expect(await sweepAt(40 * DAY)).toBe(1);
    expect((await keys().get(P, id(off))).currentVersion).toBe(0);
  });

  it('when a key is not enabled, then it cannot be rotated, and a period outside 7 to 2560 days is refused', async () => {
    const keyId = await createKey(kms, P, 'not-rotatable-now');
    await expect(keys().enableRotation(P, id(keyId), 6)).rejects.toMatchObject({ code: 'InvalidParameter' });
    await expect(keys().enableRotation(P, id(keyId), 2561)).rejects.toMatchObject({ code: 'InvalidParameter' });
    await keys().disable(P, id(keyId));
    await expect(keys().rotate(P, id(keyId), 'ON_DEMAND')).rejects.toMatchObject({ code: 'KeyDisabled' });
  });

  it('when the schedule changed after a sweep read the key, then its automatic rotation is refused and the schedule stays as changed', async () => {
    const keyId = await createKey(kms, P, 'schedule-changed-meanwhile');
    await keys().enableRotation(P, id(keyId), 30);
    const asTheSweepRead = await keys().get(P, id(keyId));
    await keys().disableRotation(P, id(keyId));
    const { store } = kms.running;
    const [root] = await store.listRootKeys();
    const added = await store.addKeyVersion(
      asTheSweepRead,
      {
        keyId,
        version: 1,
        scheme: 'kwp-v1',
        rootKeyLabel: root?.label as string,
        keyMaterial: Buffer.alloc(40),
        createdAt: 0,
      },
      { type: 'AUTOMATIC', at: Date.now() + 40 * DAY },
    );
    expect(added).toBe('conflict');
    expect(await keys().get(P, id(keyId))).toMatchObject({
      currentVersion: 0,
      rotationPeriodDays: null,
      nextRotationAt: null,
    });
  });

  it('when a key has had its quota of on-demand rotations, then another is refused and the key stays as it was', async () => {
    const keyId = await createKey(kms, P, 'on-demand-quota');
    await keys().rotate(P, id(keyId), 'ON_DEMAND', 2);
    await keys().rotate(P, id(keyId), 'ON_DEMAND', 2);
    await expect(keys().rotate(P, id(keyId), 'ON_DEMAND', 2)).rejects.toMatchObject({ code: 'RotationLimitExceeded' });
    expect(await keys().get(P, id(keyId))).toMatchObject({ currentVersion: 2, onDemandRotations: 2 });
  });

  it('when a rotated key is deleted for good, then every version goes with it', async () => {
    const keyId = await createKey(kms, P, 'rotated-then-deleted');
    await keys().rotate(P, id(keyId), 'ON_DEMAND');
    await keys().rotate(P, id(keyId), 'ON_DEMAND');
    await keys().scheduleDeletion(P, id(keyId), 7);
    expect(await keyServiceAt(8 * DAY).purgeDueDeletions()).toBe(1);
    const db = new Database(path.join(kms.dataDir, 'kms.db'), { readonly: true });
    try {
      expect(db.prepare('SELECT count(*) FROM key_versions WHERE key_id = ?').pluck().get(keyId)).toBe(0);
    } finally {
      db.close();
    }
  });
});

describe('rotation of keys in tenants\u2019 key stores', () => {
  async function storeKey(connection: typeof t.softhsm): Promise<string> {
    const { keyStores } = kms.running.services;
    const store = await keyStores.create({
      projectId: P,
      name: connection.id,
      connectionId: connection.id,
      trustAnchorCertificate: '',
      pin: Buffer.from(connection.pin),
    });
    await keyStores.connect(P, store.id);
    await keyStores.settled();
    return (await keys().create({ projectId: P, alias: '', description: '', keyStoreId: store.id })).id;
  }

  it('when a key wrapped under a store root is rotated, then the new version is made in the store and old ciphertexts decrypt', async () => {
    const keyId = await storeKey(t.softhsmWrapped);
    const before = await dataKey(keyId);
    await keys().rotate(P, id(keyId), 'ON_DEMAND');
    const version = await kms.running.store.findKeyVersion(keyId, 1, true);
    expect(version).toMatchObject({ scheme: 'kwp-v1', rootKeyLabel: 'hsm-kms-store-wrap-1' });
    expect(await opens(keyId, before)).toBe(true);
    expect(versionOf((await dataKey(keyId)).cipherText)).toBe(1);
  });

  it('when a key kept as a token object is rotated or scheduled, then it is refused: such keys do not rotate', async () => {
    const keyId = await storeKey(t.softhsm);
    await expect(keys().rotate(P, id(keyId), 'ON_DEMAND')).rejects.toMatchObject({ code: 'RotationNotSupported' });
    await expect(keys().enableRotation(P, id(keyId), 365)).rejects.toMatchObject({ code: 'RotationNotSupported' });
    expect((await keys().get(P, id(keyId))).currentVersion).toBe(0);
  });
});
