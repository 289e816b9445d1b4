import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyService } from '../../src/core/key.service.js';
import type { MetadataStore } from '../../src/core/ports.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const P = '3c1b5e0a9d8f4b7e8a6c2d1f0e9b8a7c';
const DAY = 86_400_000;

let kms: TestService;

beforeAll(async () => {
  kms = await startTestService();
});
afterAll(async () => {
  await kms.destroy();
});

/** The real sweep (KeyService.purgeDueDeletions, as src/service.ts runs it) seen from eight days ahead. */
function sweepInEightDays(store: MetadataStore = kms.running.store): Promise<number> {
  const inEightDays = { now: () => Date.now() + 8 * DAY };
  return new KeyService(kms.running.hsm, store, inEightDays, 100, kms.running.services.keyStores).purgeDueDeletions();
}

/** A key of project P with one data key made under it, scheduled for deletion in 7 days. */
async function keyPendingDeletion(alias: string): Promise<{ keyId: string; cipherText: string; plainText: string }> {
  const keyId = await createKey(kms, P, alias);
  const made = await kms.call(P, 'create-datakey', { key_id: keyId });
  expect(made.status).toBe(200);
  expect((await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' })).status).toBe(200);
  return { keyId, cipherText: made.body.cipher_text, plainText: made.body.plain_text };
}

async function decrypt(keyId: string, cipherText: string) {
  return kms.call(P, 'decrypt-datakey', { key_id: keyId, cipher_text: cipherText, datakey_cipher_length: '64' });
}

describe('a deletion cancelled while the sweep runs', () => {
  it('when a listed key is cancelled through the API before the sweep purges it, then it survives and still decrypts', async () => {
    const cancelled = await keyPendingDeletion('cancelled-mid-sweep');
    const due = await keyPendingDeletion('purged-by-sweep');
    let cancel: Awaited<ReturnType<TestService['call']>> | undefined;
    // The sweep's own store, except that right after the sweep has listed the due keys, another client cancels the
    // deletion of one of them: what a CancelKeyDeletion served by another worker does between the list and the purge.
    const store = kms.running.store;
    const racing = new Proxy(store, {
      get(target, name) {
        const value = Reflect.get(target, name, target);
        if (name !== 'listKeysDueForDeletion') return typeof value === 'function' ? value.bind(target) : value;
        return async (...args: Parameters<MetadataStore['listKeysDueForDeletion']>) => {
          const listed = await target.listKeysDueForDeletion(...args);
          if (cancel === undefined) cancel = await kms.call(P, 'cancel-key-deletion', { key_id: cancelled.keyId });
          return listed;
        };
      },
    });

    const purged = await sweepInEightDays(racing);

    expect(cancel?.status).toBe(200);
    expect(cancel?.body).toEqual({ key_id: cancelled.keyId, key_state: '3' });
    expect(purged).toBe(1);
    expect((await kms.call(P, 'describe-key', { key_id: cancelled.keyId })).body.key_info.key_state).toBe('3');
    expect((await kms.call(P, 'enable-key', { key_id: cancelled.keyId })).status).toBe(200);
    const opened = await decrypt(cancelled.keyId, cancelled.cipherText);
    expect([opened.status, opened.body.data_key]).toEqual([200, cancelled.plainText]);

    const gone = await decrypt(due.keyId, due.cipherText);
    expect(gone.status).toBe(404);
    expect(gone.body.error).toEqual({ error_code: 'KMS.0207', error_msg: expect.any(String) });
    expect(await store.findKeyVersion(due.keyId, 0)).toBeUndefined();
  });
});

describe('a sweep of thousands of due keys', () => {
  it('when 3,000 keys are due, then the sweep deletes them all while requests are served and the event loop never stalls', async () => {
    const count = 3_000;
    // Written in one transaction on a connection of the test's own: through the API this would take minutes. The
    // rows are what KeyService.create and scheduleDeletion leave behind.
    const [{ label: rootKeyLabel } = { label: '' }] = await kms.running.store.listRootKeys();
    const db = new Database(join(kms.dataDir, 'kms.db'));
    const insertKey = db.prepare(`
      INSERT INTO keys (id, project_id, alias, alias_name, description, state, key_spec, key_usage, origin,
        created_at, deletion_date, current_version)
      VALUES (?, ?, '', '', '', 'PendingDeletion', 'AES_256', 'ENCRYPT_DECRYPT', 'kms', ?, ?, 0)`);
    const insertVersion = db.prepare(
      `INSERT INTO key_versions (key_id, version, scheme, root_key_label, key_material, created_at)
        VALUES (?, 0, 'kwp-v1', ?, ?, ?)`,
    );
    const now = Date.now();
    db.transaction(() => {
      for (let i = 0; i < count; i++) {
        const id = randomUUID();
        insertKey.run(id, P, now, now + DAY);
        insertVersion.run(id, rootKeyLabel, randomBytes(40), now);
      }
    })();
    db.close();

    let sweeping = true;
    let served = 0;
    const requests = (async () => {
      while (sweeping) {
        const res = await kms.call(P, 'gen-random', { random_data_length: '256' });
        expect(res.status).toBe(200);
        if (sweeping) served++;
      }
    })();
    // The longest gap between two runs of a 5 ms timer is the longest the event loop was held. (perf_hooks'
    // monitorEventLoopDelay was tried first: it reported 55 ms for a 2.4 s stall.)
    let last = performance.now();
    let maxLagMs = 0;
    const ticker = setInterval(() => {
      const t = performance.now();
      maxLagMs = Math.max(maxLagMs, t - last);
      last = t;
    }, 5);
    const started = performance.now();
    const purged = await sweepInEightDays();
    const sweepMs = performance.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 20));
    clearInterval(ticker);
    sweeping = false;
    await requests;

    expect(purged).toBe(count);
    expect(await kms.running.store.listKeysDueForDeletion(Date.now() + 8 * DAY, 10)).toEqual([]);
    // Deleting them one transaction each held the event loop for seconds; in batches of 100 with a turn of the event
    // loop between batches, each stall is one batch. The bound leaves room for a busy machine.
    console.info(
      `sweep of ${count} keys: ${sweepMs.toFixed(0)} ms, longest event-loop stall ${maxLagMs.toFixed(1)} ms, ` +
        `${served} requests served meanwhile`,
    );
    expect(maxLagMs, `event loop stalled ${maxLagMs.toFixed(0)} ms`).toBeLessThan(250);
    expect(served).toBeGreaterThan(0);
  });
});

