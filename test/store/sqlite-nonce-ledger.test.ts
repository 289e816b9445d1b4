import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteNonceLedger } from '../../src/store/sqlite-nonce-ledger.js';

let dir: string;
let path: string;
const opened: SqliteNonceLedger[] = [];

function openLedger(): SqliteNonceLedger {
  const ledger = SqliteNonceLedger.open(path);
  opened.push(ledger);
  return ledger;
}

let ledger: SqliteNonceLedger;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'hsm-kms-nonces-'));
  path = join(dir, 'nested', 'kms.db-nonces');
  ledger = openLedger();
});
afterEach(async () => {
  for (const l of opened.splice(0)) await l.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('SqliteNonceLedger', () => {
  const now = Date.UTC(2025, 6, 1);
  const ttl = 15 * 60 * 1000;

  it('when a nonce is claimed for the first time, then true', async () => {
    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now)).toBe(true);
  });

  it('when the same access key claims the same nonce again before it expires, then false: a replay', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + 1 + ttl, now + 1)).toBe(false);
    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now + ttl - 1)).toBe(false);
  });

  it('when another access key claims the same nonce, then true', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAB', 'nonce-1', now + ttl, now)).toBe(true);
  });

  it('when the same access key claims another nonce, then true', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-2', now + ttl, now)).toBe(true);
  });

  it('when the earlier record has expired, then the nonce can be claimed again, until its new expiry', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);
    const later = now + ttl + 1;

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', later + ttl, later)).toBe(true);
    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', later + 1 + ttl, later + 1)).toBe(false);
  });

  it('when now equals the expiry, then the record counts as expired and the nonce can be claimed', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + 2 * ttl, now + ttl)).toBe(true);
  });

  it('when expired records are purged, then only those expired at or before now go, and their count is returned', async () => {
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'overdue', now - 1, now - ttl);
    await ledger.claim('AKIAAAAAAAAAAAAAAAAB', 'due-now', now, now - ttl);
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'live', now + 1, now - ttl);

    expect(await ledger.purgeExpired(now)).toBe(2);

    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'live', now + ttl, now)).toBe(false);
    expect(await ledger.purgeExpired(now)).toBe(0);
  });

  it('when nothing has expired, then purgeExpired returns 0', async () => {
    expect(await ledger.purgeExpired(now)).toBe(0);
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'nonce-1', now + ttl, now);

    expect(await ledger.purgeExpired(now)).toBe(0);
  });
});

describe('SqliteNonceLedger on a file', () => {
  it('when the file is missing, then it is created, readable by the owner only', () => {
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('when many expired records are purged, then all go, in batches, and live ones stay', async () => {
    const now = 10_000_000;
    for (let i = 0; i < 4_500; i++) await ledger.claim('AKIAAAAAAAAAAAAAAAAA', `old-${i}`, now - 1, now - 2);
    await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'live', now + 1, now);
    expect(await ledger.purgeExpired(now)).toBe(4_500);
    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'live', now + 2, now)).toBe(false);
    expect(await ledger.claim('AKIAAAAAAAAAAAAAAAAA', 'old-1', now + 2, now)).toBe(true);
  });

  describe('when two workers open the same file', () => {
    it('then a signature nonce claimed through one is a replay through the other, and after reopening', async () => {
      const worker1 = openLedger();
      const worker2 = openLedger();
      const now = 1_000_000;
      expect(await worker1.claim('AKIAWORKERS', 'nonce-1', now + 900_000, now)).toBe(true);
      expect(await worker2.claim('AKIAWORKERS', 'nonce-1', now + 900_000, now)).toBe(false);
      await worker1.close();
      await worker2.close();
      const reopened = openLedger();
      expect(await reopened.claim('AKIAWORKERS', 'nonce-1', now + 900_000, now + 1)).toBe(false);
      expect(await reopened.purgeExpired(now + 900_000)).toBe(1);
    });
  });
});
