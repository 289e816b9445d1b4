import { readFileSync, statSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import { CONNECTION_ID_PATTERN } from './core/key-stores.js';
import type { RateLimits } from './core/rate-limiter.js';
import { PROFILE_NAMES, type ProfileName } from './hsm/hsm-profiles.js';
import type { HsmConnection } from './hsm/key-store-connector.js';
import { DEFAULT_SESSION_WAIT_MS } from './hsm/session-pool.js';
import { readTlsCredentials, type TlsSettings } from './http/tls-credentials.js';

/**
 * The service's configuration: read from the environment once, validated, frozen. Secrets (the PIN) come from
 * KMS_PIN or from the file KMS_PIN_FILE names; they are never logged and never appear in an error message.
 */
const intFrom = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const EnvSchema = z.object({
  KMS_DATA_DIR: z.string().min(1).default('./.data'),
  KMS_HOST: z.string().min(1).default('127.0.0.1'),
  KMS_PORT: intFrom(0, 65535).default(8080),
  KMS_WORKERS: intFrom(1, 64).default(1),
  KMS_PKCS11_LIBRARY: z.string().min(1).default('/usr/lib/softhsm/libsofthsm2.so'),
  KMS_PKCS11_INIT_PARAMS: z.string().min(1).optional(),
  KMS_HSM_PROFILE: z.enum(PROFILE_NAMES).optional(),
  KMS_TOKEN_LABEL: z.string().min(1).max(32).default('hsm-kms'),
  KMS_PIN: z.string().min(1).optional(),
  KMS_PIN_FILE: z.string().min(1).optional(),
  KMS_HSM_POOL_SIZE: intFrom(1, 64).default(4),
  KMS_HSM_SESSION_WAIT_MS: intFrom(1, 600_000).default(DEFAULT_SESSION_WAIT_MS),
  KMS_HSM_ASYNC_CALLS: z.enum(['true', 'false']).optional(),
  KMS_KEY_CACHE_SIZE: intFrom(16, 1_000_000).default(10_000),
  KMS_DB_PATH: z.string().min(1).optional(),
  KMS_CMK_QUOTA: intFrom(1, 10_000_000).default(100_000),
  KMS_RATE_LIMIT_CRYPTO_PER_SECOND: intFrom(0, 10_000_000).default(1_000),
  KMS_RATE_LIMIT_MANAGEMENT_PER_SECOND: intFrom(0, 10_000_000).default(100),
  KMS_JWKS_URL: z.url().optional(),
  KMS_TOKEN_ISSUER: z.string().min(1).optional(),
  KMS_TOKEN_AUDIENCE: z.string().min(1).optional(),
  KMS_REGION: z.string().min(1).default('local-1'),
  KMS_ALIBABA_PATH: z
    .string()
    .regex(/^\/[A-Za-z0-9._~/-]*$/, 'must be a URL path starting with /')
    .default('/'),
  KMS_KEY_STORE_CONNECTIONS_FILE: z.string().min(1).optional(),
  KMS_LOG_LEVEL: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  KMS_HEADERS_TIMEOUT_MS: intFrom(100, 600_000).default(5_000),
  KMS_REQUEST_TIMEOUT_MS: intFrom(100, 600_000).default(10_000),
  KMS_KEEP_ALIVE_TIMEOUT_MS: intFrom(100, 600_000).default(65_000),
  KMS_MAX_CONNECTIONS: intFrom(1, 1_000_000).default(512),
  KMS_MAX_CONNECTIONS_PER_CLIENT: intFrom(1, 1_000_000).optional(),
  KMS_TLS_CERT_FILE: z.string().min(1).optional(),
  KMS_TLS_KEY_FILE: z.string().min(1).optional(),
  KMS_TLS_CLIENT_CA_FILE: z.string().min(1).optional(),
  KMS_TLS_CLIENT_SUBJECT: z
    .string()
    .regex(
      /^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)*)=/,
      'must be a subject in RFC 4514 form, such as CN=cks.kms.eu-west-1.amazonaws.com',
    )
    .optional(),
  KMS_ALLOW_PLAINTEXT_HTTP: z.enum(['true', 'false']).default('false'),
  KMS_AUDIT_ENABLED: z.enum(['true', 'false']).default('true'),
  KMS_AUDIT_DIR: z.string().min(1).optional(),
  KMS_AUDIT_MAX_BYTES: intFrom(1, 2 ** 40).default(64 * 1024 * 1024),
  KMS_AUDIT_FSYNC: z.enum(['true', 'false']).default('false'),
});

