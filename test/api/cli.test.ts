import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys } from '../../src/auth/local-issuer.js';
import { TokenVerifier } from '../../src/auth/token-verifier.js';
import { CredentialService } from '../../src/core/credential.service.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { openHsm } from '../hsm/hsm-fixtures.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

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
    expect(run.stdout).toMatch(/credentials create --project <project_id>/);
    expect(run.stdout).toMatch(/credentials revoke <access_key_id>/);
  });
});

describe('kms credentials', () => {
  let token: TestToken;
  let hsmDataDir: string;

  beforeAll(() => {
    token = createTestToken();
    hsmDataDir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-cli-credentials-'));
  });
  afterAll(() => {
    if (hsmDataDir) rmSync(hsmDataDir, { recursive: true, force: true });
    if (token) removeTestToken(token.dir);
  });

  /** The CLI against the throw-away token, configured as an operator would configure the service. */
  function kmsWithHsm(...args: string[]) {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      KMS_DATA_DIR: hsmDataDir,
      KMS_PIN: token.pin,
      KMS_TOKEN_LABEL: token.tokenLabel,
      KMS_PKCS11_LIBRARY: token.library,
      SOFTHSM2_CONF: token.softhsmConf,
    };
    delete env.KMS_PIN_FILE;
    delete env.KMS_DB_PATH;
    delete env.KMS_CONFIG_FILE;
    return spawnSync(KMS, args, { env, encoding: 'utf8', timeout: 120_000 });
  }

  /** Runs `use` with the service's view of the CLI's token and database, after the CLI has exited. */
  async function withService<T>(use: (credentials: CredentialService) => Promise<T>): Promise<T> {
    const hsm = await openHsm(token, { createTokenKeysIfMissing: false });
    const store = SqliteMetadataStore.open(path.join(hsmDataDir, 'kms.db'));
    try {
      return await use(new CredentialService(hsm, store, { now: () => Date.now() }));
    } finally {
      await store.close();
      await hsm.close();
    }
  }

  it('when an access key is created, then stdout is two shell assignments whose secret the service derives too', async () => {
    const run = kmsWithHsm('credentials', 'create', '--project', 'cli-project_1');
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const match = /^AWS_ACCESS_KEY_ID=(AKIA[A-Z2-7]{16})\nAWS_SECRET_ACCESS_KEY=([A-Za-z0-9+/]{40})\n$/.exec(
      run.stdout,
    );
    expect(match).not.toBeNull();
    const [, accessKeyId, secretAccessKey] = match as unknown as [string, string, string];

    expect(await withService((credentials) => credentials.resolve(accessKeyId))).toEqual({
      projectId: 'cli-project_1',
      secretAccessKey,
    });
  });

  it('when --format alibaba is given, then the lines name the Alibaba SDK variables, and any other format exits 2', async () => {
    const run = kmsWithHsm('credentials', 'create', '--project', 'cli-alibaba', '--format', 'alibaba');
    expect(run.status).toBe(0);
    const match =
      /^ALIBABA_CLOUD_ACCESS_KEY_ID=(AKIA[A-Z2-7]{16})\nALIBABA_CLOUD_ACCESS_KEY_SECRET=([A-Za-z0-9+/]{40})\n$/.exec(
        run.stdout,
      );
    expect(match).not.toBeNull();
    const [, accessKeyId, secretAccessKey] = match as unknown as [string, string, string];
    expect(await withService((credentials) => credentials.resolve(accessKeyId))).toEqual({
      projectId: 'cli-alibaba',
      secretAccessKey,
    });
    for (const format of ['gcp', 'constructor', '__proto__']) {
      const bad = kmsWithHsm('credentials', 'create', '--project', 'p', '--format', format);
      expect({ format, status: bad.status, stdout: bad.stdout }).toEqual({ format, status: 2, stdout: '' });
      expect(bad.stderr).toContain("--format must be 'aws', 'alibaba', 'huawei' or 'xks'");
    }
  });

  it('when --format xks is given, then it prints a key of the XKS API alone, shaped as AWS requires for XKS', async () => {
    const run = kmsWithHsm('credentials', 'create', '--project', 'cli-xks', '--format', 'xks');
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    // AWS: an id of 20 to 30 characters of [A-Z2-7], a secret of 43 to 64 of [A-Za-z0-9/+=] with 256 bits.
    const match = /^XKS_ACCESS_KEY_ID=(XKSA[A-Z2-7]{16})\nXKS_SECRET_ACCESS_KEY=([A-Za-z0-9+/]{43}=)\n$/.exec(
      run.stdout,
    );
    expect(match).not.toBeNull();
    const [, accessKeyId, secretAccessKey] = match as unknown as [string, string, string];
    expect(Buffer.from(secretAccessKey, 'base64')).toHaveLength(32);

    await withService(async (credentials) => {
      expect(await credentials.resolveXks(accessKeyId)).toEqual({ projectId: 'cli-xks', secretAccessKey });
      // Not a key of the signed dialects: AWS KMS, which holds it, must not manage the project's keys.
      await expect(credentials.resolve(accessKeyId)).rejects.toMatchObject({ code: 'AuthUnknownCredential' });
    });
    const revoke = kmsWithHsm('credentials', 'revoke', accessKeyId);
    expect(revoke.status).toBe(0);
    await expect(withService((credentials) => credentials.resolveXks(accessKeyId))).rejects.toMatchObject({
      code: 'AuthUnknownCredential',
    });
  });

  it('when the output is evaluated by a shell, then the shell has both variables', () => {
    const run = spawnSync(
      'bash',
      ['-c', `eval "$("$KMS" credentials create --project p)" && echo "$AWS_ACCESS_KEY_ID:\${#AWS_SECRET_ACCESS_KEY}"`],
      {
        env: {
          ...process.env,
          KMS,
          KMS_DATA_DIR: hsmDataDir,
          KMS_PIN: token.pin,
          KMS_TOKEN_LABEL: token.tokenLabel,
          KMS_PKCS11_LIBRARY: token.library,
          SOFTHSM2_CONF: token.softhsmConf,
        },
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^AKIA[A-Z2-7]{16}:40\n$/);
  });

  it('when an access key is revoked, then the service no longer resolves it, and revoking again exits 1', async () => {
    const created = kmsWithHsm('credentials', 'create', '--project', 'p');
    const accessKeyId = /^AWS_ACCESS_KEY_ID=(\S+)$/m.exec(created.stdout)?.[1] as string;
    expect(accessKeyId).toMatch(/^AKIA/);

    const revoke = kmsWithHsm('credentials', 'revoke', accessKeyId);
    expect(revoke.status).toBe(0);
    expect(revoke.stdout).toBe('');

    await expect(withService((credentials) => credentials.resolve(accessKeyId))).rejects.toMatchObject({
      code: 'AuthUnknownCredential',
    });
    const again = kmsWithHsm('credentials', 'revoke', accessKeyId);
    expect(again.status).toBe(1);
    expect(again.stdout).toBe('');
    expect(again.stderr).toContain(`access key ${accessKeyId} does not exist or is already revoked`);
  });

  it('when the access key is unknown, then revoke exits 1 with a message', () => {
    const run = kmsWithHsm('credentials', 'revoke', 'AKIAZZZZZZZZZZZZZZZZ');
    expect(run.status).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(/does not exist or is already revoked/);
  });

  it.each([
    [['credentials', 'create'], /--project/],
    [['credentials', 'create', '--project', 'bad project'], /project id/],
    [['credentials', 'create', '--project', 'p', '--bogus'], /bogus/],
    [['credentials', 'revoke'], /access_key_id/],
    [['credentials'], /create' or 'revoke/],
    [['credentials', 'rotate'], /unknown credentials command/],
  ])('when called as kms %j, then it exits 2 with a message and prints nothing on stdout', (args, message) => {
    const run = kmsWithHsm(...args);
    expect(run.status).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(message);
  });

  it('when the HSM PIN is wrong, then create exits 1 with a message and prints nothing on stdout', () => {
    const run = spawnSync(KMS, ['credentials', 'create', '--project', 'p'], {
      env: {
        ...process.env,
        KMS_DATA_DIR: hsmDataDir,
        KMS_PIN: `${token.pin}0`,
        KMS_TOKEN_LABEL: token.tokenLabel,
        KMS_PKCS11_LIBRARY: token.library,
        SOFTHSM2_CONF: token.softhsmConf,
      },
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(run.status).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('the PIN is incorrect');
    expect(run.stderr).not.toContain(token.pin);
  });
});
