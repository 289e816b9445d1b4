import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CredentialService } from '../../src/core/credential.service.js';
import { ACCESS_KEY_ID_PATTERN, XKS_ACCESS_KEY_ID_PATTERN } from '../../src/core/credentials.js';
import type { Hsm } from '../../src/core/ports.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { openHsm } from '../hsm/hsm-fixtures.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

const NOW = Date.UTC(2025, 6, 1);
const clock = { now: () => NOW };

let token: TestToken;
let hsm: GrapheneHsm;
let dir: string;
let dbPath: string;
let store: SqliteMetadataStore;
let credentials: CredentialService;

beforeAll(async () => {
  token = createTestToken();
  hsm = await openHsm(token);
  dir = mkdtempSync(join(tmpdir(), 'hsm-kms-credentials-'));
  dbPath = join(dir, 'kms.db');
  store = SqliteMetadataStore.open(dbPath);
  credentials = new CredentialService(hsm, store, clock);
});

afterAll(async () => {
  await store?.close();
  await hsm?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  if (token) removeTestToken(token.dir);
});

/** The real HSM, with generateRandom answering fixed bytes. */
function withRandom(bytes: Buffer): Hsm {
  return new Proxy(hsm, {
    get(target, property) {
      if (property === 'generateRandom') return async () => Buffer.from(bytes);
      const value = Reflect.get(target, property, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

async function unknownCredentialError(promise: Promise<unknown>): Promise<void> {
  await expect(promise).rejects.toMatchObject({
    name: 'KmsError',
    code: 'AuthUnknownCredential',
    message: 'The security token included in the request is invalid.',
  });
}

describe('CredentialService', () => {
  it('when an access key is created, then it looks like an AWS one and resolves to its project and secret', async () => {
    const created = await credentials.create('project-a');

    expect(created.accessKeyId).toMatch(ACCESS_KEY_ID_PATTERN);
    expect(created.secretAccessKey).toMatch(/^[A-Za-z0-9+/]{40}$/);
    expect(await credentials.resolve(created.accessKeyId)).toEqual({
      projectId: 'project-a',
      secretAccessKey: created.secretAccessKey,
    });
    expect(await store.findCredential(created.accessKeyId)).toEqual({
      accessKeyId: created.accessKeyId,
      projectId: 'project-a',
      createdAt: NOW,
      revokedAt: null,
    });
  });

  it('when the secret is derived, then it is the base64 of the first 30 bytes of the HSM MAC of the id', async () => {
    const created = await credentials.create('project-a');

    const mac = await hsm.credentialSecret(created.accessKeyId);

    expect(created.secretAccessKey).toBe(mac.subarray(0, 30).toString('base64'));
  });

  it('when the random bytes are known, then the access key id is AKIA and their RFC 4648 base32', async () => {
    const zeros = new CredentialService(withRandom(Buffer.alloc(10)), store, clock);
    const ones = new CredentialService(withRandom(Buffer.alloc(10, 0xff)), store, clock);
    // "foobarbaz!" in base32 is MZXW6YTBOJRGC6RB (worked out bit by bit, independently of the code).
    const text = new CredentialService(withRandom(Buffer.from('foobarbaz!')), store, clock);

    expect((await zeros.create('p')).accessKeyId).toBe('AKIAAAAAAAAAAAAAAAAA');
    expect((await ones.create('p')).accessKeyId).toBe('AKIA7777777777777777');
    expect((await text.create('p')).accessKeyId).toBe('AKIAMZXW6YTBOJRGC6RB');
  });

  it('when access keys are created, then each has its own id and secret', async () => {
    const a = await credentials.create('project-a');
    const b = await credentials.create('project-a');

    expect(a.accessKeyId).not.toBe(b.accessKeyId);
    expect(a.secretAccessKey).not.toBe(b.secretAccessKey);
  });

  it('when access keys are stored, then no secret is in the database', async () => {
    const created = await credentials.create('project-a');

    const db = new Database(dbPath, { readonly: true });
    try {
      const columns = db.prepare(`SELECT name FROM pragma_table_info('credentials')`).pluck().all();
      expect(columns).toEqual(['access_key_id', 'project_id', 'created_at', 'revoked_at']);
      const rows = JSON.stringify(db.prepare('SELECT * FROM credentials').all());
      expect(rows).not.toContain(created.secretAccessKey);
    } finally {
      db.close();
    }
  });

  it('when the HSM is reopened, then the same access key resolves to the same secret', async () => {
    const created = await credentials.create('project-a');
    await hsm.close();
    hsm = await openHsm(token, { createTokenKeysIfMissing: false });
    credentials = new CredentialService(hsm, store, clock);

    expect((await credentials.resolve(created.accessKeyId)).secretAccessKey).toBe(created.secretAccessKey);
  });

  it.each([
    ['malformed', 'AKIA123'],
    ['lower case', 'akiaaaaaaaaaaaaaaaaa'],
    ['unknown', 'AKIAZZZZZZZZZZZZZZZZ'],
  ])('when the access key id is %s, then resolve throws AuthUnknownCredential', async (_, accessKeyId) => {
    await unknownCredentialError(credentials.resolve(accessKeyId));
  });

  it('when an access key is revoked, then revoke says true once and resolve fails at once', async () => {
    const created = await credentials.create('project-a');
    await credentials.resolve(created.accessKeyId);

    expect(await credentials.revoke(created.accessKeyId)).toBe(true);
    expect(await credentials.revoke(created.accessKeyId)).toBe(false);

    await unknownCredentialError(credentials.resolve(created.accessKeyId));
    expect(await store.findCredential(created.accessKeyId)).toMatchObject({ revokedAt: NOW });
  });

  it('when another process revokes an access key this one has resolved, then the next resolve fails', async () => {
    const created = await credentials.create('project-a');
    await credentials.resolve(created.accessKeyId);
    const otherProcess = SqliteMetadataStore.open(dbPath);
    try {
      expect(await otherProcess.revokeCredential(created.accessKeyId, NOW)).toBe(true);
    } finally {
      await otherProcess.close();
    }

    await unknownCredentialError(credentials.resolve(created.accessKeyId));
  });

  it('when the access key to revoke is unknown or malformed, then revoke returns false', async () => {
    expect(await credentials.revoke('AKIAZZZZZZZZZZZZZZZZ')).toBe(false);
    expect(await credentials.revoke('not an id')).toBe(false);
  });

  it('when an XKS access key is created, then its id is XKSA and base32, and its secret the whole HSM MAC in base64', async () => {
    const created = await credentials.create('project-x', 'xks');
    const zeros = new CredentialService(withRandom(Buffer.alloc(10)), store, clock);

    expect(created.accessKeyId).toMatch(XKS_ACCESS_KEY_ID_PATTERN);
    const mac = await hsm.credentialSecret(created.accessKeyId);
    expect(created.secretAccessKey).toBe(mac.toString('base64'));
    expect(created.secretAccessKey).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect((await zeros.create('p', 'xks')).accessKeyId).toBe('XKSAAAAAAAAAAAAAAAAA');
  });

  it('when an XKS access key is resolved, then only resolveXks knows it, and resolveXks knows no other key', async () => {
    const xks = await credentials.create('project-x', 'xks');
    const signing = await credentials.create('project-x');

    expect(await credentials.resolveXks(xks.accessKeyId)).toEqual({
      projectId: 'project-x',
      secretAccessKey: xks.secretAccessKey,
    });
    await unknownCredentialError(credentials.resolve(xks.accessKeyId));
    await unknownCredentialError(credentials.resolveXks(signing.accessKeyId));

    expect(await credentials.revoke(xks.accessKeyId)).toBe(true);
    await unknownCredentialError(credentials.resolveXks(xks.accessKeyId));
  });
});
