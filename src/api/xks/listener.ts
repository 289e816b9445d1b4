import type { IncomingMessage, ServerResponse } from 'node:http';
import { authenticateSigV4, type SecretLookup } from '../../auth/sigv4.js';
import type { AuditDraft } from '../../core/audit.js';
import { KmsError } from '../../core/errors.js';
import type { RateLimiter } from '../../core/rate-limiter.js';
import type { XksService } from '../../core/xks.service.js';
import { readBody } from '../../http/read-body.js';
import type { RequestAuditor } from '../../http/request-audit.js';
import { setRetryAfter } from '../../http/retry-after.js';
import { errorFields, type Logger } from '../../logger.js';
import { renderXksError, XksApiError } from './errors.js';
import { XKS_OPERATION_CLASSES } from './operation-classes.js';
import { XKS_OPERATIONS, type XksDeployment, type XksOperationName } from './operations.js';

/**
 * The AWS XKS proxy API (custom-key-stores.md §1.1): `POST /xks/<project_id>/kms/xks/v1/keys/<key_id>/{metadata,
 * encrypt,decrypt}` and `POST /xks/<project_id>/kms/xks/v1/health`, JSON, signed with SigV4 for the service
 * `kms-xks-proxy` by an XKS access key of that project. `/xks/<project_id>` is the store's XksProxyUriPath prefix:
 * one external key store per project. `GET /ping` answers load balancers.
 *
 * The order is the reference proxy's, which AWS's test client checks: a URI that is none of the API's is
 * InvalidUriPathException before any authentication, a method other than POST on an API URI 405, then SigV4.
 */
const PREFIX = '/xks/';
const API_PATH =
  /^\/xks\/([A-Za-z0-9_-]{1,64})\/kms\/xks\/v1\/(?:keys\/([A-Za-z0-9._-]{1,128})\/(metadata|encrypt|decrypt)|(health))$/;
const PING_PATH = '/ping';
/** A 16 KiB plaintext and a 16 KiB AAD in base64 with the request metadata fit. */
const MAX_BODY_BYTES = 64 * 1024;
/** The spec: requests whose timestamp is more than 5 minutes off should fail. */
const CLOCK_SKEW_MS = 5 * 60 * 1000;
/** kmsRequestId is logged as given, but only so much of it. */
const MAX_LOGGED_ID = 128;

export interface XksOptions {
  readonly service: XksService;
  readonly deployment: XksDeployment;
  /** The region AWS KMS signs for: that of the KMS the external key store belongs to (KMS_REGION). */
  readonly regions: readonly string[];
  /** Resolves XKS access keys only (CredentialService.resolveXks). */
  readonly lookupSecret: SecretLookup;
  /** The project's rate limits, shared with the other dialects. */
  readonly rateLimiter: RateLimiter;
  readonly now?: () => number;
}

interface Served {
  operation: XksOperationName | undefined;
  projectId: string | undefined;
  keyId: string | undefined;
  kmsRequestId: string | undefined;
}

/** Serves a request of the XKS API (or `/ping`) and returns true, or returns false for any other request. */
export function xksListener(options: XksOptions, logger: Logger, auditor: RequestAuditor) {
  const now = options.now ?? Date.now;
  const context = { service: options.service, deployment: options.deployment };

  const serve = async (
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    query: string,
    served: Served,
    audit: AuditDraft,
  ) => {
    const match = API_PATH.exec(path);
    if (!match) throw new XksApiError('InvalidUriPathException', 'The URI path is not one of the XKS proxy API.');
    const [, projectId = '', keyId = '', keyOperation, health] = match;
    const operation = (keyOperation ?? health) as XksOperationName;
    Object.assign(served, { operation, projectId, keyId: keyOperation ? keyId : undefined });
    audit.operation = operation;
    audit.namedKey(served.keyId);
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST');
      throw new XksApiError('UnsupportedOperationException', 'The XKS proxy API takes POST only.', 405);
    }
    // The access key is resolved from the head: an unknown or revoked key is refused before the body is read.
    const signature = await authenticateSigV4(
      { method: 'POST', path, query, headers: req.headersDistinct },
      options.lookupSecret,
      { service: 'kms-xks-proxy', regions: options.regions, now, maxSkewMs: CLOCK_SKEW_MS },
    );
    const body = await readBody(
      req,
      MAX_BODY_BYTES,
      () => new XksApiError('ValidationException', `The request body is larger than ${MAX_BODY_BYTES} bytes.`),
    );
    const caller = signature.verify(body);
    audit.caller = `xks-access-key:${caller.accessKeyId}`;
    if (caller.projectId !== projectId) {
      throw new KmsError('ProjectMismatch', 'The access key is not one of this URI path.');
    }
    audit.projectId = projectId;
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      throw new XksApiError('ValidationException', 'The request body is not valid JSON.');
    }
    served.kmsRequestId = kmsRequestIdOf(json);
    await options.rateLimiter.admit(projectId, XKS_OPERATION_CLASSES[operation]);
    const answer = await XKS_OPERATIONS[operation](context, { projectId, keyId }, json, audit);
    auditor.record(req, served.kmsRequestId, audit, 200);
    send(res, 200, answer);
  };

  return (req: IncomingMessage, res: ServerResponse): boolean => {
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    if (path === PING_PATH) {
      ping(req, res);
      return true;
    }
    if (!path.startsWith(PREFIX)) return false;
    const started = performance.now();
    const served: Served = { operation: undefined, projectId: undefined, keyId: undefined, kmsRequestId: undefined };
    const audit = auditor.draft();
    const done = (status: number, outcome: string) =>
      logger.info('xks request', {
        dialect: 'xks',
        kmsRequestId: served.kmsRequestId,
        operation: served.operation,
        projectId: served.projectId,
        keyId: served.keyId,
        status,
        outcome,
        durationMs: Math.round((performance.now() - started) * 1000) / 1000,
      });
    serve(req, res, path, query, served, audit).then(
      () => done(200, 'ok'),
      (err: unknown) => {
        let failure = err;
        let { status, body, unexpected } = renderXksError(err);
        try {
          auditor.record(req, served.kmsRequestId, audit, status, body.errorName);
        } catch (auditErr) {
          failure = auditErr;
          ({ status, body, unexpected } = renderXksError(auditErr));
        }
        if (unexpected) logger.error('request failed', { dialect: 'xks', ...errorFields(failure) });
        if (res.headersSent) res.destroy();
        else {
          setRetryAfter(res, failure);
          send(res, status, body);
        }
        done(status, body.errorName);
      },
    );
    return true;
  };
}

/** For load balancers: no authentication, no HSM. */
function ping(req: IncomingMessage, res: ServerResponse): void {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Length': 0 });
    res.end();
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 4 });
  res.end(req.method === 'HEAD' ? undefined : 'pong');
}

/** The request's kmsRequestId, if it has one, for the log: the spec forbids validating its format. */
function kmsRequestIdOf(json: unknown): string | undefined {
  const metadata = (json as { requestMetadata?: { kmsRequestId?: unknown } } | null)?.requestMetadata;
  const id = typeof metadata === 'object' && metadata !== null ? metadata.kmsRequestId : undefined;
  return typeof id === 'string' ? id.slice(0, MAX_LOGGED_ID) : undefined;
}

function send(res: ServerResponse, status: number, body: object): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(json) });
  res.end(json);
}
