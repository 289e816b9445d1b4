import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { type RunningService, type StartOptions, startService } from '../../src/service.js';
import { RATE_LIMITS_OFF } from './child-service.js';
import { type AnyTestToken, createTestToken, removeTestToken, type TokenProvider } from './softhsm.js';

export interface HuaweiResponse {
  readonly status: number;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field in the tests
  readonly body: any;
  readonly headers: Headers;
}

/** Huawei's error body as the service sends it: the pair inside `error`, and again at the top level. */
export function huaweiErrorBody(code: string, message: string) {
  return { error: { error_code: code, error_msg: message }, error_code: code, error_msg: message };
}

export interface TestService {
  readonly url: string;
  readonly running: RunningService;
  readonly dataDir: string;
  readonly env: Record<string, string>;
  /** Every line the service logged so far (JSON lines, error level and above, as the tests configure it). */
  readonly log: () => string;
  tokenFor(projectId: string, ttlSeconds?: number): Promise<string>;
  /** POST (or `method`) /v1.0/{project}/kms/{action} with a fresh token for the project unless `token` is given. */
  call(
    projectId: string,
    action: string,
    body?: unknown,
    options?: { token?: string | null; method?: string; rawBody?: string },
  ): Promise<HuaweiResponse>;
  /** Stops the service (the token and data stay, for a restart). */
  stop(): Promise<void>;
  /** Starts the service again on the same token and data. */
  restart(): Promise<TestService>;
  /** Stops the service and deletes the token and data. */
  destroy(): Promise<void>;
}

export interface TestServiceOptions {
  /** Receives every log line the service writes at KMS_LOG_LEVEL or above (default: stderr, errors only). */
  readonly onLog?: (line: string) => void;
  /** The PKCS#11 module the token lives in (SoftHSM unless told otherwise). */
  readonly provider?: TokenProvider;
  /**
   * Another in-process test service whose token this one shares, with a data directory of its own. A library reads
   * its token list once per process (SoftHSM at C_Initialize), so a second service running beside the first in this
   * process must use a token the library already knows.
   */
  readonly besides?: TestService;
  /**
   * Called with the fresh default token before the service starts; returns more environment. Tests of key stores
   * add tenants' tokens here (in the same SoftHSM token directory, before the library lists its tokens).
   */
  readonly prepare?: (token: AnyTestToken) => Record<string, string>;
  /** Passed to startService: wraps each key store's HSM adapter as it is opened. */
  readonly wrapKeyStoreHsm?: StartOptions['wrapKeyStoreHsm'];
  /** Passed to startService: wraps the default HSM's PKCS#11 binding (fault injection). */
  readonly wrapPkcs11?: StartOptions['wrapPkcs11'];
}

/**
 * The real service, in this process, on 127.0.0.1 and a free port, with a fresh token (SoftHSM unless
 * `options.provider` says otherwise) and data directory.
 */
export async function startTestService(
  extraEnv: Record<string, string> = {},
  options: TestServiceOptions = {},
): Promise<TestService> {
  if (options.besides !== undefined) {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-besides-'));
    const env = { ...options.besides.env, KMS_DATA_DIR: dataDir, KMS_PORT: '0', ...extraEnv };
    return boot(env, options, () => rmSync(dataDir, { recursive: true, force: true }));
  }
  const token = createTestToken(options.provider ?? 'softhsm');
  const env: Record<string, string> = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_PORT: '0',
    KMS_HOST: '127.0.0.1',
    KMS_LOG_LEVEL: 'error',
    ...RATE_LIMITS_OFF,
    ...token.serviceEnv,
    ...options.prepare?.(token),
    ...extraEnv,
  };
  return boot(env, options, () => removeTestToken(token.dir));
}

async function boot(
  env: Record<string, string>,
  options: TestServiceOptions,
  cleanup: () => void,
): Promise<TestService> {
  const config = loadConfig(env);
  const lines: string[] = [];
  const logger = createLogger(config.logLevel, (line) => {
    lines.push(line);
    if (options.onLog) options.onLog(line);
    else process.stderr.write(line);
  });
  const running = await startService(config, logger, 'single', {
    ...(options.wrapKeyStoreHsm ? { wrapKeyStoreHsm: options.wrapKeyStoreHsm } : {}),
    ...(options.wrapPkcs11 ? { wrapPkcs11: options.wrapPkcs11 } : {}),
  });
  const url = running.url as string;
  const issuer = loadOrCreateIssuerKeys(config.dataDir);
  const tokens = new Map<string, string>();
  const tokenFor = async (projectId: string, ttlSeconds = 3600) => {
    if (ttlSeconds !== 3600) return signProjectToken(issuer, projectId, ttlSeconds);
    let t = tokens.get(projectId);
    if (!t) {
      t = await signProjectToken(issuer, projectId, ttlSeconds);
      tokens.set(projectId, t);
    }
    return t;
  };
  const service: TestService = {
    url,
    running,
    dataDir: config.dataDir,
    env,
    log: () => lines.join(''),
    tokenFor,
    async call(projectId, action, body, options = {}) {
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      const token = options.token === undefined ? await tokenFor(projectId) : options.token;
      if (token !== null) headers['x-auth-token'] = token;
      const method = options.method ?? 'POST';
      const res = await fetch(`${url}/v1.0/${projectId}/kms/${action}`, {
        method,
        headers,
        ...(method === 'GET' || method === 'HEAD' ? {} : { body: options.rawBody ?? JSON.stringify(body ?? {}) }),
      });
      const text = await res.text();
      return { status: res.status, body: text.length > 0 ? JSON.parse(text) : undefined, headers: res.headers };
    },
    stop: () => running.stop(),
    async restart() {
      return boot(env, options, cleanup);
    },
    async destroy() {
      await running.stop().catch(() => undefined);
      cleanup();
    },
  };
  return service;
}

/** Creates a key in the project and returns its id. */
export async function createKey(service: TestService, projectId: string, alias: string): Promise<string> {
  const res = await service.call(projectId, 'create-key', { key_alias: alias });
  if (res.status !== 200) throw new Error(`create-key failed: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.key_info.key_id as string;
}

/**
 * Makes the key's automatic rotation due now, as if its date had passed while the service ran (the schedule must be
 * on): a test can then rotate it as the sweep does without moving any clock.
 */
export function makeDue(dataDir: string, keyId: string): void {
  const db = new Database(path.join(dataDir, 'kms.db'));
  try {
    db.prepare('UPDATE keys SET next_rotation_at = 1 WHERE id = ? AND rotation_period_days IS NOT NULL').run(keyId);
  } finally {
    db.close();
  }
}
