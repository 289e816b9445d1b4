import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SecretLookup } from '../../auth/sigv4.js';
import type { AuditDraft } from '../../core/audit.js';
import { readBody } from '../../http/read-body.js';
import type { RequestAuditor } from '../../http/request-audit.js';
import { setRetryAfter } from '../../http/retry-after.js';
import { errorFields, type Logger } from '../../logger.js';
import type { Services } from '../huawei/context.js';
import { ownEntry } from '../own-entry.js';
import { AlibabaApiError, invalidParameter, renderAlibabaError, unsupportedOperation } from './errors.js';
import { ALIBABA_OPERATION_CLASSES } from './operation-classes.js';
import { ALIBABA_OPERATIONS, type AlibabaOperationName } from './operations.js';
import { API_VERSION, type NonceClaim, resolveAccessKey, verifyRpcSignature } from './signature.js';
import { RpcParams } from './wire.js';

/**
 * Alibaba Cloud's RPC protocol (kms-apis.md §3.3): `Action=<Operation>&Version=2016-01-20` and the common
 * parameters, in the query string of a GET or POST or in an `application/x-www-form-urlencoded` body, signed with
 * HMAC-SHA1 by an access key of a project (the same access keys as the AWS dialect).
 */
const FORM_TYPE = 'application/x-www-form-urlencoded';
/** Encrypt of 4096 bytes, Base64 then percent-encoded, plus an encryption context, fits with room to spare. */
const MAX_BODY_BYTES = 64 * 1024;
/**
 * The common parameters of every request (kms-apis.md §3.3). SecurityToken (STS temporary credentials) and RegionId
 * are understood here too, so that they are refused or checked rather than ignored.
 */
const COMMON_PARAMETERS = [
  'Action',
  'Version',
  'Format',
  'AccessKeyId',
  'SignatureMethod',
  'SignatureVersion',
  'SignatureNonce',
  'Timestamp',
  'Signature',
  'SecurityToken',
  'RegionId',
];
/** A Host header is echoed as HostId; keep it to what a host name can hold. */
const HOST_ID = /^[A-Za-z0-9.:[\]-]{1,255}$/;

export interface AlibabaOptions {
  /** Where the dialect is mounted (KMS_ALIBABA_PATH, default `/`); requests elsewhere are not Alibaba's. */
  readonly path: string;
  readonly region: string;
  readonly lookupSecret: SecretLookup;
  readonly claimNonce: NonceClaim;
  readonly now?: () => number;
}

