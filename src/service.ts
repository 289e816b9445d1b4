import type { Server } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Services } from './api/huawei/context.js';
import { createApp } from './app.js';
import { FileAuditLog } from './audit/file-audit-log.js';
import { loadOrCreateIssuerKeys } from './auth/local-issuer.js';
import { TokenVerifier } from './auth/token-verifier.js';
import type { Config } from './config.js';
import { CredentialService } from './core/credential.service.js';
import { DataKeyService } from './core/data-key.service.js';
import { KeyService } from './core/key.service.js';
import { KeyStoreService } from './core/key-store.service.js';
import { PasswordService } from './core/password.service.js';
import type { Clock, Hsm } from './core/ports.js';
import { RandomService } from './core/random.service.js';
import type { RandomHealthEvent } from './core/random-health.js';
import {
  LeasedRateLimiter,
  type LeaseTokens,
  LocalRateLimiter,
  NO_RATE_LIMIT,
  type RateLimiter,
  type RateLimits,
  TokenBuckets,
} from './core/rate-limiter.js';
import { RootKeyService } from './core/root-key.service.js';
import { XksService } from './core/xks.service.js';
import { GrapheneHsm, type HsmConfig } from './hsm/graphene-hsm.js';
import { GrapheneKeyStoreConnector } from './hsm/key-store-connector.js';
import { createBoundedServer } from './http/bounded-server.js';
import { errorFields, type Logger } from './logger.js';
import { CachingMetadataStore } from './store/caching-metadata-store.js';
import { SqliteMetadataStore } from './store/sqlite-metadata-store.js';
import { SqliteNonceLedger } from './store/sqlite-nonce-ledger.js';

/** How often keys whose deletion window has passed are deleted for good. */
const DELETION_SWEEP_MS = 60_000;
/**
 * Longest a process serves a cached key record. Changes made by other cluster processes arrive by message within
 * milliseconds; this only bounds staleness should a message ever be lost. It must stay long enough that a cache of
 * 10,000 keys in random use still hits (at 2,000 requests/s each key is used every 5 s).
 */
const KEY_CACHE_MAX_AGE_MS = 30_000;
const KEY_CACHE_ENTRIES = 100_000;

/**
 * The roles a process plays. `single` does everything; with node:cluster the `primary` prepares the token and the
 * database and sweeps deletions, and each `worker` serves HTTP (each with its own PKCS#11 initialisation and login).
 */
export type Role = 'single' | 'primary' | 'worker';

export interface RunningService {
  readonly services: Services;
  /** Access keys of the signed dialects (Huawei AK/SK, AWS SigV4, Alibaba RPC). */
  readonly credentials: CredentialService;
  readonly hsm: GrapheneHsm;
  readonly store: CachingMetadataStore;
  /** The SignatureNonces the Alibaba dialect has accepted. */
  readonly nonces: SqliteNonceLedger;
  /** Set when the role serves HTTP. */
  readonly url: string | undefined;
  stop(): Promise<void>;
}

export interface StartOptions {
  readonly clock?: Clock;
  /** Called after this process writes metadata: main.ts tells the other cluster processes to invalidate. */
  readonly onMetadataWrite?: () => void;
  /** Wraps each key store's HSM adapter as it is opened: tests count its calls or inject faults there. */
  readonly wrapKeyStoreHsm?: (connectionId: string, hsm: Hsm) => Hsm;
  /** Wraps the PKCS#11 binding of the default HSM's adapter: tests and the fault benchmark inject faults there. */
  readonly wrapPkcs11?: HsmConfig['wrapPkcs11'];
  /** A cluster worker's way to lease rate-limit tokens from the primary's buckets (src/rate-lease-ipc.ts). */
  readonly leaseRateTokens?: LeaseTokens;
  /**
   * Which audit chain this process writes (src/audit/file-audit-log.ts): 0 for a single process, the worker's slot
   * (1..N, handed down by the primary) in a cluster, so that no two processes ever write into one chain.
   */
  readonly auditSlot?: number;
}

const systemClock: Clock = { now: () => Date.now() };

