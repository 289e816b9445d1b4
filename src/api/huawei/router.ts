import type { IncomingMessage, ServerResponse } from 'node:http';
import { type NextFunction, type Request, type Response, Router } from 'express';
import type { AuditDraft } from '../../core/audit.js';
import { readBody } from '../../http/read-body.js';
import type { RequestAuditor } from '../../http/request-audit.js';
import { setRetryAfter } from '../../http/retry-after.js';
import { errorFields, type Logger } from '../../logger.js';
import { ownEntry } from '../own-entry.js';
import { authenticate, type HuaweiAuthOptions } from './authenticate.js';
import type { HuaweiAction, Services } from './context.js';
import {
  createDataKey,
  createDataKeyWithoutPlaintext,
  decryptData,
  decryptDataKey,
  encryptData,
  encryptDataKey,
  genRandom,
} from './crypto-actions.js';
import { HuaweiApiError, invalid, renderHuaweiError } from './errors.js';
import {
  cancelKeyDeletion,
  createKey,
  describeKey,
  disableKey,
  enableKey,
  listKeys,
  scheduleKeyDeletion,
  updateKeyAlias,
  updateKeyDescription,
  userInstances,
  userQuotas,
} from './key-actions.js';
import {
  createKeyStore,
  deleteKeyStore,
  disableKeyStore,
  enableKeyStore,
  type KeystoreAction,
  listKeyStores,
  showKeyStore,
} from './keystore-actions.js';
import { HUAWEI_ACTION_CLASSES } from './operation-classes.js';
import {
  disableKeyRotation,
  enableKeyRotation,
  getKeyRotationStatus,
  updateKeyRotationInterval,
} from './rotation-actions.js';
import { versionDocument, versionsDocument } from './versions.js';

/** Every Huawei action this service offers: `/v1.0/{project_id}/kms/<action>`, with the method Huawei uses. */
export const HUAWEI_ACTIONS = {
  'gen-random': { method: 'POST', run: genRandom },
  'create-key': { method: 'POST', run: createKey },
  'describe-key': { method: 'POST', run: describeKey },
  'list-keys': { method: 'POST', run: listKeys },
  'enable-key': { method: 'POST', run: enableKey },
  'disable-key': { method: 'POST', run: disableKey },
  'schedule-key-deletion': { method: 'POST', run: scheduleKeyDeletion },
  'cancel-key-deletion': { method: 'POST', run: cancelKeyDeletion },
  'update-key-alias': { method: 'POST', run: updateKeyAlias },
  'update-key-description': { method: 'POST', run: updateKeyDescription },
  'enable-key-rotation': { method: 'POST', run: enableKeyRotation },
  'disable-key-rotation': { method: 'POST', run: disableKeyRotation },
  'update-key-rotation-interval': { method: 'POST', run: updateKeyRotationInterval },
  'get-key-rotation-status': { method: 'POST', run: getKeyRotationStatus },
  'create-datakey': { method: 'POST', run: createDataKey },
  'create-datakey-without-plaintext': { method: 'POST', run: createDataKeyWithoutPlaintext },
  'encrypt-datakey': { method: 'POST', run: encryptDataKey },
  'decrypt-datakey': { method: 'POST', run: decryptDataKey },
  'encrypt-data': { method: 'POST', run: encryptData },
  'decrypt-data': { method: 'POST', run: decryptData },
  'user-instances': { method: 'GET', run: userInstances },
  'user-quotas': { method: 'GET', run: userQuotas },
} satisfies Readonly<Record<string, { method: 'GET' | 'POST'; run: HuaweiAction }>>;

export type HuaweiActionName = keyof typeof HUAWEI_ACTIONS;

type KeystoreMethod = 'GET' | 'POST' | 'DELETE';

/**
 * The keystore routes, by what follows `/v1.0/{project_id}/keystores`: nothing (the collection), `{id}`, or
 * `{id}/enable|disable`; then by method, as Huawei's SDKs call them.
 */
const KEYSTORE_ROUTES: Readonly<Record<string, Partial<Record<KeystoreMethod, KeystoreAction>>>> = {
  collection: { GET: listKeyStores, POST: createKeyStore },
  keystore: { GET: showKeyStore, DELETE: deleteKeyStore },
  enable: { POST: enableKeyStore },
  disable: { POST: disableKeyStore },
};

