import { readdirSync, renameSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pkcs11js from 'pkcs11js';
import type { HsmPoolStats } from '../../src/hsm/graphene-hsm.js';
import { signedRpcParams } from './alibaba-sdk.js';
import { signedAwsRequest } from './aws-request.js';
import { FAULT_CODES, type FaultCounters, type FaultPlan, type FaultyPkcs11, seededRandom } from './faulty-pkcs11.js';
import type { TestService } from './test-service.js';

/**
 * Concurrent load through HTTP in the three dialects, for the HSM fault runs (test/api/hsm-faults.test.ts and
 * bench/hsm-faults.bench.ts): create-datakey / decrypt-datakey and create-key (Huawei), Encrypt, Decrypt,
 * GenerateDataKey and CreateKey (AWS, SigV4; Alibaba, RPC signature). Every answer is classified: a success, the
 * dialect's retryable error with Retry-After, or a violation. What a success acknowledged (keys, ciphertexts) is
 * kept, and checked afterwards.
 */

type Dialect = 'huawei' | 'aws' | 'alibaba';

/**
 * The longest a request may take under faults, on a loaded machine (docs/reliability-parts/hsm-faults.md says why it
 * holds); a request still unanswered then counts as a violation.
 */
export const REQUEST_BOUND_MS = 5_000;
/** The bound: the pool heals within 5 s of the fault clearing (or of the token's return). */
export const HEAL_BOUND_MS = 5_000;

/**
 * SoftHSM's CKR_GENERAL_ERROR is also a data answer from these: a bad GCM tag from C_Decrypt (the softhsm2
 * profile's tagFailureCodes), corrupt kept material from C_UnwrapKey and C_DeriveKey (src/hsm/pkcs11-errors.ts). The
 * adapter rightly answers those as an invalid ciphertext or an internal error, and cannot tell an injected fault from
 * them, so the runs never inject CKR_GENERAL_ERROR there.
 */
const GENERAL_ERROR_IS_DATA = new Set(['C_Decrypt', 'C_UnwrapKey', 'C_DeriveKey']);

/** What the fault runs inject besides their seed and count: every code of FAULT_CODES, and 1 call in 100 slowed by 2 ms. */
export const FAULT_RUN: Omit<FaultPlan, 'seed'> = {
  latencyMs: 2,
  latencyProbability: 0.01,
  codesFor: (name) =>
    GENERAL_ERROR_IS_DATA.has(name) ? FAULT_CODES.filter((code) => code !== pkcs11js.CKR_GENERAL_ERROR) : undefined,
};

/** What each dialect answers for HsmUnavailable (src/api/{huawei,aws,alibaba}/errors.ts). */
const RETRYABLE: Record<Dialect, { readonly status: number; readonly code: string }> = {
  huawei: { status: 503, code: 'KMS.0104' },
  aws: { status: 500, code: 'DependencyTimeoutException' },
  alibaba: { status: 503, code: 'ServiceUnavailableTemporary' },
};

interface Answer {
  readonly status: number;
  /** The dialect's error code when not a success. */
  readonly code: string | undefined;
  readonly retryAfter: string | null | undefined;
  // biome-ignore lint/suspicious/noExplicitAny: each dialect's body is read field by field
  readonly body: any;
}

export interface RequestOutcome {
  readonly dialect: Dialect;
  readonly op: string;
  readonly ok: boolean;
  /** Failed with the dialect's retryable error and a Retry-After header. */
  readonly retryable: boolean;
  /** performance.now() at start and end. */
  readonly startedAt: number;
  readonly endedAt: number;
  /** Why the answer is neither a success nor the retryable error. */
  readonly problem?: string;
}

interface Acknowledged {
  /** Keys whose creation was answered with success: they must exist, be Enabled, and work. */
  readonly keys: { readonly dialect: Dialect; readonly projectId: string; readonly keyId: string }[];
  /** Ciphertexts a success handed out: they must still decrypt, to the same plaintext where it is known. */
  readonly ciphertexts: {
    readonly dialect: Dialect;
    readonly keyId: string;
    readonly blob: string;
    readonly plain?: string;
  }[];
}

const HUAWEI_PROJECT = 'faults-huawei';
const AWS_PROJECT = 'faults-aws';
const ALIBABA_PROJECT = 'faults-alibaba';
/** Ciphertexts kept per dialect for the checks (and for Decrypt requests). */
const MAX_KEPT_CIPHERTEXTS = 300;

export class FaultLoad {
  readonly #service: TestService;
  readonly #aws: { accessKeyId: string; secretAccessKey: string };
  readonly #alibaba: { accessKeyId: string; secretAccessKey: string };
  readonly #keyOf: Record<Dialect, string>;
  readonly outcomes: RequestOutcome[] = [];
  readonly acknowledged: Acknowledged = { keys: [], ciphertexts: [] };
  #stopping = false;

  private constructor(
    service: TestService,
    aws: { accessKeyId: string; secretAccessKey: string },
    alibaba: { accessKeyId: string; secretAccessKey: string },
    keyOf: Record<Dialect, string>,
  ) {
    this.#service = service;
    this.#aws = aws;
    this.#alibaba = alibaba;
    this.#keyOf = keyOf;
  }

  /** Access keys and one key per dialect, made before any fault (the access keys' secrets are then cached). */
  static async prepare(service: TestService): Promise<FaultLoad> {
    const { credentials } = service.running;
    const aws = await credentials.create(AWS_PROJECT);
    const alibaba = await credentials.create(ALIBABA_PROJECT);
    const load = new FaultLoad(service, aws, alibaba, { huawei: '', aws: '', alibaba: '' });
    for (const dialect of ['huawei', 'aws', 'alibaba'] as const) {
      const made = await load.#createKey(dialect);
      const keyId = load.#keyIdOf(dialect, made);
      if (keyId === undefined) throw new Error(`${dialect} key creation failed: ${made.status} ${made.code}`);
      load.#keyOf[dialect] = keyId;
    }
    return load;
  }

  /**
   * `concurrency` clients, each sending one request after another (chosen by a PRNG seeded with `seed`) until
   * `done()` says so; resolves when every request in flight has been answered.
   */
  async run(options: { concurrency: number; seed: number; done: () => boolean }): Promise<void> {
    this.#stopping = false;
    const random = seededRandom(options.seed);
    const client = async () => {
      while (!this.#stopping && !options.done()) await this.#one(random());
    };
    await Promise.all(Array.from({ length: options.concurrency }, client));
  }

  stop(): void {
    this.#stopping = true;
  }

  /** Checks that every acknowledged key works and every acknowledged ciphertext decrypts; returns what did not. */
  async checkAcknowledged(): Promise<string[]> {
    const problems: string[] = [];
    const { store } = this.#service.running;
    const pending = await store.listPendingCreation();
    if (pending.length > 0) problems.push(`${pending.length} keys are PendingCreation`);
    for (const { dialect, projectId, keyId } of this.acknowledged.keys) {
      const key = await store.findKey(projectId, keyId);
      if (key?.state !== 'Enabled') {
        problems.push(`${dialect} key ${keyId} is ${key?.state ?? 'missing'}`);
        continue;
      }
      if ((await store.findKeyVersion(keyId, key.currentVersion, true)) === undefined) {
        problems.push(`${dialect} key ${keyId} has no version ${key.currentVersion}`);
        continue;
      }
      const used = await this.#encrypt(dialect, keyId, 'check');
      if (used.status !== 200) problems.push(`${dialect} key ${keyId} does not encrypt: ${used.status} ${used.code}`);
    }
    // Keys made and not acknowledged would be half-created: count them against the acknowledged ones.
    for (const [dialect, projectId] of [
      ['huawei', HUAWEI_PROJECT],
      ['aws', AWS_PROJECT],
      ['alibaba', ALIBABA_PROJECT],
    ] as const) {
      const acknowledged = this.acknowledged.keys.filter((k) => k.dialect === dialect).length + 1;
      const stored = await store.countKeys(projectId);
      if (stored !== acknowledged) problems.push(`${dialect}: ${stored} keys stored, ${acknowledged} acknowledged`);
    }
    for (const { dialect, keyId, blob, plain } of this.acknowledged.ciphertexts) {
      const opened = await this.#decrypt(dialect, keyId, blob);
      if (opened.status !== 200) {
        problems.push(`${dialect} ciphertext under ${keyId} does not decrypt: ${opened.status} ${opened.code}`);
      } else if (plain !== undefined && this.#plaintextOf(dialect, opened) !== plain) {
        problems.push(`${dialect} ciphertext under ${keyId} decrypts to something else`);
      }
    }
    return problems;
  }

  async #one(roll: number): Promise<void> {
    const dialect: Dialect = roll < 1 / 3 ? 'huawei' : roll < 2 / 3 ? 'aws' : 'alibaba';
    // Within the dialect: 5% key creation, 35% encrypt or data key, 30% decrypt of a kept ciphertext, 30% data key.
    const within = (roll * 3) % 1;
    const keyId = this.#keyOf[dialect];
    const kept = this.acknowledged.ciphertexts.filter((c) => c.dialect === dialect);
    const startedAt = performance.now();
    let op: string;
    let answer: Answer;
    if (within < 0.05) {
      op = 'create-key';
      answer = await this.#bounded(this.#createKey(dialect));
      const made = answer.status === 200 ? this.#keyIdOf(dialect, answer) : undefined;
      if (made !== undefined) this.acknowledged.keys.push({ dialect, projectId: projectOf(dialect), keyId: made });
    } else if (within < 0.4 || kept.length === 0) {
      op = 'encrypt';
      const plain = `p${Math.floor(roll * 1e9)}`;
      answer = await this.#bounded(this.#encrypt(dialect, keyId, plain));
      if (answer.status === 200 && kept.length < MAX_KEPT_CIPHERTEXTS) {
        this.acknowledged.ciphertexts.push({ dialect, keyId, blob: this.#blobOf(dialect, answer), plain });
      }
    } else if (within < 0.7) {
      op = 'decrypt';
      const pick = kept[Math.floor(within * 1e6) % kept.length] as Acknowledged['ciphertexts'][number];
      answer = await this.#bounded(this.#decrypt(dialect, pick.keyId, pick.blob));
    } else {
      op = 'data-key';
      answer = await this.#bounded(this.#dataKey(dialect, keyId));
    }
    const endedAt = performance.now();
    const retryable =
      answer.status === RETRYABLE[dialect].status &&
      answer.code === RETRYABLE[dialect].code &&
      typeof answer.retryAfter === 'string' &&
      Number(answer.retryAfter) >= 1;
    const ok = answer.status === 200;
    const problem = ok || retryable ? undefined : `${answer.status} ${answer.code} Retry-After=${answer.retryAfter}`;
    this.outcomes.push({ dialect, op, ok, retryable, startedAt, endedAt, ...(problem ? { problem } : {}) });
  }

  /** The answer, or after REQUEST_BOUND_MS a status 0 that counts as a violation (the request is left hanging). */
  async #bounded(request: Promise<Answer>): Promise<Answer> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<Answer>((resolve) => {
      timer = setTimeout(
        () => resolve({ status: 0, code: `no answer within ${REQUEST_BOUND_MS} ms`, retryAfter: undefined, body: {} }),
        REQUEST_BOUND_MS,
      );
    });
    try {
      return await Promise.race([request, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- the dialects -------------------------------------------------------------------------------------------

  #createKey(dialect: Dialect): Promise<Answer> {
    switch (dialect) {
      case 'huawei':
        return this.#huawei('create-key', { key_alias: `k${performance.now().toString(36).replace('.', '')}` });
      case 'aws':
        return this.#awsCall('CreateKey', {});
      case 'alibaba':
        return this.#alibabaCall({ Action: 'CreateKey' });
    }
  }

  #keyIdOf(dialect: Dialect, answer: Answer): string | undefined {
    const body = answer.body;
    return dialect === 'huawei' ? body?.key_info?.key_id : body?.KeyMetadata?.KeyId;
  }

  #encrypt(dialect: Dialect, keyId: string, plain: string): Promise<Answer> {
    switch (dialect) {
      case 'huawei':
        return this.#huawei('encrypt-data', { key_id: keyId, plain_text: plain });
      case 'aws':
        return this.#awsCall('Encrypt', { KeyId: keyId, Plaintext: Buffer.from(plain).toString('base64') });
      case 'alibaba':
        return this.#alibabaCall({ Action: 'Encrypt', KeyId: keyId, Plaintext: plain });
    }
  }

  #blobOf(dialect: Dialect, answer: Answer): string {
    return dialect === 'huawei' ? answer.body.cipher_text : answer.body.CiphertextBlob;
  }

  #decrypt(dialect: Dialect, keyId: string, blob: string): Promise<Answer> {
    switch (dialect) {
      case 'huawei':
        return this.#huawei('decrypt-data', { cipher_text: blob });
      case 'aws':
        return this.#awsCall('Decrypt', { KeyId: keyId, CiphertextBlob: blob });
      case 'alibaba':
        return this.#alibabaCall({ Action: 'Decrypt', CiphertextBlob: blob });
    }
  }

  #plaintextOf(dialect: Dialect, answer: Answer): string {
    if (dialect === 'huawei') return answer.body.plain_text;
    if (dialect === 'aws') return Buffer.from(answer.body.Plaintext, 'base64').toString();
    return answer.body.Plaintext;
  }

  #dataKey(dialect: Dialect, keyId: string): Promise<Answer> {
    switch (dialect) {
      case 'huawei':
        return this.#huawei('create-datakey', { key_id: keyId, datakey_length: '256' });
      case 'aws':
        return this.#awsCall('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256' });
      case 'alibaba':
        return this.#alibabaCall({ Action: 'GenerateDataKey', KeyId: keyId });
    }
  }

  async #huawei(action: string, body: object): Promise<Answer> {
    const res = await this.#service.call(HUAWEI_PROJECT, action, body);
    return {
      status: res.status,
      code: res.body?.error_code,
      retryAfter: res.headers.get('retry-after'),
      body: res.body,
    };
  }

  async #awsCall(operation: string, body: object): Promise<Answer> {
    const res = await signedAwsRequest(this.#service.url, this.#aws, this.#service.running.services.region, {
      headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${operation}` },
      body: JSON.stringify(body),
    });
    const retryAfter = res.headers['retry-after'];
    return {
      status: res.status,
      code: res.type,
      retryAfter: Array.isArray(retryAfter) ? retryAfter.join(',') : retryAfter,
      body: res.body,
    };
  }

  async #alibabaCall(params: Record<string, string>): Promise<Answer> {
    const signed = signedRpcParams(this.#alibaba, params, { method: 'POST' });
    const res = await fetch(`${this.#service.url}/`, {
      method: 'POST',
      body: new URLSearchParams(signed).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    const body = (await res.json()) as Answer['body'];
    return { status: res.status, code: body?.Code, retryAfter: res.headers.get('retry-after'), body };
  }
}

