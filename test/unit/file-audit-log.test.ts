import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { auditFiles, FileAuditLog } from '../../src/audit/file-audit-log.js';
import { verifyAuditFiles } from '../../src/audit/verify-audit-chain.js';
import type { AuditEvent } from '../../src/core/audit.js';

const root = mkdtempSync(path.join(tmpdir(), 'hsm-kms-audit-unit-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const event = (operation: string): AuditEvent => ({
  time: new Date().toISOString(),
  dialect: 'aws',
  requestId: 'r',
  source: '127.0.0.1',
  caller: 'access-key:AKIAEXAMPLE',
  projectId: 'p',
  operation,
  keyId: 'k',
  keyVersion: 0,
  outcome: 'ok',
  status: 200,
  errorCode: undefined,
});

const open = (dir: string) => new FileAuditLog({ dir, slot: 0, maxBytes: 1024 * 1024, fsync: false });

describe('FileAuditLog', () => {
  it('when a process stopped in mid-write, then the next one goes on in a new file from the last whole record', () => {
    const dir = path.join(root, 'crash');
    const before = open(dir);
    for (const op of ['a', 'b', 'c']) before.append(event(op));
    before.close();
    const [first] = auditFiles(dir, 0);
    appendFileSync(first as string, '{"v":1,"seq":4,"prev":"'); // what a crash in mid-write leaves

    const after = open(dir);
    for (const op of ['d', 'e']) after.append(event(op));
    after.close();
    expect(auditFiles(dir, 0)).toHaveLength(2);

    const verdict = verifyAuditFiles(auditFiles(dir, 0));
    expect(verdict).toMatchObject({ ok: true, count: 5, cutShort: [{ file: first, line: 4 }] });
  });

  it('when part of a record is followed by another line, then verify names it as a broken record', () => {
    const dir = path.join(root, 'forged');
    const log = open(dir);
    for (const op of ['a', 'b', 'c']) log.append(event(op));
    log.close();
    const [file] = auditFiles(dir, 0);
    // A partial line in the middle of a file is a broken record, not a crash's leftover.
    appendFileSync(file as string, '{"v":1,"seq":4\n');
    expect(verifyAuditFiles([file as string])).toMatchObject({ ok: false, line: 4, expectedSeq: 4 });
  });

  it('when the service restarts, then the chain resumes in the same file from its last record', () => {
    const dir = path.join(root, 'restart');
    const first = open(dir);
    first.append(event('a'));
    first.close();
    const second = open(dir);
    second.append(event('b'));
    second.close();
    expect(auditFiles(dir, 0)).toHaveLength(1);
    expect(verifyAuditFiles(auditFiles(dir, 0))).toMatchObject({ ok: true, count: 2, cutShort: [] });
  });
});