/** The keystore routes' operations as the audit trail names them (Huawei's API names: ListKeystores, …). */
const KEYSTORE_OPERATIONS: ReadonlyMap<KeystoreAction, string> = new Map([
  [listKeyStores, 'list-keystores'],
  [createKeyStore, 'create-keystore'],
  [showKeyStore, 'show-keystore'],
  [deleteKeyStore, 'delete-keystore'],
  [enableKeyStore, 'enable-keystore'],
  [disableKeyStore, 'disable-keystore'],
]);

const PROJECT_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Bodies up to 64 KiB: the largest legitimate one is encrypt-data with 4096 bytes of text, JSON-escaped, plus an
 * 8192-character encryption context.
 */
const MAX_BODY_BYTES = 64 * 1024;

/** The raw request body; compressed bodies are refused (their bytes would not be what the client signed). */
function readRawBody(req: IncomingMessage): Promise<Buffer> {
  const encoding = req.headers['content-encoding'];
  if (encoding !== undefined && encoding !== 'identity') {
    return Promise.reject(invalid('KMS.0214', 'The request format is invalid: compressed bodies are not accepted.'));
  }
  return readBody(req, MAX_BODY_BYTES, () => invalid('KMS.0203', 'Request message too long.'));
}

/**
 * The request body as JSON, whatever the content type: Huawei's SDKs send `application/json;charset=UTF-8`, curl
 * users often send none. Undefined for an empty body.
 */
function parseJsonBody(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw invalid('KMS.0202', 'Invalid JSON format of the request message.');
  }
}

/** Writes a JSON response in one call. */
function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(json),
  });
  res.end(json);
}

/** `/v1.0/{project_id}/kms/{action}`, matched as Express would: any case, optional trailing slash. */
const ACTION_PATH = /^\/v1\.0\/([^/]*)\/kms\/([^/]*)\/?$/i;

/** `/v1.0/{project_id}/keystores[/{keystore_id}[/enable|/disable]]`, matched the same way. */
const KEYSTORE_PATH = /^\/v1\.0\/([^/]*)\/keystores(?:\/([^/]+)(?:\/(enable|disable))?)?\/?$/i;

/**
 * Serves `/v1.0/{project_id}/kms/{action}` and the keystore paths on plain node:http and returns true, or returns
 * false for any other path (left to the Express app: version documents, unknown routes). The actions are the hot path of the service and
 * JSON-in, JSON-out: Express's per-request work (router, request and response decoration) cost as much CPU as a
 * create-datakey's own cryptography (docs/performance.md).
 */