export async function startService(
  config: Config,
  logger: Logger,
  role: Role,
  options: StartOptions = {},
): Promise<RunningService> {
  const clock = options.clock ?? systemClock;
  const store = new CachingMetadataStore(SqliteMetadataStore.open(config.dbPath), {
    maxAgeMs: KEY_CACHE_MAX_AGE_MS,
    maxEntries: KEY_CACHE_ENTRIES,
    ...(options.onMetadataWrite ? { onWrite: options.onMetadataWrite } : {}),
  });
  // Beside the metadata database, in a file of its own (src/store/sqlite-nonce-ledger.ts says why).
  const nonces = SqliteNonceLedger.open(`${config.dbPath}-nonces`);
  const hsm = await GrapheneHsm.open({
    ...config.hsm,
    createTokenKeysIfMissing: role !== 'worker',
    onRandomHealth: randomHealthLog(logger, { token: config.hsm.tokenLabel }),
    wrapPkcs11: options.wrapPkcs11,
  }).catch(async (err: unknown) => {
    await nonces.close();
    await store.close();
    throw err;
  });
  const keyStores = new KeyStoreService(
    hsm,
    store,
    new GrapheneKeyStoreConnector(
      config.keyStoreConnections,
      config.hsm.keyCacheSize,
      options.wrapKeyStoreHsm,
      (connection, event) => randomHealthLog(logger, { keyStoreConnection: connection })(event),
    ),
    clock,
    // As AWS labels a CloudHSM key store's keys: a tenant can tell in its own HSM which key is which.
    (key) => `arn:aws:kms:${config.region}:${key.projectId}:key/${key.id}`,
  );
  const keys = new KeyService(hsm, store, clock, config.cmkQuota, keyStores);
  keyStores.onBeforeConnected((connecting, tokenHsm) => keys.reconcileStore(connecting, tokenHsm));
  keyStores.watchOpenStores();
  const random = new RandomService(hsm, keyStores);
  const rateLimiter = rateLimiterFor(config.rateLimits, role, clock, options.leaseRateTokens);
  const services: Services = {
    random,
    passwords: new PasswordService((length) => random.generate(length)),
    keys,
    keyStores,
    dataKeys: new DataKeyService(store, keys),
    region: config.region,
    cmkQuota: config.cmkQuota,
    rateLimiter,
  };

  const credentials = new CredentialService(hsm, store, clock);

  let sweeper: NodeJS.Timeout | undefined;
  // The sweep yields between batches: stop() waits for one under way before closing the store beneath it, and a
  // tick that comes while one is under way (a backlog longer than the interval) starts no second one beside it.
  let sweeping: Promise<unknown> | undefined;
  if (role !== 'worker') {
    await new RootKeyService(hsm, store, clock).ensureActiveRoot();
    // Connections a crash interrupted are finished first: keys half-made in those stores can then be cleaned up.
    await keyStores.resumeConnections();
    await keyStores.settled();
    const reconciled = await keys.reconcilePendingCreation();
    if (reconciled.purged > 0) logger.warn('removed keys left half-created by a crash', { count: reconciled.purged });
    if (reconciled.waiting > 0) {
      // Their records name token objects that may exist in a store that cannot be reached now: the next start
      // destroys them, so that no object is left that no key knows of.
      logger.warn('keys left half-created in key stores that cannot be reached wait for the next start', {
        count: reconciled.waiting,
      });
    }
    const sweep = () => {
      // Due rotations first: a key whose rotation and deletion both fell due while the service was down is deleted
      // all the same. Only this process (the primary, or the single one) rotates on schedule.
      sweeping ??= keys
        .rotateDueKeys()
        .then(
          ({ rotated, failed }) => {
            if (rotated > 0) logger.info('rotated keys whose automatic rotation was due', { count: rotated });
            for (const { keyId, error } of failed) {
              logger.warn('a due rotation failed; it is tried again at the next sweep', {
                keyId,
                ...errorFields(error),
              });
            }
          },
          (err: unknown) => logger.error('rotation sweep failed', errorFields(err)),
        )
        .then(() => Promise.all([keys.purgeDueDeletions(), nonces.purgeExpired(clock.now())]))
        .then(
          ([n]) => n > 0 && logger.info('deleted keys whose deletion date passed', { count: n }),
          (err: unknown) => logger.error('deletion sweep failed', errorFields(err)),
        )
        .finally(() => {
          sweeping = undefined;
        });
      return sweeping;
    };
    await sweep();
    sweeper = setInterval(sweep, DELETION_SWEEP_MS).unref();
  }

  let server: Server | HttpsServer | undefined;
  let url: string | undefined;
  let audit: FileAuditLog | undefined;
  if (role !== 'primary') {
    const key = config.auth.jwksUrl ? new URL(config.auth.jwksUrl) : loadOrCreateIssuerKeys(config.dataDir).publicKey;
    const verifier = new TokenVerifier({ key, issuer: config.auth.issuer, audience: config.auth.audience });
    const lookupSecret = (id: string) => credentials.resolve(id);
    const huawei = { lookupSecret, now: () => clock.now() };
    const aws = { regions: [config.region], lookupSecret };
    const alibaba = {
      path: config.alibabaPath,
      region: config.region,
      lookupSecret,
      claimNonce: nonces.claim.bind(nonces),
      now: () => clock.now(),
    };
    const xks = {
      service: new XksService(store, keys, hsm, clock),
      regions: [config.region],
      lookupSecret: (id: string) => credentials.resolveXks(id),
      rateLimiter,
      deployment: {
        fleetSize: config.workers,
        ekmVendor: hsm.profile.name === 'generic' ? 'PKCS#11' : hsm.profile.name,
        ekm: { id: config.hsm.tokenLabel, model: `PKCS#11 token (${hsm.profile.name} profile)` },
      },
      now: () => clock.now(),
    };
    // Opened before the listener: a log that cannot be opened (or resumed) stops the start, never a request unrecorded.
    audit = config.audit && new FileAuditLog({ ...config.audit, slot: options.auditSlot ?? 0 });
    const app = createApp({
      services,
      verifier,
      logger,
      huawei,
      aws,
      alibaba,
      xks,
      tls: config.tls !== undefined,
      audit,
    });
    const listening = createBoundedServer(app, config.http, logger, config.tls);
    server = await new Promise<Server | HttpsServer>((resolve, reject) => {
      listening.once('error', reject);
      listening.listen(config.port, config.host, () => resolve(listening));
    });
    const { port } = server.address() as AddressInfo;
    url = `${config.tls ? 'https' : 'http'}://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  } else {
    loadOrCreateIssuerKeys(config.dataDir);
  }

  return {
    services,
    credentials,
    hsm,
    store,
    nonces,
    url,
    async stop() {
      if (sweeper) clearInterval(sweeper);
      await sweeping;
      if (server) {
        const s = server;
        await new Promise<void>((resolve) => {
          s.close(() => resolve());
          s.closeIdleConnections();
        });
      }
      audit?.close();
      await keyStores.close();
      await hsm.close();
      await nonces.close();
      await store.close();
    },
  };
}

/** Logs a random source's failure once (not per refused request) and its recovery. */
function randomHealthLog(logger: Logger, source: Record<string, string>): (event: RandomHealthEvent) => void {
  return (event) => {
    if (event.kind === 'failed') {
      logger.error(
        'the HSM random number generator failed its health test: random bytes, data keys, passwords and GCM ' +
          'encryption are refused until it passes again',
        { ...source, test: event.test, retestInMs: event.retestInMs },
      );
    } else {
      logger.warn('the HSM random number generator passed its health test again: serving random bytes', {
        ...source,
        failedForMs: event.failedForMs,
      });
    }
  };
}

/**
 * The process's rate limiter: a cluster worker spends tokens leased from the primary's buckets, so that a project's
 * limit is the service's, not each worker's; a single process takes them from buckets of its own. The primary serves
 * no requests (main.ts holds its buckets).
 */
function rateLimiterFor(
  limits: RateLimits,
  role: Role,
  clock: Clock,
  leaseRateTokens: LeaseTokens | undefined,
): RateLimiter {
  if (role === 'primary' || (limits.cryptographic === 0 && limits.management === 0)) return NO_RATE_LIMIT;
  if (role === 'worker' && leaseRateTokens !== undefined) return new LeasedRateLimiter(limits, clock, leaseRateTokens);
  return new LocalRateLimiter(new TokenBuckets(limits, clock));
}