/** Serves a request of the Alibaba RPC protocol and returns true, or returns false for any other request. */
export function alibabaListener(services: Services, options: AlibabaOptions, logger: Logger, auditor: RequestAuditor) {
  const now = options.now ?? Date.now;
  const serve = async (
    req: IncomingMessage,
    res: ServerResponse,
    query: string,
    requestId: string,
    audit: AuditDraft,
  ) => {
    const method = req.method ?? 'GET';
    const params = new Map<string, string>();
    addParameters(params, query);
    let lookupSecret = options.lookupSecret;
    if (method === 'POST' && isForm(req)) {
      // An access key named in the query string is resolved before the body is read: an unknown or revoked key is
      // refused without waiting for a body. (One named in the body can only be known once the body is read.)
      const queryKey = params.get('AccessKeyId');
      if (queryKey !== undefined) {
        const resolved = await resolveAccessKey(options.lookupSecret, queryKey);
        // The signature check asks for the same key: a parameter given in both query and body is refused.
        lookupSecret = async (id) => (id === queryKey ? resolved : options.lookupSecret(id));
      }
      const body = await readBody(req, MAX_BODY_BYTES, () =>
        invalidParameter('Body', `the request body is larger than ${MAX_BODY_BYTES} bytes.`),
      );
      addParameters(params, body.toString('utf8'));
    }
    const rpc = new RpcParams(params);
    const action = rpc.required('Action');
    if (rpc.required('Version') !== API_VERSION) {
      throw new AlibabaApiError('InvalidVersion', 'Specified parameter Version is not valid.');
    }
    const operation = ownEntry(ALIBABA_OPERATIONS, action);
    if (!operation) {
      throw new AlibabaApiError(
        'InvalidAction.NotFound',
        'Specified api is not found, please check your url and method.',
        404,
      );
    }
    audit.operation = action;
    const format = params.get('Format');
    if (format !== undefined && format.toUpperCase() !== 'JSON') {
      throw invalidParameter('Format', 'this service answers in JSON only.');
    }
    const caller = await verifyRpcSignature(method, params, {
      lookupSecret,
      claimNonce: options.claimNonce,
      now,
    });
    audit.caller = `access-key:${caller.accessKeyId}`;
    audit.projectId = caller.projectId;
    audit.namedKey(params.get('KeyId') ?? params.get('DestinationKeyId') ?? params.get('AliasName'));
    rpc.refuseUnknown(new Set([...COMMON_PARAMETERS, ...operation.parameters]));
    if (rpc.optional('SecurityToken') !== undefined) {
      throw unsupportedOperation('temporary (STS) credentials: sign with an access key of the project.');
    }
    const regionId = rpc.optional('RegionId');
    if (regionId !== undefined && regionId !== options.region) {
      throw invalidParameter('RegionId', `this service serves the region ${options.region}.`);
    }
    await services.rateLimiter.admit(caller.projectId, ALIBABA_OPERATION_CLASSES[action as AlibabaOperationName]);
    const result = await operation.run(services, { projectId: caller.projectId, region: options.region }, rpc, audit);
    audit.namedKey(answeredKey(result), true);
    auditor.record(req, requestId, audit, 200);
    send(res, 200, { RequestId: requestId, ...result });
  };

  return (req: IncomingMessage, res: ServerResponse): boolean => {
    const url = req.url ?? '/';
    const queryAt = url.indexOf('?');
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    const query = queryAt === -1 ? '' : url.slice(queryAt + 1);
    // An Alibaba request names its Action; a form POST may carry it in the body. GET / without one is Huawei's.
    const claimed = path === options.path && (/(?:^|&)Action=/.test(query) || (req.method === 'POST' && isForm(req)));
    if (!claimed) return false;
    const requestId = randomUUID();
    const audit = auditor.draft();
    const served =
      req.method === 'GET' || req.method === 'POST'
        ? serve(req, res, query, requestId, audit)
        : Promise.reject(new AlibabaApiError('UnsupportedHTTPMethod', 'This http method is not supported.', 403));
    served.catch((err: unknown) => {
      const host = req.headers.host ?? '';
      const hostId = HOST_ID.test(host) ? host : 'localhost';
      let failure = err;
      let { status, body, unexpected } = renderAlibabaError(err, requestId, hostId);
      try {
        auditor.record(req, requestId, audit, status, body.Code);
      } catch (auditErr) {
        failure = auditErr;
        ({ status, body, unexpected } = renderAlibabaError(auditErr, requestId, hostId));
      }
      if (unexpected) logger.error('request failed', { dialect: 'alibaba', requestId, ...errorFields(failure) });
      if (res.headersSent) res.destroy();
      else {
        setRetryAfter(res, failure);
        send(res, status, body);
      }
    });
    return true;
  };
}

function isForm(req: IncomingMessage): boolean {
  return (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() === FORM_TYPE;
}

/**
 * Adds the parameters of the query string, or of the body, decoded as `application/x-www-form-urlencoded`. A name
 * given twice, in one or in both, is refused: which of the two values was signed, and which one acted on, must never
 * be in doubt.
 */
function addParameters(params: Map<string, string>, source: string): void {
  for (const [name, value] of new URLSearchParams(source)) {
    if (params.has(name)) throw invalidParameter(name, 'it is given more than once.');
    params.set(name, value);
  }
}

function send(res: ServerResponse, status: number, body: object & { RequestId: string }): void {
  const json = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json;charset=utf-8',
    'Content-Length': Buffer.byteLength(json),
    'x-acs-request-id': body.RequestId,
  });
  res.end(json);
}

/** The key an answer names: KeyId, or the KeyMetadata of CreateKey and DescribeKey. */
function answeredKey(result: object): unknown {
  const named = result as { KeyId?: unknown; KeyMetadata?: { KeyId?: unknown } };
  return named.KeyId ?? named.KeyMetadata?.KeyId;
}