/**
 * Open connections one client address may hold, unless KMS_MAX_CONNECTIONS_PER_CLIENT says otherwise (or the cap is
 * lower): a quarter of the default cap, well above the 50 connections the benchmarks open from 127.0.0.1.
 */
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 128;

export interface Config {
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  readonly workers: number;
  readonly region: string;
  /** Where the Alibaba RPC dialect is mounted; `/` by default, as Alibaba's endpoints serve it. */
  readonly alibabaPath: string;
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** Set: the listener speaks HTTPS only (src/http/tls-listener.ts); the files were read and checked at load. */
  readonly tls: TlsSettings | undefined;
  /** Bounds on every HTTP connection: a KMS request is at most 64 KiB, so none needs long. */
  readonly http: {
    /** From a request's first byte to the end of its headers. */
    readonly headersTimeoutMs: number;
    /** From a request's first byte to the end of its body: a trickled body is cut off when this runs out. */
    readonly requestTimeoutMs: number;
    /** How long a connection may stay idle between requests. */
    readonly keepAliveTimeoutMs: number;
    /** Open connections per process; more are closed as soon as they are accepted. */
    readonly maxConnections: number;
    /** Open connections per process from one client address; at most maxConnections. */
    readonly maxConnectionsPerClient: number;
  };
  readonly hsm: {
    readonly library: string;
    /** Library parameters for C_Initialize (NSS softokn needs them); undefined for SoftHSM. */
    readonly initParams: string | undefined;
    /** The module's profile (src/hsm/hsm-profiles.ts); undefined: chosen from what the module says it is. */
    readonly profile: ProfileName | undefined;
    readonly tokenLabel: string;
    readonly pin: string;
    readonly poolSize: number;
    /** How long an operation waits for a busy pool session before it answers HsmUnavailable. */
    readonly sessionWaitMs: number;
    /** Hot-path PKCS#11 calls off the event loop; undefined: as the profile says (true for cloudhsm only). */
    readonly asyncCalls: boolean | undefined;
    readonly keyCacheSize: number;
  };
  /** The HSM connections tenants may create key stores on (KMS_KEY_STORE_CONNECTIONS_FILE); none by default. */
  readonly keyStoreConnections: readonly HsmConnection[];
  readonly dbPath: string;
  readonly cmkQuota: number;
  /** Requests per second and project, by operation class (src/core/rate-limiter.ts); 0 turns a class's limit off. */
  readonly rateLimits: RateLimits;
  /** The audit trail (src/audit/file-audit-log.ts); undefined when KMS_AUDIT_ENABLED=false. */
  readonly audit:
    | {
        readonly dir: string;
        /** A file rotates once the next record would take it past this size. */
        readonly maxBytes: number;
        /** fsync after every record (survives power loss, not only a crash). */
        readonly fsync: boolean;
      }
    | undefined;
  readonly auth: {
    /** Verify tokens with this JWKS (production) instead of the local issuer key in the data directory. */
    readonly jwksUrl: string | undefined;
    readonly issuer: string | undefined;
    readonly audience: string | undefined;
  };
}

