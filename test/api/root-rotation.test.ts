import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import type { KeptKeyVersion } from '../../src/core/keys.js';
import { RootKeyService } from '../../src/core/root-key.service.js';
import { CREDENTIAL_KEY_LABEL, GrapheneHsm, SECRET_SEALING_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

/**
 * Root rotation end to end (issue 9, item 2): the real service as its own process(es), the real `kms root rotate`
 * (scripts/kms) beside it, and SIGKILL at the worst moments. What the store and the token hold afterwards is read
 * from outside: kms.db read-only, and the token through PKCS#11 from this process.
 */

const KMS = fileURLToPath(new URL('../../scripts/kms', import.meta.url));
const P = 'projectrotation';
const wrap = (n: number) => `hsm-kms-wrap-${n}`;

interface Site {
  readonly token: TestToken;
  readonly env: Record<string, string>;
  readonly dataDir: string;
  readonly authToken: string;
}

/** A fresh SoftHSM token and data directory, configured as an operator would configure the service and the CLI. */
async function newSite(extraEnv: Record<string, string> = {}): Promise<Site> {
  const token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const env = {
    ...token.serviceEnv,
    KMS_DATA_DIR: dataDir,
    KMS_PORT: String(await freePort()),
    ...extraEnv,
  };
  return { token, env, dataDir, authToken: await signProjectToken(loadOrCreateIssuerKeys(dataDir), P, 3600) };
}

interface Answer {
  readonly status: number;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
  readonly body: any;
}

/** One Huawei-dialect request. A connection that fails (the process died) rejects. */
async function call(site: Site, service: ChildService, action: string, body: unknown): Promise<Answer> {
  const res = await fetch(`${service.url}/v1.0/${P}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': site.authToken },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Runs `work` over `items` with `concurrency` requests in flight. */
async function inParallel<T, R>(items: readonly T[], concurrency: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return results;
}

/** A ciphertext made through the API (a data key's, or a text's) and what opening it must give back. */
interface Sealed {
  readonly kind: 'datakey' | 'data';
  readonly keyId: string;
  readonly cipherText: string;
  readonly plainText: string;
}

async function createKey(site: Site, service: ChildService, alias: string): Promise<string> {
  const res = await call(site, service, 'create-key', { key_alias: alias });
  if (res.status !== 200) throw new Error(`create-key answered ${res.status}: ${JSON.stringify(res.body)}`);
  return res.body.key_info.key_id;
}

/** The answer, and, when it is 200, the ciphertext and what opening it must give back. */
type SealAnswer = Answer & { readonly sealed?: Sealed };

async function sealDataKey(site: Site, service: ChildService, keyId: string): Promise<SealAnswer> {
  const res = await call(site, service, 'create-datakey', { key_id: keyId, encryption_context: { key: keyId } });
  if (res.status !== 200) return res;
  return {
    ...res,
    sealed: { kind: 'datakey', keyId, cipherText: res.body.cipher_text, plainText: res.body.plain_text },
  };
}

async function sealData(site: Site, service: ChildService, keyId: string, text: string): Promise<SealAnswer> {
  const res = await call(site, service, 'encrypt-data', { key_id: keyId, plain_text: text });
  if (res.status !== 200) return res;
  return { ...res, sealed: { kind: 'data', keyId, cipherText: res.body.cipher_text, plainText: text } };
}

/** Opens the ciphertext through the API: the status, and whether it gave back what was sealed. */
async function open(site: Site, service: ChildService, sealed: Sealed): Promise<{ status: number; same: boolean }> {
  if (sealed.kind === 'datakey') {
    const res = await call(site, service, 'decrypt-datakey', {
      key_id: sealed.keyId,
      cipher_text: sealed.cipherText,
      datakey_cipher_length: '64',
      encryption_context: { key: sealed.keyId },
    });
    return { status: res.status, same: res.body.data_key === sealed.plainText };
  }
  const res = await call(site, service, 'decrypt-data', { cipher_text: sealed.cipherText });
  return { status: res.status, same: res.body.plain_text === sealed.plainText };
}

/** Opens every ciphertext; names those that did not give back what was sealed (none when all did). */
async function unopened(site: Site, service: ChildService, all: readonly Sealed[]): Promise<string[]> {
  const results = await inParallel(all, 8, async (sealed) => ({ sealed, ...(await open(site, service, sealed)) }));
  return results
    .filter((r) => r.status !== 200 || !r.same)
    .map((r) => `${r.sealed.kind} of key ${r.sealed.keyId}: ${r.status}${r.same ? '' : ', not what was sealed'}`);
}

interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/**
 * `kms root rotate` as its own process. `killWhen`: SIGKILL it as soon as its stderr so far matches (checked on
 * each chunk, so the kill lands while it works on).
 */
function rotate(site: Site, killWhen?: RegExp): Promise<CliRun> {
  const started = performance.now();
  const child = spawn(KMS, ['root', 'rotate'], {
    env: { ...process.env, ...site.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (killWhen?.test(stderr) && child.exitCode === null) child.kill('SIGKILL');
  });
  return new Promise<CliRun>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - started }));
  });
}

/** The root keys and how many key versions each keeps, as the store records them (kms.db opened read-only). */
function storeRoots(site: Site): { roots: { label: string; state: string }[]; versionsByRoot: Record<string, number> } {
  const db = new Database(path.join(site.dataDir, 'kms.db'), { readonly: true });
  try {
    const roots = db.prepare('SELECT label, state FROM root_keys ORDER BY label').all() as {
      label: string;
      state: string;
    }[];
    const counts = db
      .prepare('SELECT root_key_label AS label, count(*) AS n FROM key_versions GROUP BY root_key_label')
      .all() as { label: string; n: number }[];
    return { roots, versionsByRoot: Object.fromEntries(counts.map((c) => [c.label, c.n])) };
  } finally {
    db.close();
  }
}

function keyStates(site: Site): Record<string, number> {
  const db = new Database(path.join(site.dataDir, 'kms.db'), { readonly: true });
  try {
    const rows = db.prepare('SELECT state, count(*) AS n FROM keys GROUP BY state').all() as {
      state: string;
      n: number;
    }[];
    return Object.fromEntries(rows.map((r) => [r.state, r.n]));
  } finally {
    db.close();
  }
}

/** Runs `use` with the project's HSM adapter on the site's token, in this process, closing it after. */
async function withHsm<T>(site: Site, use: (hsm: GrapheneHsm) => Promise<T>): Promise<T> {
  // SoftHSM reads the variable at C_Initialize: the token of this site, whichever was made last.
  process.env.SOFTHSM2_CONF = site.token.softhsmConf;
  const hsm = await GrapheneHsm.open({
    library: site.token.library,
    tokenLabel: site.token.tokenLabel,
    pin: site.token.pin,
    poolSize: 1,
    keyCacheSize: 16,
    createTokenKeysIfMissing: false,
  });
  try {
    return await use(hsm);
  } finally {
    await hsm.close();
  }
}

/** Brings every key version of the site's database back in the HSM (in this process); how many there were. */
async function openEveryVersion(site: Site): Promise<number> {
  return withHsm(site, async (hsm) => {
    const store = SqliteMetadataStore.open(path.join(site.dataDir, 'kms.db'));
    try {
      const versions = await store.listVersionsNotUnder('none', 100_000);
      for (const version of versions) await hsm.prepareKey(version);
      return versions.length;
    } finally {
      await store.close();
    }
  });
}

/**
 * `count` keys as KeyService.create leaves them, written in one transaction on a connection of the test's own
 * (through the API this takes 10 ms a key on a busy machine). The wrapped material is real: generated and wrapped
 * under `rootKeyLabel` on the token by the project's own HSM adapter, in this process.
 */
async function insertKeys(site: Site, count: number, rootKeyLabel: string): Promise<string[]> {
  const rows = await withHsm(site, async (hsm) => {
    const made: { id: string; kept: KeptKeyVersion }[] = [];
    for (let i = 0; i < count; i++) {
      const id = randomUUID();
      made.push({ id, kept: await hsm.createKeyVersion(id, 0, rootKeyLabel) });
    }
    return made;
  });
  const db = new Database(path.join(site.dataDir, 'kms.db'));
  try {
    const insertKey = db.prepare(`
      INSERT INTO keys (id, project_id, alias, alias_name, description, state, key_spec, key_usage, origin,
        created_at, deletion_date, current_version)
      VALUES (?, ?, '', '', '', 'Enabled', 'AES_256', 'ENCRYPT_DECRYPT', 'kms', ?, NULL, 0)`);
    const insertVersion = db.prepare(
      `INSERT INTO key_versions (key_id, version, scheme, root_key_label, key_material, created_at)
        VALUES (?, 0, ?, ?, ?, ?)`,
    );
    const now = Date.now();
    db.transaction(() => {
      for (const { id, kept } of rows) {
        insertKey.run(id, P, now);
        insertVersion.run(id, kept.scheme, kept.rootKeyLabel, kept.keyMaterial, now);
      }
    })();
  } finally {
    db.close();
  }
  return rows.map((row) => row.id);
}

/**
 * Runs 8 concurrent create-key loops against the service and, once 20 creations were answered, SIGKILLs it between
 * the two writes of a creation (KeyService.create records the key PendingCreation, then enables it). To land the
 * kill there, this process takes SQLite's write lock whenever it is free and looks for a key in PendingCreation:
 * while it holds the lock, the service cannot enable that key, so the kill finds the key half-made. Returns the keys
 * whose creation was answered 200, and whether the kill caught a half-made key.
 */
async function killDuringKeyCreation(
  site: Site,
  service: ChildService,
): Promise<{ acknowledged: string[]; caught: boolean }> {
  const acknowledged: string[] = [];
  let killed = false;
  const creator = async (lane: number) => {
    for (let i = 0; !killed; i++) {
      try {
        const res = await call(site, service, 'create-key', { key_alias: `crash-${lane}-${i}` });
        if (res.status === 200) acknowledged.push(res.body.key_info.key_id);
        else throw new Error(`create-key answered ${res.status}: ${JSON.stringify(res.body)}`);
      } catch (err) {
        if (killed) return; // the connection died with the process
        throw err;
      }
    }
  };
  const creators = Array.from({ length: 8 }, (_, lane) => creator(lane));
  while (acknowledged.length < 20) await nextTurn();
  const db = new Database(path.join(site.dataDir, 'kms.db'), { timeout: 0 });
  let caught = false;
  try {
    const pending = db.prepare("SELECT count(*) FROM keys WHERE state = 'PendingCreation'").pluck();
    // A busy loop, not one that yields: the service goes on with the 8 requests it holds meanwhile.
    // Long enough for a loaded machine (the full suite runs files side by side): the window is short.
    const deadline = performance.now() + 10_000;
    while (!caught && performance.now() < deadline) {
      try {
        db.exec('BEGIN IMMEDIATE');
      } catch {
        continue; // the service is writing
      }
      caught = (pending.get() as number) > 0;
      if (!caught) db.exec('ROLLBACK');
    }
    killed = true;
    await stopService(service, 'SIGKILL');
  } finally {
    if (db.inTransaction) db.exec('ROLLBACK');
    db.close();
  }
  await Promise.all(creators);
  return { acknowledged, caught };
}

/**
 * Every object on the token as `class:label`, sorted, seen through PKCS#11 from this process (a second process
 * beside the service: SoftHSM shows it the token's files as they are now).
 */
function tokenObjects(site: Site): string[] {
  // SoftHSM reads the variable at C_Initialize: the token of this site, whichever was made last.
  process.env.SOFTHSM2_CONF = site.token.softhsmConf;
  const lib = new pkcs11js.PKCS11();
  lib.load(site.token.library);
  lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === site.token.tokenLabel);
    if (!slot) throw new Error('test token not found');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, site.token.pin);
    lib.C_FindObjectsInit(session, []);
    const found = lib.C_FindObjects(session, 10_000);
    lib.C_FindObjectsFinal(session);
    const objects = found.map((handle) => {
      const [klass, label] = lib
        .C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_LABEL }])
        .map((attribute) => attribute.value as Buffer);
      const className =
        klass?.readUInt32LE(0) === pkcs11js.CKO_SECRET_KEY ? 'secret' : `class ${klass?.toString('hex')}`;
      return `${className}:${label?.toString('utf8')}`;
    });
    lib.C_CloseSession(session);
    return objects.sort();
  } finally {
    lib.C_Finalize();
  }
}

/** The service's own token keys, on the token whatever the roots. */
const SERVICE_KEYS = [CREDENTIAL_KEY_LABEL, SECRET_SEALING_KEY_LABEL];
const secretKeys = (...labels: string[]) => labels.map((label) => `secret:${label}`).sort();

// scripts/kms builds dist/ when src/ changed: done here, so that no rotation below is timed with a build in it.
beforeAll(() => {
  execFileSync(KMS, ['help'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120_000 });
}, 120_000);

describe('kms root rotate while the service serves', () => {
  let site: Site;
  let service: ChildService;
  const sealed: Sealed[] = [];

  beforeAll(async () => {
    // A key cache smaller than the keys in use: requests keep unwrapping versions from the records they cached,
    // which a rotation makes stale.
    site = await newSite({ KMS_WORKERS: '2', KMS_KEY_CACHE_SIZE: '16' });
    service = await spawnService(site.env, 2);
    const keyIds = await inParallel(
      Array.from({ length: 50 }, (_, i) => i),
      8,
      (i) => createKey(site, service, `before-${i}`),
    );
    // Per key: two data keys and one sealed text.
    const jobs = keyIds.flatMap((keyId) => [0, 1, 2].map((n) => ({ keyId, n })));
    sealed.push(
      ...(await inParallel(jobs, 8, async ({ keyId, n }) => {
        const res =
          n === 2 ? await sealData(site, service, keyId, `text of ${keyId}`) : await sealDataKey(site, service, keyId);
        if (!res.sealed) throw new Error(`sealing answered ${res.status}: ${JSON.stringify(res.body)}`);
        return res.sealed;
      })),
    );
  }, 60_000);
  afterAll(async () => {
    if (service) await stopService(service);
    if (site) removeTestToken(site.token.dir);
  });

  it('when the root is rotated under load, then no request fails, everything decrypts, and the old root is gone from the store and the token', async () => {
    const failures: string[] = [];
    let served = 0;
    let servedDuringRotation = 0;
    let rotating = false;
    let stop = false;
    const made: Sealed[] = [];
    const pick = <T>(list: readonly T[]) => list[Math.floor(Math.random() * list.length)] as T;
    const record = (action: string, status: number, detail: unknown = '') => {
      served++;
      if (rotating) servedDuringRotation++;
      if (status !== 200) failures.push(`${action}: ${status} ${JSON.stringify(detail)}`);
    };
    /** One round of requests; lanes 0-3 create keys, so that creations race the moment the new root is activated. */
    const round = async (lane: number, i: number) => {
      const old = pick(sealed);
      switch (lane < 4 ? 0 : i % 4) {
        case 0: {
          const res = await call(site, service, 'create-key', { key_alias: `during-${lane}-${i}` });
          record('create-key', res.status, res.body);
          if (res.status !== 200) break;
          const data = await sealDataKey(site, service, res.body.key_info.key_id);
          record('create-datakey of a new key', data.status, data.body);
          if (data.sealed) made.push(data.sealed);
          break;
        }
        case 1: {
          const res = await sealDataKey(site, service, old.keyId);
          record('create-datakey', res.status, res.body);
          if (res.sealed) made.push(res.sealed);
          break;
        }
        case 2: {
          const res = await open(site, service, old);
          record(`decrypt old ${old.kind}`, res.same ? res.status : -res.status);
          break;
        }
        case 3: {
          const res = await sealData(site, service, old.keyId, `during ${lane}/${i}`);
          record('encrypt-data', res.status, res.body);
          if (!res.sealed) break;
          const back = await open(site, service, res.sealed);
          record('decrypt-data', back.same ? back.status : -back.status);
          made.push(res.sealed);
          break;
        }
      }
    };
    const client = async (lane: number) => {
      for (let i = 0; !stop; i++) {
        await round(lane, i).catch((err: unknown) => record('request', 0, String(err)));
      }
    };
    const clients = Array.from({ length: 12 }, (_, lane) => client(lane));
    await new Promise((r) => setTimeout(r, 300));
    rotating = true;
    const run = await rotate(site);
    rotating = false;
    // Go on a while: the service's cached version records still name the root that is now destroyed.
    await new Promise((r) => setTimeout(r, 500));
    stop = true;
    await Promise.all(clients);

    console.info(
      `rotation under load (2 workers): kms root rotate ran ${run.ms.toFixed(0)} ms; ${servedDuringRotation} ` +
        `requests served meanwhile, ${served} in all; ${run.stderr.trim().split('\n').at(-1)}`,
    );
    expect(failures).toEqual([]);
    expect(servedDuringRotation).toBeGreaterThan(0);
    expect([run.code, run.stdout]).toEqual([0, `${wrap(2)}\n`]);

    const store = storeRoots(site);
    expect(store.roots).toEqual([{ label: wrap(2), state: 'active' }]);
    expect(Object.keys(store.versionsByRoot)).toEqual([wrap(2)]);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(2)));
    sealed.push(...made);
    expect(await unopened(site, service, sealed)).toEqual([]);
  });

  it('when the service restarts after the rotation, then every ciphertext still decrypts', async () => {
    await stopService(service);
    service = await spawnService(site.env, 2);
    expect(await unopened(site, service, sealed)).toEqual([]);
  });

  it('when the root is rotated a second time, then it is hsm-kms-wrap-3 alone and every ciphertext still decrypts', async () => {
    const run = await rotate(site);
    expect([run.code, run.stdout]).toEqual([0, `${wrap(3)}\n`]);
    const store = storeRoots(site);
    expect(store.roots).toEqual([{ label: wrap(3), state: 'active' }]);
    expect(Object.keys(store.versionsByRoot)).toEqual([wrap(3)]);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(3)));
    expect(await unopened(site, service, sealed)).toEqual([]);
  });
});

describe('SIGKILL during a rotation and during key creation', () => {
  const KEYS = 1_000;
  let site: Site;
  let service: ChildService;
  const sealed: Sealed[] = [];

  beforeAll(async () => {
    site = await newSite({ KMS_KEY_CACHE_SIZE: '16' });
    service = await spawnService(site.env);
    const started = performance.now();
    const keyIds = await insertKeys(site, KEYS, wrap(1));
    const inserted = performance.now();
    sealed.push(
      ...(await inParallel(keyIds, 8, async (keyId) => {
        const res = await sealDataKey(site, service, keyId);
        if (!res.sealed) throw new Error(`create-datakey answered ${res.status}: ${JSON.stringify(res.body)}`);
        return res.sealed;
      })),
    );
    console.info(
      `${KEYS} keys made in ${(inserted - started).toFixed(0)} ms, a data key of each through the API in ` +
        `${(performance.now() - inserted).toFixed(0)} ms`,
    );
  }, 60_000);
  afterAll(async () => {
    if (service) await stopService(service);
    if (site) removeTestToken(site.token.dir);
  });

  it('when the rotation is killed half-way, then the service decrypts everything under both roots, also after a restart, and a second run finishes it', async () => {
    const killed = await rotate(site, /key versions rewrapped/);
    expect(killed.signal).toBe('SIGKILL');
    const half = storeRoots(site);
    console.info(`rotation killed after ${killed.ms.toFixed(0)} ms: ${JSON.stringify(half.versionsByRoot)}`);
    expect(half.roots).toEqual([
      { label: wrap(1), state: 'retiring' },
      { label: wrap(2), state: 'active' },
    ]);
    expect(half.versionsByRoot[wrap(1)]).toBeGreaterThan(0);
    expect(half.versionsByRoot[wrap(2)]).toBeGreaterThan(0);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(1), wrap(2)));
    // A key cache of 16 for 1,000 keys: nearly every decryption unwraps its version, under whichever root keeps it.
    expect(await unopened(site, service, sealed)).toEqual([]);
    // And after the service, too, is killed and starts again on the half-rotated store and token.
    await stopService(service, 'SIGKILL');
    service = await spawnService(site.env);
    expect(await unopened(site, service, sealed)).toEqual([]);

    const resumed = await rotate(site);
    console.info(`resumed rotation: ${resumed.ms.toFixed(0)} ms; ${resumed.stderr.trim().split('\n').at(-1)}`);
    // It finishes the interrupted rotation (and destroys wrap-1), then rotates once more as asked.
    expect([resumed.code, resumed.stdout]).toEqual([0, `${wrap(3)}\n`]);
    expect(resumed.stderr).toContain(`destroyed ${JSON.stringify([wrap(1), wrap(2)])}`);
    expect(storeRoots(site)).toEqual({
      roots: [{ label: wrap(3), state: 'active' }],
      versionsByRoot: { [wrap(3)]: KEYS },
    });
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(3)));
    expect(await unopened(site, service, sealed)).toEqual([]);
  });

  it('when the service is killed during key creation, then after restart every acknowledged key works, none is half-made, and the token holds no extra object', async () => {
    // wrap-3 after the test above; wrap-1 when this test runs alone.
    const [active] = storeRoots(site).roots.map((root) => root.label);
    const { acknowledged, caught } = await killDuringKeyCreation(site, service);
    const halfMade = keyStates(site).PendingCreation;
    expect(caught).toBe(true);
    expect(acknowledged.length).toBeGreaterThan(0);
    expect(halfMade).toBeGreaterThan(0);

    service = await spawnService(site.env);
    const after = keyStates(site);
    console.info(
      `killed during key creation: ${acknowledged.length} creations acknowledged, ${halfMade} key(s) left ` +
        `PendingCreation; after the restart ${JSON.stringify(after)}`,
    );
    expect(after.PendingCreation).toBeUndefined();
    expect(service.log()).toMatch(/"msg":"removed keys left half-created by a crash"/);
    // Every key left has its one version, under the active root; the acknowledged ones are among them.
    expect(after.Enabled).toBeGreaterThanOrEqual(KEYS + acknowledged.length);
    expect(storeRoots(site).versionsByRoot).toEqual({ [active as string]: after.Enabled });
    for (const keyId of acknowledged) {
      const res = await sealDataKey(site, service, keyId);
      expect(res.status).toBe(200);
      if (res.sealed) sealed.push(res.sealed);
    }
    // CMK versions are session objects only: a crash can leave nothing behind on the token.
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, active as string));
    expect(await unopened(site, service, sealed)).toEqual([]);
  });
});

describe('kms root rotate before the service ever ran, and after kills between its steps', () => {
  let site: Site;

  beforeAll(async () => {
    site = await newSite();
  });
  afterAll(() => {
    if (site) removeTestToken(site.token.dir);
  });

  it('when the data directory is new, then the rotation makes the first root', async () => {
    const run = await rotate(site);
    expect([run.code, run.stdout]).toEqual([0, `${wrap(1)}\n`]);
    expect(storeRoots(site).roots).toEqual([{ label: wrap(1), state: 'active' }]);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(1)));
  });

  it('when a rotation was killed after making its root on the token, then the next one adopts that root and leaves no orphan', async () => {
    // What a kill leaves after the first step of a rotation (RootKeyService makes the root on the token, and only
    // then records it): hsm-kms-wrap-2 on the token, unknown to the store.
    await withHsm(site, (hsm) => hsm.ensureRootKey(wrap(2)));
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(1), wrap(2)));

    const run = await rotate(site);
    expect([run.code, run.stdout]).toEqual([0, `${wrap(2)}\n`]);
    expect(storeRoots(site).roots).toEqual([{ label: wrap(2), state: 'active' }]);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(2)));
  });

  it('when a rotation was killed after destroying the old root on the token, then the next one forgets it and goes on', async () => {
    // What a kill leaves between the last two steps of a rotation to hsm-kms-wrap-3 (RootKeyService marks a drained
    // root destroying, destroys it on the token, and only then forgets it): wrap-3 active, wrap-2 destroying and
    // already gone from the token.
    await withHsm(site, (hsm) => hsm.ensureRootKey(wrap(3)));
    const store = SqliteMetadataStore.open(path.join(site.dataDir, 'kms.db'));
    await store.activateRootKey(wrap(3), Date.now());
    expect(await store.markRootKeyDestroying(wrap(2))).toBe(true);
    await store.close();
    expect(await withHsm(site, (hsm) => hsm.destroyRootKey(wrap(2)))).toBe(true);
    expect(storeRoots(site).roots).toEqual([
      { label: wrap(2), state: 'destroying' },
      { label: wrap(3), state: 'active' },
    ]);

    const run = await rotate(site);
    expect([run.code, run.stdout]).toEqual([0, `${wrap(4)}\n`]);
    // It reports only what it found on the token to destroy.
    expect(run.stderr).toContain(`destroyed ${JSON.stringify([wrap(3)])}`);
    expect(storeRoots(site).roots).toEqual([{ label: wrap(4), state: 'active' }]);
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, wrap(4)));
  });

  it('when two rotations run at once, then no key version is lost, and a further rotation leaves one root', async () => {
    await insertKeys(site, 300, wrap(4));
    const report = await withHsm(site, async (hsm) => {
      const dbPath = path.join(site.dataDir, 'kms.db');
      const stores = [SqliteMetadataStore.open(dbPath), SqliteMetadataStore.open(dbPath)];
      try {
        const clock = { now: () => Date.now() };
        const [first, second] = stores.map((store) => new RootKeyService(hsm, store, clock));
        // Interleaved at every await: each makes its own root active while the other may be moving versions.
        const outcomes = await Promise.allSettled([first?.rotate(), second?.rotate()]);
        const versions = await stores[0]?.listVersionsNotUnder('none', 10_000);
        for (const version of versions ?? []) await hsm.prepareKey({ ...version });
        return { outcomes, opened: versions?.length };
      } finally {
        for (const store of stores) await store.close();
      }
    });
    expect(report.opened).toBe(300);
    expect(report.outcomes.some((outcome) => outcome.status === 'fulfilled')).toBe(true);
    for (const outcome of report.outcomes) {
      if (outcome.status === 'rejected') expect(String(outcome.reason)).toMatch(/Another root rotation|C_UnwrapKey/);
    }

    const run = await rotate(site);
    expect(run.code).toBe(0);
    const label = run.stdout.trim();
    expect(storeRoots(site)).toEqual({ roots: [{ label, state: 'active' }], versionsByRoot: { [label]: 300 } });
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, label));
    expect(await openEveryVersion(site)).toBe(300);
  });

  it('when two kms root rotate processes run at once, then no label gets two keys, nothing is lost, and one root is left', async () => {
    const runs = await Promise.all([rotate(site), rotate(site)]);
    const objects = tokenObjects(site);
    expect(new Set(objects).size).toBe(objects.length);
    expect(await openEveryVersion(site)).toBe(300);
    // One of them may stop, saying why; it never loses anything, and running it again finishes the work.
    for (const run of runs) {
      if (run.code !== 0) expect(run.stderr).toMatch(/Another root rotation|CKR_/);
    }

    const last = await rotate(site);
    expect(last.code).toBe(0);
    const label = last.stdout.trim();
    expect(storeRoots(site)).toEqual({ roots: [{ label, state: 'active' }], versionsByRoot: { [label]: 300 } });
    expect(tokenObjects(site)).toEqual(secretKeys(...SERVICE_KEYS, label));
    expect(await openEveryVersion(site)).toBe(300);
  });

  it('when the database names an active root key the token does not hold, then start-up refuses and makes none', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-other-db-'));
    const store = SqliteMetadataStore.open(path.join(dir, 'kms.db'));
    try {
      await store.activateRootKey(wrap(99), Date.now());
      const refusal = await withHsm(site, (hsm) =>
        new RootKeyService(hsm, store, { now: () => Date.now() }).ensureActiveRoot().then(
          () => 'started',
          (err: unknown) => (err as Error).message,
        ),
      );
      expect(refusal).toBe(
        `Refusing to use this token: root key "${wrap(99)}", which the database's key versions are wrapped under, is not on ` +
          `token "${site.token.tokenLabel}". Is this the token the database was made with?`,
      );
      expect(tokenObjects(site)).not.toContain(`secret:${wrap(99)}`);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when the database records another CKA_ID for its active root key, then start-up and rotation refuse the token', async () => {
    const active = storeRoots(site).roots.find((root) => root.state === 'active')?.label as string;
    const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-other-db-'));
    const store = SqliteMetadataStore.open(path.join(dir, 'kms.db'));
    try {
      // Another installation's database: the same label, another key.
      await store.activateRootKey(active, Date.now(), Buffer.alloc(16, 7));
      const refusals = await withHsm(site, (hsm) => {
        const roots = new RootKeyService(hsm, store, { now: () => Date.now() });
        const refusal = (promise: Promise<unknown>) =>
          promise.then(
            () => 'went ahead',
            (err: unknown) => (err as Error).message,
          );
        return Promise.all([refusal(roots.ensureActiveRoot()), refusal(roots.rotate())]);
      });
      const expected =
        `Refusing to use this token: root key "${active}" on token "${site.token.tokenLabel}" has another CKA_ID than the one ` +
        "the database's key versions are wrapped under: this is not the token the database was made with.";
      expect(refusals).toEqual([expected, expected]);
      expect(storeRoots(site).roots).toEqual([{ label: active, state: 'active' }]);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
