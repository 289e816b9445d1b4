import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createTestPki, type TestPki } from '../support/test-pki.js';

/** KMS_PKCS11_LIBRARY's default, installed here (the SoftHSM package). */
const DEFAULT_LIBRARY = '/usr/lib/softhsm/libsofthsm2.so';

const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The message `load` is refused with. */
function refusalOf(load: () => unknown): string {
  try {
    load();
  } catch (err) {
    return (err as Error).message;
  }
  return expect.fail('expected the configuration to be refused');
}

describe('configuration', () => {
  it('when only a PIN is given, then every other setting has its documented default', () => {
    const config = loadConfig({ KMS_PIN: '1234' });
    expect(config).toMatchObject({
      host: '127.0.0.1',
      port: 8080,
      workers: 1,
      cmkQuota: 100_000,
      rateLimits: { cryptographic: 1_000, management: 100 },
      hsm: {
        library: '/usr/lib/softhsm/libsofthsm2.so',
        tokenLabel: 'hsm-kms',
        pin: '1234',
        poolSize: 4,
        sessionWaitMs: 2_000,
        asyncCalls: undefined,
      },
    });
    expect(config.http).toEqual({
      headersTimeoutMs: 5_000,
      requestTimeoutMs: 10_000,
      keepAliveTimeoutMs: 65_000,
      maxConnections: 512,
      maxConnectionsPerClient: 128,
    });
    expect(config.dataDir).toBe(path.resolve('./.data'));
    expect(config.dbPath).toBe(path.join(path.resolve('./.data'), 'kms.db'));
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('when KMS_CONFIG_FILE names a file, then its values apply and the environment overrides them', () => {
    const pinFile = file('pin', 'file-pin\n');
    const conf = file(
      'kms.env',
      `# HSM\nKMS_PKCS11_LIBRARY=/opt/hsm/lib.so\nKMS_TOKEN_LABEL="prod-token"\nKMS_PIN_FILE=${pinFile}\nKMS_PORT=9000\n`,
    );
    const config = loadConfig({ KMS_CONFIG_FILE: conf, KMS_PORT: '9100' });
    expect(config.hsm).toMatchObject({ library: '/opt/hsm/lib.so', tokenLabel: 'prod-token', pin: 'file-pin' });
    expect(config.port).toBe(9100);
  });

  it('when KMS_PKCS11_INIT_PARAMS is set, then the HSM gets it verbatim; unset, then there are none', () => {
    const params = "configdir='sql:/var/lib/nss db' certPrefix='' keyPrefix='' secmod='' flags=";
    expect(loadConfig({ KMS_PIN: '1234', KMS_PKCS11_INIT_PARAMS: params }).hsm.initParams).toBe(params);
    expect(loadConfig({ KMS_PIN: '1234' }).hsm.initParams).toBeUndefined();
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_PKCS11_INIT_PARAMS: '' })).toThrow(
      /^Invalid configuration: KMS_PKCS11_INIT_PARAMS: /,
    );
  });

  it('when KMS_HSM_PROFILE names a profile, then the HSM gets it; unset, then none; anything else is refused', () => {
    for (const profile of ['softhsm2', 'nss', 'cloudhsm', 'generic']) {
      expect(loadConfig({ KMS_PIN: '1234', KMS_HSM_PROFILE: profile }).hsm.profile).toBe(profile);
    }
    expect(loadConfig({ KMS_PIN: '1234' }).hsm.profile).toBeUndefined();
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_HSM_PROFILE: 'luna' })).toThrow(
      /^Invalid configuration: KMS_HSM_PROFILE: /,
    );
  });

  it('when KMS_HSM_ASYNC_CALLS and KMS_HSM_SESSION_WAIT_MS are set, then the HSM gets them; anything else is refused', () => {
    const hsm = loadConfig({ KMS_PIN: '1234', KMS_HSM_ASYNC_CALLS: 'true', KMS_HSM_SESSION_WAIT_MS: '250' }).hsm;
    expect(hsm).toMatchObject({ asyncCalls: true, sessionWaitMs: 250 });
    expect(loadConfig({ KMS_PIN: '1234', KMS_HSM_ASYNC_CALLS: 'false' }).hsm.asyncCalls).toBe(false);
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_HSM_ASYNC_CALLS: 'yes' })).toThrow(
      /^Invalid configuration: KMS_HSM_ASYNC_CALLS: /,
    );
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_HSM_SESSION_WAIT_MS: '0' })).toThrow(
      /^Invalid configuration: KMS_HSM_SESSION_WAIT_MS: /,
    );
  });

  it('when the rate limits are set, then they apply per class, 0 turns one off, and a negative one is refused', () => {
    const env = { KMS_PIN: '1234', KMS_RATE_LIMIT_CRYPTO_PER_SECOND: '50', KMS_RATE_LIMIT_MANAGEMENT_PER_SECOND: '0' };
    expect(loadConfig(env).rateLimits).toEqual({ cryptographic: 50, management: 0 });
    expect(() => loadConfig({ ...env, KMS_RATE_LIMIT_CRYPTO_PER_SECOND: '-1' })).toThrow(
      /KMS_RATE_LIMIT_CRYPTO_PER_SECOND/,
    );
  });

  it('when no PIN is configured, then start-up stops with a message naming the variables', () => {
    expect(() => loadConfig({})).toThrow(/KMS_PIN or KMS_PIN_FILE/);
  });

  it('when KMS_JWKS_URL is set without KMS_TOKEN_ISSUER or KMS_TOKEN_AUDIENCE, then start-up stops naming the missing ones', () => {
    const jwks = { KMS_PIN: '1234', KMS_JWKS_URL: 'https://idp.example.test/.well-known/jwks.json' };
    const both =
      'Invalid configuration: KMS_JWKS_URL is set, so KMS_TOKEN_ISSUER and KMS_TOKEN_AUDIENCE must be set too ' +
      '(missing: KMS_TOKEN_ISSUER, KMS_TOKEN_AUDIENCE); without them a token the JWKS signed for any issuer or ' +
      'audience would be accepted.';
    expect(() => loadConfig(jwks)).toThrow(both);
    expect(() => loadConfig({ ...jwks, KMS_TOKEN_ISSUER: 'https://idp.example.test' })).toThrow(
      '(missing: KMS_TOKEN_AUDIENCE)',
    );
    expect(() => loadConfig({ ...jwks, KMS_TOKEN_AUDIENCE: 'kms' })).toThrow('(missing: KMS_TOKEN_ISSUER)');
    expect(() => loadConfig({ ...jwks, KMS_TOKEN_ISSUER: '', KMS_TOKEN_AUDIENCE: 'kms' })).toThrow(/KMS_TOKEN_ISSUER/);
  });

  it('when KMS_JWKS_URL comes with an issuer and an audience, then all three are configured', () => {
    const config = loadConfig({
      KMS_PIN: '1234',
      KMS_JWKS_URL: 'https://idp.example.test/.well-known/jwks.json',
      KMS_TOKEN_ISSUER: 'https://idp.example.test',
      KMS_TOKEN_AUDIENCE: 'kms',
    });
    expect(config.auth).toEqual({
      jwksUrl: 'https://idp.example.test/.well-known/jwks.json',
      issuer: 'https://idp.example.test',
      audience: 'kms',
    });
  });

  it('when the headers timeout is longer than the request timeout, then start-up stops naming both', () => {
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_HEADERS_TIMEOUT_MS: '20000' })).toThrow(
      'Invalid configuration: KMS_HEADERS_TIMEOUT_MS must not exceed KMS_REQUEST_TIMEOUT_MS.',
    );
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_MAX_CONNECTIONS: '0' })).toThrow(
      /^Invalid configuration: KMS_MAX_CONNECTIONS/,
    );
    expect(
      loadConfig({ KMS_PIN: '1234', KMS_HEADERS_TIMEOUT_MS: '20000', KMS_REQUEST_TIMEOUT_MS: '20000' }).http,
    ).toMatchObject({ headersTimeoutMs: 20_000, requestTimeoutMs: 20_000 });
  });

  it('when the connection cap is below 128, then one client address may hold the whole cap; a larger limit per client is refused', () => {
    expect(loadConfig({ KMS_PIN: '1234', KMS_MAX_CONNECTIONS: '100' }).http).toMatchObject({
      maxConnections: 100,
      maxConnectionsPerClient: 100,
    });
    expect(loadConfig({ KMS_PIN: '1234', KMS_MAX_CONNECTIONS_PER_CLIENT: '512' }).http).toMatchObject({
      maxConnections: 512,
      maxConnectionsPerClient: 512,
    });
    expect(() =>
      loadConfig({ KMS_PIN: '1234', KMS_MAX_CONNECTIONS: '100', KMS_MAX_CONNECTIONS_PER_CLIENT: '101' }),
    ).toThrow('Invalid configuration: KMS_MAX_CONNECTIONS_PER_CLIENT must not exceed KMS_MAX_CONNECTIONS.');
    expect(() => loadConfig({ KMS_PIN: '1234', KMS_MAX_CONNECTIONS_PER_CLIENT: '0' })).toThrow(
      /^Invalid configuration: KMS_MAX_CONNECTIONS_PER_CLIENT/,
    );
  });

  it('when a value is invalid, then the message names the variable but never echoes a value', () => {
    expect(() => loadConfig({ KMS_PIN: 's3cr3t-pin', KMS_PORT: 'not-a-port' })).toThrow(/KMS_PORT/);
    try {
      loadConfig({ KMS_PIN: 's3cr3t-pin', KMS_TOKEN_LABEL: 'x'.repeat(40) });
    } catch (err) {
      expect(String(err)).not.toContain('s3cr3t-pin');
    }
    expect(() => loadConfig({ KMS_PIN_FILE: path.join(dir, 'missing') })).toThrow(/cannot be read/);
    expect(() => loadConfig({ KMS_CONFIG_FILE: file('bad.env', 'not a line\n') })).toThrow(/line 1/);
  });

  describe('key store connections (KMS_KEY_STORE_CONNECTIONS_FILE)', () => {
    const connection = {
      id: 'cluster-tenantsoftstore',
      library: DEFAULT_LIBRARY,
      tokenLabel: 'tenant-a',
      keyScheme: 'token-object',
    };
    const withConnections = (list: unknown) =>
      loadConfig({ KMS_PIN: '1234', KMS_KEY_STORE_CONNECTIONS_FILE: file('connections.json', JSON.stringify(list)) });

    it('when none is configured, then tenants are offered no connection', () => {
      expect(loadConfig({ KMS_PIN: '1234' }).keyStoreConnections).toEqual([]);
    });

    it('when connections are listed, then each is read with its defaults, restricted to its projects if it names any', () => {
      const config = withConnections([
        connection,
        {
          id: 'cluster-nsstenantstore',
          library: '/usr/lib/x86_64-linux-gnu/libsoftokn3.so',
          tokenLabel: 'NSS Certificate DB',
          initParams: "configdir='sql:/srv/nss'",
          profile: 'nss',
          projects: ['p1'],
          keyScheme: 'wrapped',
          poolSize: 3,
        },
      ]);
      expect(config.keyStoreConnections).toEqual([
        { ...connection, initParams: undefined, profile: undefined, projects: undefined, poolSize: 2 },
        {
          id: 'cluster-nsstenantstore',
          library: '/usr/lib/x86_64-linux-gnu/libsoftokn3.so',
          tokenLabel: 'NSS Certificate DB',
          initParams: "configdir='sql:/srv/nss'",
          profile: 'nss',
          projects: ['p1'],
          keyScheme: 'wrapped',
          poolSize: 3,
        },
      ]);
    });

    it("when an entry is malformed, unknown, repeated or names the service's own token, then the service refuses to start", () => {
      expect(() => withConnections([{ ...connection, id: 'tenant-a' }])).toThrow(/0\.id: must match cluster-/);
      expect(() => withConnections([{ ...connection, library: 'libsofthsm2.so' }])).toThrow(/absolute path/);
      expect(() => withConnections([{ ...connection, keyScheme: 'derived' }])).toThrow(/keyScheme/);
      expect(() => withConnections([{ ...connection, pin: '1234' }])).toThrow(/Unrecognized key/);
      expect(() => withConnections([connection, { ...connection, tokenLabel: 'b' }])).toThrow(/listed twice/);
      expect(() => withConnections([{ ...connection, tokenLabel: 'hsm-kms' }])).toThrow(/service's own token/);
      expect(() => loadConfig({ KMS_PIN: '1234', KMS_KEY_STORE_CONNECTIONS_FILE: file('bad.json', '[{') })).toThrow(
        /cannot be read as JSON/,
      );
    });

    describe('entries that reach one token', () => {
      /** The default KMS_PKCS11_LIBRARY by another path: what the dynamic loader maps as the same module. */
      const otherSpelling = path.join(dir, 'libsofthsm2-link.so');
      symlinkSync(DEFAULT_LIBRARY, otherSpelling);
      const entry = (id: string, overrides: Record<string, unknown> = {}) => ({ ...connection, id, ...overrides });

      it("when an entry reaches the default token through a symlink to its module, then it is refused as the service's own token", () => {
        expect(() =>
          withConnections([entry('cluster-throughsymlink', { library: otherSpelling, tokenLabel: 'hsm-kms' })]),
        ).toThrow(
          "connection cluster-throughsymlink is the service's own token: the default token (KMS_PKCS11_LIBRARY, KMS_TOKEN_LABEL) names the same module and token label.",
        );
        // Also when the default token is the one named through the link.
        expect(() =>
          loadConfig({
            KMS_PIN: '1234',
            KMS_PKCS11_LIBRARY: otherSpelling,
            KMS_TOKEN_LABEL: 'tenant-a',
            KMS_KEY_STORE_CONNECTIONS_FILE: file('connections.json', JSON.stringify([connection])),
          }),
        ).toThrow(/connection cluster-tenantsoftstore is the service's own token/);
      });

      it('when two entries name one token, also through two paths to its module, then the service refuses to start naming both', () => {
        expect(() => withConnections([entry('cluster-firsttenant'), entry('cluster-secondtenant')])).toThrow(
          'connection cluster-secondtenant and connection cluster-firsttenant name one token',
        );
        expect(() =>
          withConnections([entry('cluster-firsttenant'), entry('cluster-secondtenant', { library: otherSpelling })]),
        ).toThrow('connection cluster-secondtenant and connection cluster-firsttenant name one token');
      });

      it('when entries on one module give other library parameters than the default token, then they are refused without printing them', () => {
        const withParams = entry('cluster-otherparameters', {
          library: otherSpelling,
          initParams: 'configdir=/secret/path',
        });
        const message = refusalOf(() => withConnections([withParams]));
        expect(message).toMatch(
          /connection cluster-otherparameters loads the same PKCS#11 module as the default token .* with other library parameters/,
        );
        expect(message).not.toContain('/secret/path');
      });

      it('when entries reach other tokens of the module, or a module not installed yet, then they are accepted', () => {
        const config = withConnections([
          entry('cluster-firsttenant'),
          entry('cluster-secondtenant', { library: otherSpelling, tokenLabel: 'tenant-b' }),
          entry('cluster-notinstalledyet', {
            library: path.join(dir, 'missing', 'libpkcs11.so'),
            tokenLabel: 'hsm-kms',
          }),
        ]);
        expect(config.keyStoreConnections.map((c) => c.id)).toEqual([
          'cluster-firsttenant',
          'cluster-secondtenant',
          'cluster-notinstalledyet',
        ]);
      });
    });
  });

  describe('the listener: HTTPS, mutual TLS, and plain HTTP on loopback only', () => {
    let pki: TestPki;
    beforeAll(() => {
      pki = createTestPki();
    });
    afterAll(() => pki.remove());

    const withTls = (more: Record<string, string> = {}) =>
      loadConfig({
        KMS_PIN: '1234',
        KMS_TLS_CERT_FILE: pki.server.certFile,
        KMS_TLS_KEY_FILE: pki.server.keyFile,
        ...more,
      });

    it('when no certificate is configured, then the service speaks plain HTTP on the loopback addresses', () => {
      for (const host of ['127.0.0.1', '127.0.0.53', '::1', 'localhost', 'LOCALHOST']) {
        expect(loadConfig({ KMS_PIN: '1234', KMS_HOST: host }).tls).toBeUndefined();
      }
    });

    it('when the address is not loopback and there is no certificate, then start-up stops naming both ways out', () => {
      for (const host of ['0.0.0.0', '::', '10.0.0.5', '128.0.0.1', 'kms.example.com']) {
        expect(refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_HOST: host }))).toBe(
          `Invalid configuration: KMS_HOST ${host} is not a loopback address, and plain HTTP beyond this host would ` +
            'carry tokens and keys in the clear: set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE to serve HTTPS, or set ' +
            'KMS_ALLOW_PLAINTEXT_HTTP=true if a TLS-terminating proxy is the only way in.',
        );
      }
      expect(
        refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_HOST: '0.0.0.0', KMS_ALLOW_PLAINTEXT_HTTP: 'false' })),
      ).toMatch(/^Invalid configuration: KMS_HOST 0\.0\.0\.0 is not a loopback address/);
      expect(
        refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_HOST: '0.0.0.0', KMS_ALLOW_PLAINTEXT_HTTP: 'yes' })),
      ).toMatch(/^Invalid configuration: KMS_ALLOW_PLAINTEXT_HTTP: /);
    });

    it('when the address is not loopback, then KMS_ALLOW_PLAINTEXT_HTTP=true or a certificate lets the service start', () => {
      expect(loadConfig({ KMS_PIN: '1234', KMS_HOST: '0.0.0.0', KMS_ALLOW_PLAINTEXT_HTTP: 'true' })).toMatchObject({
        host: '0.0.0.0',
        tls: undefined,
      });
      expect(withTls({ KMS_HOST: '0.0.0.0' }).tls).toBeDefined();
    });

    it('when a certificate and its key are configured, then the listener is HTTPS; with a client CA and subject, mutual TLS', () => {
      expect(withTls().tls).toEqual({
        certFile: pki.server.certFile,
        keyFile: pki.server.keyFile,
        clientCaFile: undefined,
        clientSubject: undefined,
      });
      const mutual = withTls({
        KMS_TLS_CLIENT_CA_FILE: pki.ca.certFile,
        KMS_TLS_CLIENT_SUBJECT: 'CN=cks.kms.eu-west-1.amazonaws.com',
      });
      expect(mutual.tls).toMatchObject({
        clientCaFile: pki.ca.certFile,
        clientSubject: 'CN=cks.kms.eu-west-1.amazonaws.com',
      });
      expect(Object.isFrozen(mutual.tls)).toBe(true);
    });

    it('when only part of the TLS settings is given, then start-up stops naming what is missing', () => {
      expect(refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_TLS_CERT_FILE: pki.server.certFile }))).toBe(
        'Invalid configuration: KMS_TLS_CERT_FILE set without KMS_TLS_KEY_FILE: HTTPS needs both a certificate and its key.',
      );
      expect(refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_TLS_KEY_FILE: pki.server.keyFile }))).toBe(
        'Invalid configuration: KMS_TLS_KEY_FILE set without KMS_TLS_CERT_FILE: HTTPS needs both a certificate and its key.',
      );
      expect(refusalOf(() => loadConfig({ KMS_PIN: '1234', KMS_TLS_CLIENT_CA_FILE: pki.ca.certFile }))).toBe(
        'Invalid configuration: KMS_TLS_CLIENT_CA_FILE set without KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE: HTTPS ' +
          'needs both a certificate and its key.',
      );
      expect(refusalOf(() => withTls({ KMS_TLS_CLIENT_SUBJECT: 'CN=cks.kms.eu-west-1.amazonaws.com' }))).toBe(
        'Invalid configuration: KMS_TLS_CLIENT_SUBJECT needs KMS_TLS_CLIENT_CA_FILE: without the CA, client ' +
          'certificates are not asked for, and a subject alone proves nothing.',
      );
      expect(
        refusalOf(() =>
          withTls({
            KMS_TLS_CLIENT_CA_FILE: pki.ca.certFile,
            KMS_TLS_CLIENT_SUBJECT: 'cks.kms.eu-west-1.amazonaws.com',
          }),
        ),
      ).toMatch(/^Invalid configuration: KMS_TLS_CLIENT_SUBJECT: must be a subject in RFC 4514 form/);
    });

    it('when a TLS file is unreadable, mismatched, expired or not what it should be, then start-up stops naming the file but not its contents', () => {
      const other = pki.client('config-other');
      const expired = pki.serverFor('config-expired', 'DNS:localhost', { expired: true });
      const encrypted = path.join(pki.dir, 'encrypted.key');
      const keyText = pki.server.key.toString('latin1');
      writeFileSync(
        encrypted,
        createPrivateKey(pki.server.key).export({
          type: 'pkcs8',
          format: 'pem',
          cipher: 'aes-256-cbc',
          passphrase: 'secret',
        }),
      );
      const missing = path.join(pki.dir, 'missing.pem');
      const cases: [Record<string, string>, string][] = [
        [{ KMS_TLS_CERT_FILE: missing }, `KMS_TLS_CERT_FILE ${missing} cannot be read.`],
        [{ KMS_TLS_KEY_FILE: missing }, `KMS_TLS_KEY_FILE ${missing} cannot be read.`],
        [{ KMS_TLS_CLIENT_CA_FILE: missing }, `KMS_TLS_CLIENT_CA_FILE ${missing} cannot be read.`],
        [
          { KMS_TLS_CERT_FILE: pki.server.keyFile },
          `KMS_TLS_CERT_FILE ${pki.server.keyFile} does not hold PEM certificates.`,
        ],
        [
          { KMS_TLS_KEY_FILE: other.keyFile },
          `KMS_TLS_KEY_FILE ${other.keyFile} is not the key of the certificate in KMS_TLS_CERT_FILE ${pki.server.certFile}.`,
        ],
        [
          { KMS_TLS_KEY_FILE: pki.server.certFile },
          `KMS_TLS_KEY_FILE ${pki.server.certFile} does not hold an unencrypted PEM private key.`,
        ],
        [
          { KMS_TLS_KEY_FILE: encrypted },
          `KMS_TLS_KEY_FILE ${encrypted} does not hold an unencrypted PEM private key.`,
        ],
        [
          { KMS_TLS_CERT_FILE: expired.certFile, KMS_TLS_KEY_FILE: expired.keyFile },
          `KMS_TLS_CERT_FILE ${expired.certFile}: the certificate expired on ${new X509Certificate(expired.cert).validTo}.`,
        ],
        [
          { KMS_TLS_CLIENT_CA_FILE: other.certFile },
          `KMS_TLS_CLIENT_CA_FILE ${other.certFile}: certificate 1 is not a CA certificate (basicConstraints CA:TRUE), ` +
            'so no client certificate could chain to it.',
        ],
      ];
      for (const [env, message] of cases) {
        const refusal = refusalOf(() => withTls(env));
        expect(refusal).toBe(`Invalid configuration: ${message}`);
        expect(refusal).not.toContain(keyText.split('\n')[1]);
      }
    });
  });
});