/**
 * The configuration from the environment, on top of the optional file KMS_CONFIG_FILE names (`NAME=value` lines,
 * `#` comments; the environment wins), so an operator can keep the library path, token label and PIN file together.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const fromFile = env.KMS_CONFIG_FILE ? readConfigFile(env.KMS_CONFIG_FILE) : {};
  const parsed = EnvSchema.safeParse({ ...fromFile, ...env });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    // Name the variable, never echo its value: it may be a secret.
    throw new Error(`Invalid configuration: ${String(issue?.path[0])}: ${issue?.message}`);
  }
  const e = parsed.data;
  requireTokenClaimsWithJwks(e);
  if (e.KMS_HEADERS_TIMEOUT_MS > e.KMS_REQUEST_TIMEOUT_MS) {
    // The headers are part of the request: node:http refuses a headers timeout longer than the request's.
    throw new Error('Invalid configuration: KMS_HEADERS_TIMEOUT_MS must not exceed KMS_REQUEST_TIMEOUT_MS.');
  }
  const maxConnectionsPerClient =
    e.KMS_MAX_CONNECTIONS_PER_CLIENT ?? Math.min(DEFAULT_MAX_CONNECTIONS_PER_CLIENT, e.KMS_MAX_CONNECTIONS);
  if (maxConnectionsPerClient > e.KMS_MAX_CONNECTIONS) {
    // A limit above the cap would never apply: the operator meant something else.
    throw new Error('Invalid configuration: KMS_MAX_CONNECTIONS_PER_CLIENT must not exceed KMS_MAX_CONNECTIONS.');
  }
  const tls = tlsSettings(e);
  if (tls === undefined) refusePlaintextBeyondLoopback(e.KMS_HOST, e.KMS_ALLOW_PLAINTEXT_HTTP === 'true');
  const dataDir = path.resolve(e.KMS_DATA_DIR);
  return Object.freeze({
    dataDir,
    host: e.KMS_HOST,
    port: e.KMS_PORT,
    workers: e.KMS_WORKERS,
    region: e.KMS_REGION,
    alibabaPath: e.KMS_ALIBABA_PATH,
    logLevel: e.KMS_LOG_LEVEL,
    tls,
    http: Object.freeze({
      headersTimeoutMs: e.KMS_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: e.KMS_REQUEST_TIMEOUT_MS,
      keepAliveTimeoutMs: e.KMS_KEEP_ALIVE_TIMEOUT_MS,
      maxConnections: e.KMS_MAX_CONNECTIONS,
      maxConnectionsPerClient,
    }),
    hsm: Object.freeze({
      library: e.KMS_PKCS11_LIBRARY,
      initParams: e.KMS_PKCS11_INIT_PARAMS,
      profile: e.KMS_HSM_PROFILE,
      tokenLabel: e.KMS_TOKEN_LABEL,
      pin: readPin(e.KMS_PIN, e.KMS_PIN_FILE),
      poolSize: e.KMS_HSM_POOL_SIZE,
      sessionWaitMs: e.KMS_HSM_SESSION_WAIT_MS,
      asyncCalls: e.KMS_HSM_ASYNC_CALLS === undefined ? undefined : e.KMS_HSM_ASYNC_CALLS === 'true',
      keyCacheSize: e.KMS_KEY_CACHE_SIZE,
    }),
    keyStoreConnections: e.KMS_KEY_STORE_CONNECTIONS_FILE
      ? readConnections(e.KMS_KEY_STORE_CONNECTIONS_FILE, {
          library: e.KMS_PKCS11_LIBRARY,
          initParams: e.KMS_PKCS11_INIT_PARAMS,
          tokenLabel: e.KMS_TOKEN_LABEL,
        })
      : [],
    dbPath: path.resolve(e.KMS_DB_PATH ?? path.join(dataDir, 'kms.db')),
    cmkQuota: e.KMS_CMK_QUOTA,
    rateLimits: Object.freeze({
      cryptographic: e.KMS_RATE_LIMIT_CRYPTO_PER_SECOND,
      management: e.KMS_RATE_LIMIT_MANAGEMENT_PER_SECOND,
    }),
    audit:
      e.KMS_AUDIT_ENABLED === 'true'
        ? Object.freeze({
            dir: path.resolve(e.KMS_AUDIT_DIR ?? path.join(dataDir, 'audit')),
            maxBytes: e.KMS_AUDIT_MAX_BYTES,
            fsync: e.KMS_AUDIT_FSYNC === 'true',
          })
        : undefined,
    auth: Object.freeze({ jwksUrl: e.KMS_JWKS_URL, issuer: e.KMS_TOKEN_ISSUER, audience: e.KMS_TOKEN_AUDIENCE }),
  });
}

/**
 * An identity provider's JWKS usually signs tokens for many applications: without an expected issuer and audience,
 * a token it issued for any of them, carrying a `project_id` claim, would be accepted here.
 */
function requireTokenClaimsWithJwks(e: z.infer<typeof EnvSchema>): void {
  if (e.KMS_JWKS_URL === undefined) return;
  const missing = [
    e.KMS_TOKEN_ISSUER === undefined ? 'KMS_TOKEN_ISSUER' : '',
    e.KMS_TOKEN_AUDIENCE === undefined ? 'KMS_TOKEN_AUDIENCE' : '',
  ].filter(Boolean);
  if (missing.length > 0) {
    throw new Error(
      `Invalid configuration: KMS_JWKS_URL is set, so KMS_TOKEN_ISSUER and KMS_TOKEN_AUDIENCE must be set too ` +
        `(missing: ${missing.join(', ')}); without them a token the JWKS signed for any issuer or audience would be accepted.`,
    );
  }
}