function projectOf(dialect: Dialect): string {
  return dialect === 'huawei' ? HUAWEI_PROJECT : dialect === 'aws' ? AWS_PROJECT : ALIBABA_PROJECT;
}

export interface FaultRunSummary {
  readonly total: number;
  readonly failed: number;
  readonly failedRetryable: number;
  /** Answers that were neither a success nor the retryable error with Retry-After, with why. */
  readonly violations: readonly string[];
  readonly maxLatencyMs: number;
  readonly p99LatencyMs: number;
  /** From the fault clearing to the end of the last failed request started after it (0: none failed). */
  readonly lastFailureAfterClearMs: number;
  /**
   * Whole seconds after the clearing until the first second from which every request started succeeded (requests
   * bucketed by start, each second after the clearing that saw requests): 0 means the first second was healthy.
   */
  readonly firstHealthySecond: number | undefined;
}

/** What the outcomes of a run say, against the moment (performance.now()) the fault cleared. */
export function summarise(outcomes: readonly RequestOutcome[], clearedAt: number): FaultRunSummary {
  const latencies = outcomes.map((o) => o.endedAt - o.startedAt).sort((a, b) => a - b);
  const failed = outcomes.filter((o) => !o.ok);
  const after = outcomes.filter((o) => o.startedAt >= clearedAt);
  const failedAfter = after.filter((o) => !o.ok);
  const buckets = new Map<number, boolean>();
  for (const o of after) {
    const second = Math.floor((o.startedAt - clearedAt) / 1000);
    buckets.set(second, (buckets.get(second) ?? true) && o.ok);
  }
  const seconds = [...buckets.keys()].sort((a, b) => a - b);
  const firstHealthy = seconds.find((s) => seconds.every((t) => t < s || buckets.get(t) === true));
  return {
    total: outcomes.length,
    failed: failed.length,
    failedRetryable: failed.filter((o) => o.retryable).length,
    violations: outcomes.filter((o) => o.problem !== undefined).map((o) => `${o.dialect} ${o.op}: ${o.problem}`),
    maxLatencyMs: latencies.at(-1) ?? 0,
    p99LatencyMs: latencies[Math.floor(latencies.length * 0.99)] ?? 0,
    lastFailureAfterClearMs: Math.max(0, ...failedAfter.map((o) => o.endedAt - clearedAt)),
    firstHealthySecond: firstHealthy,
  };
}