describe('deleted key material in the database files', () => {
  /** Every file under the data directory, as raw bytes. */
  function dataFiles(): { name: string; bytes: Buffer }[] {
    const files: { name: string; bytes: Buffer }[] = [];
    const walk = (dir: string) => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else files.push({ name: path, bytes: readFileSync(path) });
      }
    };
    walk(kms.dataDir);
    return files;
  }
  const filesHolding = (data: Buffer) =>
    dataFiles()
      .filter((file) => file.bytes.includes(data))
      .map((file) => file.name);

  it('when the sweep has deleted keys, then no file of the data directory holds their wrapped keys any more', async () => {
    const deleted: Buffer[] = [];
    for (let i = 0; i < 10; i++) {
      const { keyId } = await keyPendingDeletion(`shredded-${i}`);
      const version = await kms.running.store.findKeyVersion(keyId, 0);
      if (!version) throw new Error('the new key has no version 0');
      deleted.push(Buffer.from(version.keyMaterial));
    }
    const survivorId = await createKey(kms, P, 'survivor');
    const survivor = Buffer.from((await kms.running.store.findKeyVersion(survivorId, 0))?.keyMaterial ?? []);
    const db = join(kms.dataDir, 'kms.db');
    // The search sees the data where SQLite keeps it before the sweep (kms.db or its WAL).
    for (const data of deleted) expect(filesHolding(data).some((name) => name.startsWith(db))).toBe(true);

    expect(await sweepInEightDays()).toBe(10);

    for (const data of deleted) expect(filesHolding(data)).toEqual([]);
    expect(filesHolding(survivor)).toEqual([db]);
    expect(readdirSync(kms.dataDir)).toEqual(expect.arrayContaining(['kms.db', 'kms.db-wal', 'kms.db-shm']));
  });
});
