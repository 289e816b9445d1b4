import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DecryptCommand, DescribeKeyCommand, KMSClient, ListAliasesCommand } from '@aws-sdk/client-kms';
import Database from 'better-sqlite3';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { buildCloudHsmShim } from '../support/cloudhsm-shim.js';
import { SOFTHSM_LIBRARY } from '../support/softhsm.js';

/**
 * A data directory made by the previous release (commit 1de1587, the derived key scheme), as
 * scripts/make-previous-scheme-fixture wrote it: its SoftHSM token, kms.db, issuer key, and what was made in it.
 */
const FIXTURE = fileURLToPath(new URL('../fixtures/previous-scheme/', import.meta.url));
const SOFTHSM_CONF_TEMPLATE = fileURLToPath(new URL('../../softhsm/softhsm2.conf.template', import.meta.url));
const KMS = fileURLToPath(new URL('../../scripts/kms', import.meta.url));
const LEGACY_ROOT = 'hsm-kms-root-1';
const FIRST_WRAPPING_ROOT = 'hsm-kms-wrap-1';
const CREDENTIAL_KEY = 'hsm-kms-credentials-1';
/** Made by the first service or `kms` run of this release (it seals tenants' key store PINs). */
const SECRETS_KEY = 'hsm-kms-secrets-1';
/** The schema this release migrates to. */
const CURRENT_SCHEMA = 8;
/** `scripts/kms` builds dist/ first when it is stale, which takes a while on a busy machine. */
const ROTATION_TEST_TIMEOUT_MS = 180_000;

interface Expectations {
  readonly tokenLabel: string;
  readonly pin: string;
  readonly projectId: string;
  readonly region: string;
  readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  readonly keys: {
    readonly enabled: string;
    readonly disabled: string;
    readonly 'pending-deletion': string;
    readonly 'aws-aliased': string;
    readonly 'aws-plain': string;
  };
  readonly keyInfo: readonly Record<string, string>[];
  readonly listedKeys: readonly string[];
  readonly awsAliases: Readonly<Record<string, string>>;
  readonly dataKeys: readonly {
    keyId: string;
    encryptionContext?: Record<string, string>;
    plainText: string;
    cipherText: string;
  }[];
  readonly encryptedData: readonly {
    keyId: string;
    encryptionContext?: Record<string, string>;
    additionalAuthenticatedData?: string;
    plainText: string;
    cipherText: string;
  }[];
  readonly awsCiphertexts: readonly {
    keyId: string;
    encryptionContext?: Record<string, string>;
    plaintextBase64: string;
    ciphertextBlobBase64: string;
  }[];
}

const expected = JSON.parse(readFileSync(path.join(FIXTURE, 'expectations.json'), 'utf8')) as Expectations;
const P = expected.projectId;
const { disabled, 'pending-deletion': pendingDeletion } = expected.keys;
/** Keys that can be used as they are: the disabled key and the one pending deletion refuse until changed. */
const usable = new Set([expected.keys.enabled, expected.keys['aws-aliased'], expected.keys['aws-plain']]);
/** Per key: two Huawei data keys, three encrypt-data texts, two AWS Encrypt ciphertexts and one AWS data key. */
const CIPHERTEXTS_PER_KEY = 8;

/** Keys made after the upgrade: more than the service's handle cache holds, so that old keys' handles are evicted. */
const NEW_KEYS = 17;
const KEY_CACHE_SIZE = 16;

/** A copy of the fixture in a temporary directory, with a softhsm2.conf pointing at the copied token. */
interface DataDirCopy {
  readonly dir: string;
  readonly dbPath: string;
  readonly env: Record<string, string>;
}

async function copyFixture(): Promise<DataDirCopy> {
  const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-previous-scheme-'));
  cpSync(path.join(FIXTURE, 'tokens'), path.join(dir, 'tokens'), { recursive: true });
  cpSync(path.join(FIXTURE, 'data'), path.join(dir, 'data'), { recursive: true });
  const softhsmConf = path.join(dir, 'softhsm2.conf');
  writeFileSync(
    softhsmConf,
    readFileSync(SOFTHSM_CONF_TEMPLATE, 'utf8').replace('@TOKENDIR@', path.join(dir, 'tokens')),
  );
  return {
    dir,
    dbPath: path.join(dir, 'data', 'kms.db'),
    env: {
      KMS_DATA_DIR: path.join(dir, 'data'),
      KMS_PIN: expected.pin,
      KMS_TOKEN_LABEL: expected.tokenLabel,
      KMS_PKCS11_LIBRARY: SOFTHSM_LIBRARY,
      SOFTHSM2_CONF: softhsmConf,
      KMS_REGION: expected.region,
      KMS_PORT: String(await freePort()),
      KMS_KEY_CACHE_SIZE: String(KEY_CACHE_SIZE),
    },
  };
}