export interface FaultPhaseResult {
  readonly summary: FaultRunSummary;
  readonly faults: FaultCounters;
  readonly poolBefore: HsmPoolStats;
  readonly poolAfter: HsmPoolStats;
  /** Acknowledged keys or ciphertexts that do not work, keys half-created. */
  readonly lost: readonly string[];
}

/**
 * Injects faults as `plan` says (it should set maxFaults) under load until `healthyMs` after they cleared (or `capMs`
 * in all), then checks what the load acknowledged.
 */
export async function runFaultPhase(
  service: TestService,
  load: FaultLoad,
  faults: FaultyPkcs11,
  options: { plan: FaultPlan; concurrency: number; healthyMs: number; capMs: number },
): Promise<FaultPhaseResult> {
  const hooks = service.running.hsm.forTesting();
  const poolBefore = hooks.poolStats();
  const from = load.outcomes.length;
  const started = performance.now();
  faults.arm(options.plan);
  await load.run({
    concurrency: options.concurrency,
    seed: options.plan.seed,
    done: () =>
      performance.now() - started > options.capMs ||
      (faults.clearedAt !== undefined && performance.now() - faults.clearedAt > options.healthyMs),
  });
  faults.clear();
  const summary = summarise(load.outcomes.slice(from), faults.clearedAt as number);
  return {
    summary,
    faults: faults.counters,
    poolBefore,
    poolAfter: hooks.poolStats(),
    lost: await load.checkAcknowledged(),
  };
}

