import type { Worker } from 'node:cluster';
import {
  type Grant,
  type LeaseTokens,
  OPERATION_CLASSES,
  type OperationClass,
  type TokenBuckets,
} from './core/rate-limiter.js';

/**
 * The cluster's rate-limit messages: a worker asks the primary for tokens of a (project, class) pair, and the
 * primary answers from its buckets (src/core/rate-limiter.ts says how the lease works).
 */
const LEASE_REQUEST = 'hsm-kms:rate-lease';
const LEASE_GRANT = 'hsm-kms:rate-grant';

interface LeaseRequest {
  readonly type: typeof LEASE_REQUEST;
  readonly id: number;
  readonly projectId: string;
  readonly operationClass: OperationClass;
  readonly wanted: number;
}

interface LeaseGrant extends Grant {
  readonly type: typeof LEASE_GRANT;
  readonly id: number;
}

function isLeaseRequest(message: unknown): message is LeaseRequest {
  const m = message as Partial<LeaseRequest> | null;
  return (
    typeof m === 'object' &&
    m !== null &&
    m.type === LEASE_REQUEST &&
    typeof m.id === 'number' &&
    typeof m.projectId === 'string' &&
    (OPERATION_CLASSES as readonly unknown[]).includes(m.operationClass) &&
    Number.isSafeInteger(m.wanted) &&
    (m.wanted as number) > 0
  );
}

function isLeaseGrant(message: unknown): message is LeaseGrant {
  const m = message as Partial<LeaseGrant> | null;
  return typeof m === 'object' && m !== null && m.type === LEASE_GRANT && typeof m.id === 'number';
}

/** The primary's side: answers a worker's lease request from the buckets and returns true, or returns false. */
export function answerRateLease(buckets: TokenBuckets, worker: Worker, message: unknown): boolean {
  if (!isLeaseRequest(message)) return false;
  const { granted, retryAfterMs } = buckets.take(message.projectId, message.operationClass, message.wanted);
  if (worker.isConnected())
    worker.send({ type: LEASE_GRANT, id: message.id, granted, retryAfterMs } satisfies LeaseGrant);
  return true;
}

/**
 * A worker's side: asks the primary over the cluster channel. A request the primary cannot be sent, or that is
 * unanswered when the channel closes, is rejected (the limiter then refuses the pair for a while).
 */
export function leaseOverIpc(): LeaseTokens {
  const waiting = new Map<number, { resolve: (grant: Grant) => void; reject: (err: Error) => void }>();
  let nextId = 0;
  process.on('message', (message) => {
    if (!isLeaseGrant(message)) return;
    const waiter = waiting.get(message.id);
    waiting.delete(message.id);
    waiter?.resolve({ granted: message.granted, retryAfterMs: message.retryAfterMs });
  });
  process.once('disconnect', () => {
    for (const waiter of waiting.values()) waiter.reject(new Error('the cluster primary is gone'));
    waiting.clear();
  });
  return (projectId, operationClass, wanted) =>
    new Promise<Grant>((resolve, reject) => {
      const id = nextId++;
      if (process.send === undefined || !process.connected) {
        reject(new Error('no cluster primary to ask'));
        return;
      }
      waiting.set(id, { resolve, reject });
      const request: LeaseRequest = { type: LEASE_REQUEST, id, projectId, operationClass, wanted };
      process.send(request, undefined, undefined, (err: Error | null) => {
        if (err === null) return;
        waiting.delete(id);
        reject(err);
      });
    });
}
