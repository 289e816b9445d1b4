import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys } from '../../src/auth/local-issuer.js';
import { TokenVerifier } from '../../src/auth/token-verifier.js';

const KMS = fileURLToPath(new URL('../../scripts/kms', import.meta.url));
const dataDir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-cli-'));
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

function kms(...args: string[]) {
  return spawnSync(KMS, args, { env: { ...process.env, KMS_DATA_DIR: dataDir }, encoding: 'utf8', timeout: 120_000 });
}

describe('the kms command line', () => {
  it('when a token is asked for a project, then stdout holds only a token the service accepts for that project', async () => {
    const run = kms('token', '--project', 'cli-project_1');
    expect(run.status).toBe(0);
    const lines = run.stdout.split('\n').filter((l) => l.length > 0);
    expect(lines).toHaveLength(1);
    const verifier = new TokenVerifier({ key: loadOrCreateIssuerKeys(dataDir).publicKey });
    expect(await verifier.projectOf(lines[0])).toBe('cli-project_1');
  });

  it('when --ttl is given, then the token expires after that many seconds', async () => {
    const run = kms('token', '--project', 'p', '--ttl', '60');
    const [, payload] = run.stdout.trim().split('.');
    const claims = JSON.parse(Buffer.from(payload as string, 'base64url').toString());
    expect(claims.exp - claims.iat).toBe(60);
  });

  it.each([
    [['token'], /--project/],
    [['token', '--project', 'bad project'], /project id/],
    [['token', '--project', 'p', '--ttl', '0'], /--ttl/],
    [['token', '--project', 'p', '--bogus'], /bogus/],
    [['frobnicate'], /unknown command/],
  ])('when called as kms %j, then it fails with a message and prints no token', (args, message) => {
    const run = kms(...args);
    expect(run.status).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(message);
  });

  it('when help is asked, then every command is described', () => {
    const run = kms('help');
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/token --project <project_id>/);
  });
});
