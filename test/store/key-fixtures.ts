import { randomBytes, randomUUID } from 'node:crypto';
import type { KeyRecord, KeyVersionRecord } from '../../src/core/keys.js';
import type { MetadataStore } from '../../src/core/ports.js';

export const PROJECT_A = '0b6a3c1e2f4d4e5f8a9b0c1d2e3f4a5b';
export const PROJECT_B = '7f8e9d0c1b2a4c3d9e8f7a6b5c4d3e2f';

let clock = Date.UTC(2025, 0, 1);

/** A key as the service hands it to insertPendingKey; each call is a millisecond later than the last. */
export function pendingKey(overrides: Partial<KeyRecord> = {}): KeyRecord {
  clock += 1;
  const id = overrides.id ?? randomUUID();
  return {
    id,
    projectId: PROJECT_A,
    alias: `alias/key-${id}`,
    description: '',
    state: 'PendingCreation',
    keySpec: 'AES_256',
    keyUsage: 'ENCRYPT_DECRYPT',
    origin: 'kms',
    createdAt: clock,
    deletionDate: null,
    currentVersion: 1,
    keyStoreId: null,
    rotationPeriodDays: null,
    nextRotationAt: null,
    lastRotatedAt: null,
    rotations: 0,
    onDemandRotations: 0,
    ...overrides,
  };
}

/** The root key the fixtures' versions are kept under: a store accepts a version only under its active root. */
export const TEST_ROOT_KEY = 'hsm-kms-wrap-1';

/** Makes TEST_ROOT_KEY the store's active root key, as the service's start-up does with its own. */
export async function withTestRootKey<T extends MetadataStore>(store: T): Promise<T> {
  await store.activateRootKey(TEST_ROOT_KEY, 0);
  return store;
}

export function firstVersion(key: KeyRecord, overrides: Partial<KeyVersionRecord> = {}): KeyVersionRecord {
  return {
    keyId: key.id,
    version: 1,
    scheme: 'kwp-v1',
    rootKeyLabel: TEST_ROOT_KEY,
    keyMaterial: randomBytes(40),
    createdAt: key.createdAt,
    ...overrides,
  };
}