/**
 * The listener's TLS settings, or undefined for plain HTTP. The files are read and checked here, so that a bad file
 * stops the start (and the primary, before it forks workers); each process reads them again to serve.
 */
function tlsSettings(e: z.infer<typeof EnvSchema>): TlsSettings | undefined {
  const certFile = e.KMS_TLS_CERT_FILE;
  const keyFile = e.KMS_TLS_KEY_FILE;
  if (certFile === undefined || keyFile === undefined) {
    const given = ['KMS_TLS_CERT_FILE', 'KMS_TLS_KEY_FILE', 'KMS_TLS_CLIENT_CA_FILE', 'KMS_TLS_CLIENT_SUBJECT'].filter(
      (name) => e[name as keyof typeof e] !== undefined,
    );
    const missing = ['KMS_TLS_CERT_FILE', 'KMS_TLS_KEY_FILE'].filter((name) => !given.includes(name));
    if (given.length > 0) {
      throw new Error(
        `Invalid configuration: ${given.join(', ')} set without ${missing.join(' and ')}: HTTPS needs both a ` +
          'certificate and its key.',
      );
    }
    return undefined;
  }
  if (e.KMS_TLS_CLIENT_SUBJECT !== undefined && e.KMS_TLS_CLIENT_CA_FILE === undefined) {
    throw new Error(
      'Invalid configuration: KMS_TLS_CLIENT_SUBJECT needs KMS_TLS_CLIENT_CA_FILE: without the CA, client ' +
        'certificates are not asked for, and a subject alone proves nothing.',
    );
  }
  const settings = Object.freeze({
    certFile,
    keyFile,
    clientCaFile: e.KMS_TLS_CLIENT_CA_FILE,
    clientSubject: e.KMS_TLS_CLIENT_SUBJECT,
  });
  readTlsCredentials(settings).key.fill(0);
  return settings;
}

/** Names a loopback listener may be given; nothing beyond this host can reach it. */
const LOOPBACK_NAMES = new Set(['localhost', '::1']);

/**
 * Plain HTTP beyond this host would carry tokens, signatures and plaintext keys in the clear. An operator whose
 * TLS ends in a proxy in front says so with KMS_ALLOW_PLAINTEXT_HTTP=true.
 */
function refusePlaintextBeyondLoopback(host: string, allowed: boolean): void {
  const loopback = LOOPBACK_NAMES.has(host.toLowerCase()) || (isIPv4(host) && host.startsWith('127.'));
  if (loopback || allowed) return;
  throw new Error(
    `Invalid configuration: KMS_HOST ${host} is not a loopback address, and plain HTTP beyond this host would carry ` +
      'tokens and keys in the clear: set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE to serve HTTPS, or set ' +
      'KMS_ALLOW_PLAINTEXT_HTTP=true if a TLS-terminating proxy is the only way in.',
  );
}

const ConnectionSchema = z
  .object({
    id: z.string().regex(CONNECTION_ID_PATTERN, 'must match cluster-[2-7a-zA-Z]{11,16} (AWS CloudHsmClusterId)'),
    library: z
      .string()
      .min(1)
      .refine((p) => path.isAbsolute(p), 'must be an absolute path'),
    tokenLabel: z.string().min(1).max(32),
    initParams: z.string().min(1).optional(),
    profile: z.enum(PROFILE_NAMES).optional(),
    projects: z.array(z.string().min(1)).min(1).optional(),
    keyScheme: z.enum(['token-object', 'wrapped']),
    poolSize: z.number().int().min(1).max(64).default(2),
  })
  .strict();

/** A token as PKCS#11 names it to this process: the module it is reached through, its parameters and its label. */
interface TokenAddress {
  readonly library: string;
  readonly initParams: string | undefined;
  readonly tokenLabel: string;
}

/**
 * The operator's list of HSM connections, a JSON array in the file: the only place module paths for tenants come
 * from. Refuses duplicate ids, an entry on the default token, and two entries on one token: PKCS#11 login state is
 * per process and token, so a store on a token already logged in would never have its PIN checked (and one on the
 * default token would use the service's own keys).
 */
