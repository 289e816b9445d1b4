import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { authenticateSigV4, type SecretLookup } from '../../auth/sigv4.js';
import type { AuditDraft } from '../../core/audit.js';
import { readBody } from '../../http/read-body.js';
import type { RequestAuditor } from '../../http/request-audit.js';
import { setRetryAfter } from '../../http/retry-after.js';
import { errorFields, type Logger } from '../../logger.js';
import type { Services } from '../huawei/context.js';
import { ownEntry } from '../own-entry.js';
import { AwsApiError, renderAwsError } from './errors.js';
import { AWS_OPERATION_CLASSES } from './operation-classes.js';
import { AWS_OPERATIONS, type AwsOperationName } from './operations.js';
import { inAwsWords } from './wire.js';

/**
 * The AWS KMS JSON 1.1 protocol (kms-apis.md §2.1): `POST /` with `X-Amz-Target: TrentService.<Operation>`,
 * signed with SigV4 by an access key of a project (`kms credentials create`).
 */
const TARGET_PREFIX = 'TrentService.';
const JSON_TYPES = new Set(['application/x-amz-json-1.1', 'application/json']);
/** The largest legitimate body: Encrypt of 4096 bytes or Decrypt of 6144, base64, plus an encryption context. */
const MAX_BODY_BYTES = 64 * 1024;
const CLOCK_SKEW_MS = 15 * 60 * 1000;
/** The operation must be signed, and given once: the SDKs and the AWS CLI sign every header they send. */
const SIGNED_TARGET = ['x-amz-target'];

export interface AwsOptions {
  /** The regions requests may be signed for (KMS_REGION). */
  readonly regions: readonly string[];
  readonly lookupSecret: SecretLookup;
  readonly now?: () => number;
}

/** Serves a request of the AWS protocol and returns true, or returns false for any other request. */
export function awsListener(services: Services, options: AwsOptions, logger: Logger, auditor: RequestAuditor) {
  const now = options.now ?? Date.now;
  const serve = async (req: IncomingMessage, res: ServerResponse, requestId: string, audit: AuditDraft) => {
    // As sent, still percent-encoded; repeated headers as separate values (AWS joins them with ',', node with ', ').
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    const target = req.headersDistinct['x-amz-target']?.[0] ?? '';
    const operationName = target.slice(TARGET_PREFIX.length);
    const operation = target.startsWith(TARGET_PREFIX) ? ownEntry(AWS_OPERATIONS, operationName) : undefined;
    // Known before the signature is checked: a refused attempt is recorded with what it tried.
    if (operation) audit.operation = operationName;
    // The access key is resolved from the head: an unknown or revoked key is refused without waiting for a body.
    const signature = await authenticateSigV4(
      { method: req.method ?? 'POST', path, query, headers: req.headersDistinct },
      options.lookupSecret,
      { service: 'kms', regions: options.regions, now, maxSkewMs: CLOCK_SKEW_MS, requiredSignedHeaders: SIGNED_TARGET },
    );
    const body = await readBody(
      req,
      MAX_BODY_BYTES,
      () => new AwsApiError('ValidationException', 'The request body is too large.', 413),
    );
    const caller = signature.verify(body);
    audit.caller = `access-key:${caller.accessKeyId}`;
    audit.projectId = caller.projectId;
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
    if (req.method !== 'POST' || !JSON_TYPES.has(contentType) || !operation) {
      throw new AwsApiError('UnknownOperationException', '');
    }
    let json: unknown;
    try {
      json = body.length === 0 ? {} : JSON.parse(body.toString('utf8'));
    } catch {
      throw new AwsApiError('SerializationException', 'The request body is not valid JSON.');
    }
    audit.namedKey(requestedKey(json));
    await services.rateLimiter.admit(caller.projectId, AWS_OPERATION_CLASSES[operationName as AwsOperationName]);
    const answer = await operation(services, caller, json, audit).catch(inAwsWords(caller));
    audit.namedKey(answeredKey(answer), true);
    auditor.record(req, requestId, audit, 200);
    send(res, 200, requestId, answer);
  };

  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (req.headers['x-amz-target'] === undefined) return false;
    const requestId = randomUUID();
    const audit = auditor.draft();
    serve(req, res, requestId, audit).catch((err: unknown) => {
      let failure = err;
      let { status, body, unexpected } = renderAwsError(err);
      try {
        auditor.record(req, requestId, audit, status, body.__type);
      } catch (auditErr) {
        failure = auditErr;
        ({ status, body, unexpected } = renderAwsError(auditErr));
      }
      if (unexpected) logger.error('request failed', { dialect: 'aws', requestId, ...errorFields(failure) });
      if (res.headersSent) res.destroy();
      else {
        res.setHeader('x-amzn-ErrorType', body.__type);
        setRetryAfter(res, failure);
        send(res, status, requestId, body);
      }
    });
    return true;
  };
}

function send(res: ServerResponse, status: number, requestId: string, body: object): void {
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/x-amz-json-1.1',
    'Content-Length': Buffer.byteLength(json),
    'x-amzn-RequestId': requestId,
  });
  res.end(json);
}

/** The key a request names, for the audit record: KeyId, or ReEncrypt's DestinationKeyId, or an alias's target. */
function requestedKey(json: unknown): unknown {
  if (typeof json !== 'object' || json === null) return undefined;
  const named = json as { KeyId?: unknown; DestinationKeyId?: unknown; TargetKeyId?: unknown };
  return named.KeyId ?? named.DestinationKeyId ?? named.TargetKeyId;
}

/** The key an answer names: KeyId, or the KeyMetadata of CreateKey and DescribeKey. */
function answeredKey(answer: object): unknown {
  const named = answer as { KeyId?: unknown; KeyMetadata?: { KeyId?: unknown } };
  return named.KeyId ?? named.KeyMetadata?.KeyId;
}