export interface TokenOutagePhaseResult {
  /** Measured from the restoring of the directory. */
  readonly summary: FaultRunSummary;
  /** Requests started and answered while the directory was away, and how many failed. */
  readonly during: number;
  readonly failedDuring: number;
  readonly poolBefore: HsmPoolStats;
  readonly poolAfter: HsmPoolStats;
  readonly lost: readonly string[];
}

/**
 * Under load, moves the SoftHSM token's directory away for `outageMs` and back (a rename: root ignores chmod), then
 * lets the load run `healthyMs` more (or `capMs` in all) and checks what it acknowledged.
 */
export async function runTokenOutagePhase(
  service: TestService,
  load: FaultLoad,
  options: { outageMs: number; concurrency: number; healthyMs: number; capMs: number; seed: number },
): Promise<TokenOutagePhaseResult> {
  const hooks = service.running.hsm.forTesting();
  const poolBefore = hooks.poolStats();
  const tokens = path.join(path.dirname(service.env.SOFTHSM2_CONF as string), 'tokens');
  const there = path.join(tokens, readdirSync(tokens)[0] as string);
  // Out of the tokens directory: SoftHSM would find a token directory renamed inside it at its next C_Initialize.
  const away = path.join(path.dirname(tokens), 'token-away');
  const from = load.outcomes.length;
  const started = performance.now();
  let restoredAt: number | undefined;
  const running = load.run({
    concurrency: options.concurrency,
    seed: options.seed,
    done: () =>
      performance.now() - started > options.capMs ||
      (restoredAt !== undefined && performance.now() - restoredAt > options.healthyMs),
  });
  await sleep(300);
  renameSync(there, away);
  const movedAt = performance.now();
  await sleep(options.outageMs);
  renameSync(away, there);
  restoredAt = performance.now();
  await running;
  const outcomes = load.outcomes.slice(from);
  const during = outcomes.filter((o) => o.startedAt >= movedAt && o.endedAt <= (restoredAt as number));
  return {
    summary: summarise(outcomes, restoredAt),
    during: during.length,
    failedDuring: during.filter((o) => !o.ok).length,
    poolBefore,
    poolAfter: hooks.poolStats(),
    lost: await load.checkAcknowledged(),
  };
}

/** What must hold of the pool once faults have cleared and the load is over: nothing leased or leaked. */
export function poolProblems(stats: HsmPoolStats, poolSize: number): string[] {
  const problems: string[] = [];
  if (stats.leased !== 0) problems.push(`${stats.leased} sessions still leased`);
  if (!stats.anchor) problems.push('no anchor session');
  if (stats.open > poolSize) problems.push(`${stats.open} pool sessions open, more than ${poolSize}`);
  const held = stats.sessionsOpened - stats.sessionsClosed - stats.sessionsAbandoned;
  if (held !== stats.open) problems.push(`${held} sessions opened and never closed, ${stats.open} in the pool`);
  return problems;
}