function readConnections(file: string, defaultToken: TokenAddress): HsmConnection[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    throw new Error(`Invalid configuration: KMS_KEY_STORE_CONNECTIONS_FILE ${file} cannot be read as JSON.`);
  }
  const parsed = z.array(ConnectionSchema).safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`Invalid configuration: ${file}: ${issue?.path.join('.')}: ${issue?.message}`);
  }
  const seen = new Set<string>();
  for (const c of parsed.data) {
    if (seen.has(c.id)) throw new Error(`Invalid configuration: ${file}: connection id ${c.id} is listed twice.`);
    seen.add(c.id);
  }
  const connections = parsed.data.map((c) => ({
    id: c.id,
    library: c.library,
    tokenLabel: c.tokenLabel,
    initParams: c.initParams,
    profile: c.profile,
    projects: c.projects,
    keyScheme: c.keyScheme,
    poolSize: c.poolSize,
  }));
  refuseSharedTokens(file, defaultToken, connections);
  return connections;
}

const DEFAULT_TOKEN = 'the default token (KMS_PKCS11_LIBRARY, KMS_TOKEN_LABEL)';

/**
 * Entries are compared by the module file they load, not by how its path is spelt: the dynamic loader maps one file
 * once per process, whether it is reached through a symlink or a hard link, so two spellings share one login. The
 * library parameters must then agree too (a module is initialised once per process, with one set), and the labels
 * must differ. The parameters name paths and are never printed.
 */
function refuseSharedTokens(file: string, defaultToken: TokenAddress, connections: readonly HsmConnection[]): void {
  const byModule = new Map<string, { name: string; initParams: string | undefined; labels: Map<string, string> }>();
  const entries = [
    { name: DEFAULT_TOKEN, ...defaultToken },
    ...connections.map((c) => ({ ...c, name: `connection ${c.id}` })),
  ];
  for (const entry of entries) {
    const identity = moduleIdentity(entry.library);
    const known = byModule.get(identity);
    if (known === undefined) {
      byModule.set(identity, {
        name: entry.name,
        initParams: entry.initParams,
        labels: new Map([[entry.tokenLabel, entry.name]]),
      });
      continue;
    }
    if (known.initParams !== entry.initParams) {
      throw new Error(
        `Invalid configuration: ${file}: ${entry.name} loads the same PKCS#11 module as ${known.name} with other ` +
          'library parameters: a module is initialised once per process, so all its tokens must give the same ones.',
      );
    }
    const sameToken = known.labels.get(entry.tokenLabel);
    if (sameToken === DEFAULT_TOKEN) {
      throw new Error(
        `Invalid configuration: ${file}: ${entry.name} is the service's own token: ${DEFAULT_TOKEN} names the same ` +
          'module and token label.',
      );
    }
    if (sameToken !== undefined) {
      throw new Error(
        `Invalid configuration: ${file}: ${entry.name} and ${sameToken} name one token (the same module and token ` +
          "label): login is per process and token, so one store's PIN would never be checked.",
      );
    }
    known.labels.set(entry.tokenLabel, entry.name);
  }
}

/**
 * What the dynamic loader tells modules apart by: the file's device and inode (symlinks followed). A module that is
 * not there yet is compared by its resolved path; connecting to it fails later with NETWORK_ERRORS.
 */
function moduleIdentity(library: string): string {
  try {
    const stat = statSync(library);
    return `file ${stat.dev}:${stat.ino}`;
  } catch {
    return `path ${path.resolve(library)}`;
  }
}

function readConfigFile(file: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new Error(`Invalid configuration: KMS_CONFIG_FILE ${file} cannot be read.`);
  }
  const values: Record<string, string> = {};
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([A-Z0-9_]+)\s*=\s*(.*)$/.exec(line);
    if (!match) throw new Error(`Invalid configuration: ${file} line ${index + 1} is not NAME=value.`);
    const [, name, value] = match as unknown as [string, string, string];
    values[name] = value.replace(/^(['"])(.*)\1$/, '$2');
  }
  return values;
}

function readPin(pin: string | undefined, pinFile: string | undefined): string {
  if (pin !== undefined) return pin;
  if (pinFile === undefined) throw new Error('Invalid configuration: set KMS_PIN or KMS_PIN_FILE (the HSM user PIN).');
  try {
    const fromFile = readFileSync(pinFile, 'utf8').trim();
    if (fromFile.length === 0) throw new Error('empty');
    return fromFile;
  } catch {
    throw new Error(`Invalid configuration: KMS_PIN_FILE ${pinFile} cannot be read or is empty.`);
  }
}
