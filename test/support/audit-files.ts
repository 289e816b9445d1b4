import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { auditFiles } from '../../src/audit/file-audit-log.js';

/** The `kms` command line from source, as child-service.ts runs main.ts: no build to wait for or go stale. */
const KMS_CLI = fileURLToPath(new URL('../../src/cli/kms.ts', import.meta.url));

/** One audit record as written (src/audit/audit-chain.ts). */
export interface AuditRecordLine {
  readonly v: number;
  readonly seq: number;
  readonly prev: string;
  readonly time: string;
  readonly dialect: string;
  readonly requestId: string | null;
  readonly source: string | null;
  readonly caller: string | null;
  readonly projectId: string | null;
  readonly operation: string | null;
  readonly keyId: string | null;
  readonly keyVersion: number | null;
  readonly outcome: 'ok' | 'error';
  readonly status: number;
  readonly errorCode: string | null;
  readonly hash: string;
}

/** The single process's audit files (slot 0) under the service's data directory, oldest first. */
export function auditFilesOf(dataDir: string): string[] {
  return auditFiles(path.join(dataDir, 'audit'), 0);
}

/** Every record of those files, in order. */
export function auditRecords(dataDir: string): AuditRecordLine[] {
  return auditFilesOf(dataDir).flatMap((file) =>
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as AuditRecordLine),
  );
}

/** `kms audit verify FILE...`, the real command line in a process of its own. */
export function kmsAuditVerify(files: readonly string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', KMS_CLI, 'audit', 'verify', ...files], {
    encoding: 'utf8',
    timeout: 60_000,
  });
}
