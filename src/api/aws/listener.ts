import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { authenticateSigV4, type SecretLookup } from '../../auth/sigv4.js';
import { readBody } from '../../http/read-body.js';
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
export function awsListener(services: Services, options: AwsOptions, logger: Logger) {
  const now = options.now ?? Date.now;
  const serve = async (req: IncomingMessage, res: ServerResponse, requestId: string) => {
    // As sent, still percent-encoded; repeated headers as separate values (AWS joins them with ',', node with ', ').
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
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
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
    const target = req.headersDistinct['x-amz-target']?.[0] ?? '';
    const operationName = target.slice(TARGET_PREFIX.length);
    const operation = target.startsWith(TARGET_PREFIX) ? ownEntry(AWS_OPERATIONS, operationName) : undefined;
    if (req.method !== 'POST' || !JSON_TYPES.has(contentType) || !operation) {
      throw new AwsApiError('UnknownOperationException', '');
    }
    let json: unknown;
    try {
      json = body.length === 0 ? {} : JSON.parse(body.toString('utf8'));
    } catch {
      throw new AwsApiError('SerializationException', 'The request body is not valid JSON.');
    }
    await services.rateLimiter.admit(caller.projectId, AWS_OPERATION_CLASSES[operationName as AwsOperationName]);
    send(res, 200, requestId, await operation(services, caller, json).catch(inAwsWords(caller)));
  };

  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (req.headers['x-amz-target'] === undefined) return false;
    const requestId = randomUUID();
    serve(req, res, requestId).catch((err: unknown) => {
      const { status, body, unexpected } = renderAwsError(err);
      if (unexpected) logger.error('request failed', { dialect: 'aws', requestId, ...errorFields(err) });
      if (res.headersSent) res.destroy();
      else {
        res.setHeader('x-amzn-ErrorType', body.__type);
        setRetryAfter(res, err);
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