export function huaweiActionListener(
  services: Services,
  auth: HuaweiAuthOptions,
  logger: Logger,
  auditor: RequestAuditor,
) {
  const fail = failWith(logger, auditor);
  /** The answer's body (undefined: an empty 200), once the request's audit record is written. */
  const serve = async (
    req: IncomingMessage,
    res: ServerResponse,
    projectId: string,
    actionName: string,
    query: string,
    audit: AuditDraft,
  ): Promise<object | undefined> => {
    if (!PROJECT_ID_PATTERN.test(projectId)) throw invalid('KMS.0201', 'Invalid request URL.');
    const action = ownEntry(HUAWEI_ACTIONS, actionName);
    // Known before the credential is checked: a refused attempt is recorded with what it tried.
    if (action) audit.operation = actionName;
    const signedBody = await authenticate(req, projectId, auth, () => readRawBody(req), audit);
    audit.projectId = projectId;
    if (!action) throw invalid('KMS.0201', 'Invalid request URL.');
    // No action takes query parameters (their fields are in the body): one sent is refused, never ignored.
    if (query.split('&').some((parameter) => parameter !== '')) {
      throw invalid('KMS.0201', 'Invalid request URL: the actions take no query parameters.');
    }
    if (req.method !== action.method) {
      res.setHeader('Allow', action.method);
      throw new HuaweiApiError('KMS.0215', 405, 'Request method not supported.');
    }
    const body = action.method === 'POST' ? parseJsonBody(signedBody ?? (await readRawBody(req))) : undefined;
    audit.namedKey((body as { key_id?: unknown } | undefined)?.key_id);
    await services.rateLimiter.admit(projectId, HUAWEI_ACTION_CLASSES[actionName as HuaweiActionName]);
    const answer = await action.run(services, projectId, body, audit);
    audit.namedKey(answeredKey(answer), true);
    return answer;
  };
  const serveKeystore = async (
    req: IncomingMessage,
    res: ServerResponse,
    projectId: string,
    route: string,
    keystoreId: string,
    query: string,
    audit: AuditDraft,
  ): Promise<object | undefined> => {
    if (!PROJECT_ID_PATTERN.test(projectId)) throw invalid('KMS.0201', 'Invalid request URL.');
    const signedBody = await authenticate(req, projectId, auth, () => readRawBody(req), audit);
    audit.projectId = projectId;
    const methods = KEYSTORE_ROUTES[route] as Partial<Record<string, KeystoreAction>>;
    const run = ownEntry(methods, req.method ?? '');
    audit.operation = run && KEYSTORE_OPERATIONS.get(run);
    if (!run) {
      res.setHeader('Allow', Object.keys(methods).join(', '));
      throw new HuaweiApiError('KMS.0215', 405, 'Request method not supported.');
    }
    // Only list takes query parameters; it checks its own. Elsewhere one sent is refused, never ignored.
    if (run !== listKeyStores && query.split('&').some((parameter) => parameter !== '')) {
      throw invalid('KMS.0201', 'Invalid request URL: this path takes no query parameters.');
    }
    const body = req.method === 'POST' ? parseJsonBody(signedBody ?? (await readRawBody(req))) : undefined;
    await services.rateLimiter.admit(projectId, 'management');
    return run(services, projectId, { keystoreId, query: new URLSearchParams(query), body });
  };
  const answer = (req: IncomingMessage, res: ServerResponse, audit: AuditDraft, body: object | undefined) => {
    auditor.record(req, requestIdOf(res), audit, 200);
    if (body === undefined) {
      res.writeHead(200, { 'Content-Length': 0 });
      res.end();
    } else {
      sendJson(res, 200, body);
    }
  };
  return (req: IncomingMessage, res: ServerResponse): boolean => {
    const url = req.url ?? '';
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    const action = ACTION_PATH.exec(path);
    if (action) {
      const audit = auditor.draft();
      serve(req, res, action[1] as string, (action[2] as string).toLowerCase(), query, audit)
        .then((body) => answer(req, res, audit, body))
        .catch((err: unknown) => fail(err, req, res, audit));
      return true;
    }
    const keystore = KEYSTORE_PATH.exec(path);
    if (keystore) {
      const [, projectId, keystoreId, verb] = keystore;
      const route = verb !== undefined ? verb.toLowerCase() : keystoreId !== undefined ? 'keystore' : 'collection';
      const audit = auditor.draft();
      serveKeystore(req, res, projectId as string, route, keystoreId ?? '', query, audit)
        .then((body) => answer(req, res, audit, body))
        .catch((err: unknown) => fail(err, req, res, audit));
      return true;
    }
    return false;
  };
}

/** The version documents, `GET /` and `GET /v1.0`, which need no token. */
export function huaweiVersionRouter(): Router {
  const router = Router();
  router.get('/', (req, res) => {
    res.json(versionsDocument(req));
  });
  router.get(['/v1.0', '/v1.0/'], (req, res) => {
    res.json(versionDocument(req));
  });
  return router;
}

/**
 * Renders any error the Huawei way; unexpected ones are logged in full and answered generically. An action's error is
 * audited first (`audit` given); if its record cannot be written, the answer is the internal error instead.
 */
function failWith(logger: Logger, auditor?: RequestAuditor) {
  return (err: unknown, req: IncomingMessage, res: ServerResponse, audit?: AuditDraft) => {
    let failure = err;
    let { status, body, unexpected } = renderHuaweiError(err);
    if (auditor && audit) {
      try {
        auditor.record(req, requestIdOf(res), audit, status, body.error.error_code);
      } catch (auditErr) {
        failure = auditErr;
        ({ status, body, unexpected } = renderHuaweiError(auditErr));
      }
    }
    if (unexpected) logger.error('request failed', { method: req.method, path: req.url, ...errorFields(failure) });
    if (res.headersSent) res.destroy();
    else {
      setRetryAfter(res, failure);
      sendJson(res, status, body);
    }
  };
}

/** The same, as Express's final error middleware (version documents and unknown routes: nothing to audit). */
export function huaweiErrorHandler(logger: Logger) {
  const fail = failWith(logger);
  return (err: unknown, req: Request, res: Response, _next: NextFunction) => fail(err, req, res);
}

/** The X-Request-Id the app set on the response (src/app.ts). */
function requestIdOf(res: ServerResponse): string | undefined {
  const id = res.getHeader('X-Request-Id');
  return typeof id === 'string' ? id : undefined;
}

/** The key an answer names: key_id, or create-key's and describe-key's key_info. */
function answeredKey(answer: object): unknown {
  const named = answer as { key_id?: unknown; key_info?: { key_id?: unknown } };
  return named.key_id ?? named.key_info?.key_id;
}