/** `kms root rotate` (scripts/kms, built from this checkout) on the copy; its stdout is the new root's label. */
function rotateRoot(copy: DataDirCopy): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(KMS, ['root', 'rotate'], {
    env: { ...process.env, ...copy.env },
    encoding: 'utf8',
    timeout: 120_000,
  });
}

let data: DataDirCopy;
let authToken: string;
let service: ChildService | undefined;
const newKeyIds: string[] = [];
/** [cipher_text, plain_text] of encrypt-data under the keys made after the upgrade. */
const newCiphertexts: [string, string][] = [];

beforeAll(async () => {
  data = await copyFixture();
  authToken = await signProjectToken(loadOrCreateIssuerKeys(data.env.KMS_DATA_DIR as string), P, 3600);
});

afterAll(async () => {
  if (service) await stopService(service);
  rmSync(data.dir, { recursive: true, force: true });
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
async function huawei(action: string, body: unknown, target = service): Promise<{ status: number; body: any }> {
  const res = await fetch(`${(target as ChildService).url}/v1.0/${P}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': authToken },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** An AWS client with the access key the previous release issued (its secret comes from the HSM's credential key). */
function aws(target = service): KMSClient {
  return new KMSClient({
    endpoint: (target as ChildService).url,
    region: expected.region,
    credentials: { ...expected.credentials },
    maxAttempts: 1,
  });
}

function readDb<T>(read: (db: Database.Database) => T, copy = data): T {
  const db = new Database(copy.dbPath, { readonly: true });
  try {
    return read(db);
  } finally {
    db.close();
  }
}

interface VersionRow {
  readonly key_id: string;
  readonly scheme: string;
  readonly root_key_label: string;
}

function keyVersions(copy = data): VersionRow[] {
  return readDb(
    (db) => db.prepare('SELECT key_id, scheme, root_key_label FROM key_versions ORDER BY key_id').all(),
    copy,
  ) as VersionRow[];
}

function rootKeys(copy = data): unknown[] {
  return readDb((db) => db.prepare('SELECT label, state FROM root_keys ORDER BY label').all(), copy);
}

/** The labels of the token objects, read through PKCS#11 from this process (the service has its own session). */
function tokenObjectLabels(copy = data): string[] {
  // SoftHSM reads it at C_Initialize.
  process.env.SOFTHSM2_CONF = copy.env.SOFTHSM2_CONF;
  const lib = new pkcs11js.PKCS11();
  lib.load(SOFTHSM_LIBRARY);
  lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === expected.tokenLabel);
    if (!slot) throw new Error('the fixture token was not found');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, expected.pin);
    lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_TOKEN, value: true }]);
    const found = lib.C_FindObjects(session, 100);
    lib.C_FindObjectsFinal(session);
    const labels = found.map((handle) =>
      String(lib.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value),
    );
    lib.C_CloseSession(session);
    return labels.sort();
  } finally {
    lib.C_Finalize();
  }
}

/**
 * Opens every ciphertext of the fixture whose key is in `keyIds`, through the dialect that made it, and returns
 * what each gave back beside what it should have (so that one toEqual shows every mismatch at once).
 */
async function openCiphertexts(
  keyIds: ReadonlySet<string>,
  target = service,
): Promise<{ got: unknown[]; want: unknown[] }> {
  const got: unknown[] = [];
  const want: unknown[] = [];
  for (const made of expected.dataKeys.filter((d) => keyIds.has(d.keyId))) {
    const res = await huawei(
      'decrypt-datakey',
      {
        key_id: made.keyId,
        cipher_text: made.cipherText,
        datakey_cipher_length: String(made.plainText.length / 2),
        encryption_context: made.encryptionContext,
      },
      target,
    );
    got.push([made.cipherText, res.status, res.body.data_key]);
    want.push([made.cipherText, 200, made.plainText]);
  }
  for (const made of expected.encryptedData.filter((d) => keyIds.has(d.keyId))) {
    const res = await huawei(
      'decrypt-data',
      {
        cipher_text: made.cipherText,
        encryption_context: made.encryptionContext,
        additional_authenticated_data: made.additionalAuthenticatedData,
      },
      target,
    );
    got.push([made.cipherText, res.status, res.body.key_id, res.body.plain_text]);
    want.push([made.cipherText, 200, made.keyId, made.plainText]);
  }
  const client = aws(target);
  for (const made of expected.awsCiphertexts.filter((d) => keyIds.has(d.keyId))) {
    const opened = await client.send(
      new DecryptCommand({
        CiphertextBlob: Buffer.from(made.ciphertextBlobBase64, 'base64'),
        EncryptionContext: made.encryptionContext,
      }),
    );
    got.push([made.ciphertextBlobBase64, Buffer.from(opened.Plaintext ?? []).toString('base64'), opened.KeyId]);
    want.push([made.ciphertextBlobBase64, made.plaintextBase64, expect.stringContaining(made.keyId)]);
  }
  client.destroy();
  return { got, want };
}

async function expectKeysAsBefore(): Promise<void> {
  for (const info of expected.keyInfo) {
    const res = await huawei('describe-key', { key_id: info.key_id });
    expect(res.status).toBe(200);
    expect(res.body.key_info).toMatchObject(info);
  }
  const listed = await huawei('list-keys', {});
  // Oldest first: the keys of the previous release, then those made since.
  expect(listed.body.keys.slice(0, expected.listedKeys.length)).toEqual(expected.listedKeys);
  expect(listed.body.keys.slice(expected.listedKeys.length).sort()).toEqual([...newKeyIds].sort());
  const client = aws();
  const aliases = await client.send(new ListAliasesCommand({}));
  expect(
    Object.fromEntries((aliases.Aliases ?? []).map((alias) => [alias.AliasName, alias.TargetKeyId])),
  ).toMatchObject(expected.awsAliases);
  const described = await client.send(new DescribeKeyCommand({ KeyId: 'alias/previous-aws' }));
  expect([described.KeyMetadata?.KeyId, described.KeyMetadata?.KeyState]).toEqual([
    expected.keys['aws-aliased'],
    'Enabled',
  ]);
  client.destroy();
}

/** The disabled key and the one pending deletion refuse to decrypt: KMS.0209 and KMS.0210. */
async function expectUnusableKeysRefuse(): Promise<void> {
  const refusals = [];
  for (const keyId of [disabled, pendingDeletion]) {
    const made = expected.encryptedData.find((d) => d.keyId === keyId && !d.encryptionContext);
    const res = await huawei('decrypt-data', {
      cipher_text: made?.cipherText,
      additional_authenticated_data: made?.additionalAuthenticatedData,
    });
    refusals.push([res.status, res.body.error?.error_code]);
  }
  expect(refusals).toEqual([
    [400, 'KMS.0209'],
    [400, 'KMS.0210'],
  ]);
}

describe('a data directory made by the previous release (derived key versions), under the current service', () => {
  it('when the current service starts on it, then kms.db goes from user_version 5 to the current schema and the derived versions stay as they were, under the retiring legacy root', async () => {
    expect(readDb((db) => db.pragma('user_version', { simple: true }))).toBe(5);
    service = await spawnService(data.env);
    expect(readDb((db) => db.pragma('user_version', { simple: true }))).toBe(CURRENT_SCHEMA);
    const versions = keyVersions();
    expect(versions).toHaveLength(Object.keys(expected.keys).length);
    for (const version of versions) {
      expect([version.scheme, version.root_key_label]).toEqual(['cbc-encrypt-data-v1', LEGACY_ROOT]);
    }
    expect(rootKeys()).toEqual([
      { label: LEGACY_ROOT, state: 'retiring' },
      { label: FIRST_WRAPPING_ROOT, state: 'active' },
    ]);
    expect(tokenObjectLabels()).toEqual([CREDENTIAL_KEY, LEGACY_ROOT, SECRETS_KEY, FIRST_WRAPPING_ROOT]);
  });

  it('then every ciphertext of a usable key decrypts to its plaintext, and key states, aliases and lists are as before', async () => {
    const { got, want } = await openCiphertexts(usable);
    expect(got).toHaveLength(usable.size * CIPHERTEXTS_PER_KEY);
    expect(got).toEqual(want);
    await expectKeysAsBefore();
    await expectUnusableKeysRefuse();
  });

  it('then new keys are made under the wrapping root while the old keys still work', async () => {
    for (let i = 0; i < NEW_KEYS; i++) {
      const created = await huawei('create-key', { key_alias: `made-after-upgrade-${i}` });
      expect(created.status).toBe(200);
      const keyId = created.body.key_info.key_id as string;
      newKeyIds.push(keyId);
      const sealed = await huawei('encrypt-data', { key_id: keyId, plain_text: `new scheme ${i}` });
      newCiphertexts.push([sealed.body.cipher_text, `new scheme ${i}`]);
    }
    const fresh = keyVersions().filter((version) => newKeyIds.includes(version.key_id));
    expect(fresh).toHaveLength(NEW_KEYS);
    for (const version of fresh)
      expect([version.scheme, version.root_key_label]).toEqual(['kwp-v1', FIRST_WRAPPING_ROOT]);
    // Opened after the new keys filled the handle cache: derived again from the legacy root.
    const { got, want } = await openCiphertexts(new Set([expected.keys.enabled]));
    expect(got).toEqual(want);
  });

  it(
    'when `kms root rotate` runs beside the service, then every version is kept with kwp-v1 under the new root, the legacy root is gone from the token, and every old ciphertext still decrypts',
    async () => {
      const run = rotateRoot(data);
      expect(run.status, run.stderr).toBe(0);
      const newRoot = run.stdout.trim();
      expect(newRoot).toBe('hsm-kms-wrap-2');
      // The legacy versions move to hsm-kms-wrap-1 first (finishing the migration), then every version to hsm-kms-wrap-2.
      const legacy = Object.keys(expected.keys).length;
      expect(run.stderr).toContain(
        `kms: ${legacy + legacy + NEW_KEYS} key versions rewrapped; destroyed ["${LEGACY_ROOT}","${FIRST_WRAPPING_ROOT}"]`,
      );

      const versions = keyVersions();
      expect(versions).toHaveLength(legacy + NEW_KEYS);
      for (const version of versions) expect([version.scheme, version.root_key_label]).toEqual(['kwp-v1', newRoot]);
      expect(rootKeys()).toEqual([{ label: newRoot, state: 'active' }]);
      expect(tokenObjectLabels()).toEqual([CREDENTIAL_KEY, SECRETS_KEY, newRoot]);

      // The service still holds the legacy records of some versions; the evicted ones must be read again.
      const { got, want } = await openCiphertexts(usable);
      expect(got).toEqual(want);
      for (const [cipherText, plainText] of newCiphertexts) {
        expect((await huawei('decrypt-data', { cipher_text: cipherText })).body.plain_text).toBe(plainText);
      }
      await expectKeysAsBefore();
      await expectUnusableKeysRefuse();

      // Enabled again, the disabled key and the key pending deletion open what they sealed under the old scheme.
      expect((await huawei('enable-key', { key_id: disabled })).status).toBe(200);
      expect((await huawei('cancel-key-deletion', { key_id: pendingDeletion })).status).toBe(200);
      expect((await huawei('enable-key', { key_id: pendingDeletion })).status).toBe(200);
      const all = await openCiphertexts(new Set(Object.values(expected.keys)));
      expect(all.got).toHaveLength(legacy * CIPHERTEXTS_PER_KEY);
      expect(all.got).toEqual(all.want);
    },
    ROTATION_TEST_TIMEOUT_MS,
  );

  it('when the service restarts after the migration, then every old ciphertext still decrypts', async () => {
    await stopService(service as ChildService);
    service = await spawnService(data.env);
    const { got, want } = await openCiphertexts(new Set(Object.values(expected.keys)));
    expect(got).toHaveLength(Object.keys(expected.keys).length * CIPHERTEXTS_PER_KEY);
    expect(got).toEqual(want);
    for (const info of expected.keyInfo) {
      const res = await huawei('describe-key', { key_id: info.key_id });
      expect([res.body.key_info.key_alias, res.body.key_info.key_state]).toEqual([info.key_alias, '2']);
    }
  });
});

describe('a data directory made by the previous release, migrated before the current service ever ran', () => {
  let copy: DataDirCopy;
  beforeAll(async () => {
    copy = await copyFixture();
  });
  afterAll(() => rmSync(copy.dir, { recursive: true, force: true }));

  it(
    'when `kms root rotate` runs on it first, then the legacy versions move to the first wrapping root and the service opens every old ciphertext',
    async () => {
      const run = rotateRoot(copy);
      expect(run.status, run.stderr).toBe(0);
      expect(run.stdout.trim()).toBe(FIRST_WRAPPING_ROOT);
      const legacy = Object.keys(expected.keys).length;
      expect(run.stderr).toContain(`kms: ${legacy} key versions rewrapped; destroyed ["${LEGACY_ROOT}"]`);
      expect(readDb((db) => db.pragma('user_version', { simple: true }), copy)).toBe(CURRENT_SCHEMA);
      for (const version of keyVersions(copy)) {
        expect([version.scheme, version.root_key_label]).toEqual(['kwp-v1', FIRST_WRAPPING_ROOT]);
      }
      expect(rootKeys(copy)).toEqual([{ label: FIRST_WRAPPING_ROOT, state: 'active' }]);
      expect(tokenObjectLabels(copy)).toEqual([CREDENTIAL_KEY, SECRETS_KEY, FIRST_WRAPPING_ROOT]);

      const started = await spawnService(copy.env);
      try {
        const opened = await openCiphertexts(usable, started);
        expect(opened.got).toEqual(opened.want);
      } finally {
        await stopService(started);
      }
    },
    ROTATION_TEST_TIMEOUT_MS,
  );
});

describe('a data directory made by the previous release whose keys were all purged before the upgrade', () => {
  let copy: DataDirCopy;
  beforeAll(async () => {
    copy = await copyFixture();
    // What the previous release's deletion sweep leaves once every key is purged: no key and no version rows.
    const db = new Database(copy.dbPath);
    db.exec('DELETE FROM aliases; DELETE FROM tags; DELETE FROM key_versions; DELETE FROM keys;');
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
  });
  afterAll(() => rmSync(copy.dir, { recursive: true, force: true }));

  it(
    'when `kms root rotate` runs, then the legacy root is destroyed all the same: old backups of derivation data can no longer be opened',
    async () => {
      expect(tokenObjectLabels(copy)).toEqual([CREDENTIAL_KEY, LEGACY_ROOT]);
      const run = rotateRoot(copy);
      expect(run.status, run.stderr).toBe(0);
      expect(run.stdout.trim()).toBe(FIRST_WRAPPING_ROOT);
      expect(run.stderr).toContain(`kms: 0 key versions rewrapped; destroyed ["${LEGACY_ROOT}"]`);
      expect(rootKeys(copy)).toEqual([{ label: FIRST_WRAPPING_ROOT, state: 'active' }]);
      expect(tokenObjectLabels(copy)).toEqual([CREDENTIAL_KEY, SECRETS_KEY, FIRST_WRAPPING_ROOT]);
    },
    ROTATION_TEST_TIMEOUT_MS,
  );
});

describe('a data directory made by the previous release, on a module that cannot derive (the CloudHSM-rules shim)', () => {
  let copy: DataDirCopy;
  let shimEnv: Record<string, string>;
  beforeAll(async () => {
    copy = await copyFixture();
    shimEnv = { ...copy.env, KMS_PKCS11_LIBRARY: buildCloudHsmShim(), HSM_KMS_SHIM_TARGET: SOFTHSM_LIBRARY };
  });
  afterAll(() => rmSync(copy.dir, { recursive: true, force: true }));

  it(
    'when a derived version is used there, then it is refused until `kms root rotate` on a module that can derive migrates it, and then it decrypts there',
    async () => {
      const made = expected.encryptedData.find((d) => d.keyId === expected.keys.enabled && !d.encryptionContext);
      const decrypt = (target: ChildService) =>
        huawei(
          'decrypt-data',
          { cipher_text: made?.cipherText, additional_authenticated_data: made?.additionalAuthenticatedData },
          target,
        );

      const onShim = await spawnService(shimEnv);
      try {
        const refused = await decrypt(onShim);
        expect([refused.status, refused.body.error_code]).toEqual([503, 'KMS.0104']);
        expect(onShim.log()).toContain('is kept with the legacy scheme cbc-encrypt-data-v1, which profile cloudhsm');
      } finally {
        await stopService(onShim);
      }

      const run = rotateRoot(copy);
      expect(run.status, run.stderr).toBe(0);

      const migrated = await spawnService(shimEnv);
      try {
        const opened = await openCiphertexts(usable, migrated);
        expect(opened.got).toEqual(opened.want);
      } finally {
        await stopService(migrated);
      }
    },
    ROTATION_TEST_TIMEOUT_MS,
  );
});
