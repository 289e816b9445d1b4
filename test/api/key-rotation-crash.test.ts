import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

/** Scheduled rotations interrupted by SIGKILL: the sweep at start-up rotates every due key, and is killed midway. */
const P = 'projectrotationcrash';
const KEYS = 300;
let token: TestToken;
let env: Record<string, string>;
let authToken: string;

beforeAll(async () => {
  token = createTestToken();
  env = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
  };
  authToken = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), P, 3600);
});
afterAll(() => removeTestToken(token.dir));

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
async function call(service: ChildService, action: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${service.url}/v1.0/${P}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': authToken },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

const start = async () => spawnService({ ...env, KMS_PORT: String(await freePort()) });
const database = () => new Database(path.join(env.KMS_DATA_DIR as string, 'kms.db'));

/** Per key: its current version and its highest recorded version. */
function versions(): { current: number; highest: number }[] {
  const db = database();
  try {
    return db
      .prepare(
        `SELECT k.current_version AS current, (SELECT max(version) FROM key_versions v WHERE v.key_id = k.id) AS highest
          FROM keys k WHERE k.project_id = ?`,
      )
      .all(P) as { current: number; highest: number }[];
  } finally {
    db.close();
  }
}

it('when the service is killed with SIGKILL while it rotates due keys, then every key is at its old or its new version, never between, and after restart all are rotated and every ciphertext decrypts', async () => {
  const first = await start();
  const made: { keyId: string; cipherText: string; plainText: string }[] = [];
  try {
    const lane = async (offset: number) => {
      for (let i = offset; i < KEYS; i += 8) {
        const keyId = (await call(first, 'create-key', { key_alias: `due-${i}` })).body.key_info.key_id as string;
        if (i % 10 !== 0) continue;
        const dataKey = await call(first, 'create-datakey', { key_id: keyId, datakey_length: '256' });
        made.push({ keyId, cipherText: dataKey.body.cipher_text, plainText: dataKey.body.plain_text });
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, offset) => lane(offset)));
  } finally {
    await stopService(first);
  }
  // Every key due since long ago: the next start's sweep rotates them all, one after another.
  const db = database();
  db.prepare('UPDATE keys SET rotation_period_days = 30, next_rotation_at = 1 WHERE project_id = ?').run(P);
  db.close();

  // Killed as soon as the first keys are rotated: the sweep runs before the service listens.
  let child: ChildProcess | undefined;
  const victim = spawnService({ ...env, KMS_PORT: String(await freePort()) }, 1, (spawned) => {
    child = spawned;
  }).catch(() => undefined);
  const exited = new Promise((resolve) => child?.once('exit', resolve));
  for (const deadline = Date.now() + 20_000; Date.now() < deadline; ) {
    if (versions().some((v) => v.current === 1)) break;
    await new Promise((r) => setTimeout(r, 2));
  }
  child?.kill('SIGKILL');
  await exited;
  await victim;
  const atKill = versions();
  const rotatedAtKill = atKill.filter((v) => v.current === 1).length;
  expect(rotatedAtKill).toBeGreaterThan(0);
  expect(rotatedAtKill).toBeLessThan(KEYS);
  // Each key as it was or as it became: its current version is its highest, 0 or 1.
  for (const v of atKill) {
    expect([0, 1]).toContain(v.current);
    expect(v.highest).toBe(v.current);
  }

  const restarted = await start();
  try {
    const after = versions();
    expect(after).toHaveLength(KEYS);
    for (const v of after) expect(v).toEqual({ current: 1, highest: 1 });
    for (const m of made) {
      const opened = await call(restarted, 'decrypt-datakey', {
        key_id: m.keyId,
        cipher_text: m.cipherText,
        datakey_cipher_length: '32',
      });
      expect(opened.body.data_key).toBe(m.plainText);
    }
  } finally {
    await stopService(restarted);
  }
}, 120_000);
