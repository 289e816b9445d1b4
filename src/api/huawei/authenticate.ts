import type { IncomingMessage } from 'node:http';
import { openHuaweiSignature } from '../../auth/huawei-signature.js';
import type { SecretLookup } from '../../auth/sigv4.js';
import type { TokenVerifier } from '../../auth/token-verifier.js';
import type { AuditDraft } from '../../core/audit.js';
import { KmsError } from '../../core/errors.js';
import { singleHeader } from '../../http/single-header.js';
import { invalidToken } from './errors.js';

/** `Authorization: SDK-HMAC-SHA256 …`: an access key of a project, the credential Huawei's SDKs sign with. */
export interface HuaweiSigningOptions {
  readonly lookupSecret: SecretLookup;
  /** Milliseconds since the epoch, for X-Sdk-Date's window; default Date.now. */
  readonly now?: () => number;
}

/** The two ways a Huawei request proves who sends it. */
export interface HuaweiAuthOptions extends HuaweiSigningOptions {
  /** `X-Auth-Token`: a JWT scoped to one project. */
  readonly verifier: TokenVerifier;
}

/**
 * Authenticates a request to `/v1.0/{projectId}/kms/…` by its X-Auth-Token or by its AK/SK signature, and binds the
 * credential to the path's project. A signed request's body is part of its signature, so it is read here (with
 * `readBody`), once the head has proved an active access key, and returned; a token's request returns undefined and
 * leaves its body unread.
 */
export async function authenticate(
  req: IncomingMessage,
  projectId: string,
  options: HuaweiAuthOptions,
  readBody: () => Promise<Buffer>,
  audit: AuditDraft,
): Promise<Buffer | undefined> {
  if (req.headers.authorization === undefined) {
    const token = singleHeader(req.headersDistinct, 'x-auth-token', () =>
      invalidToken('Invalid X-Auth-Token: the header is given more than once.'),
    );
    const identity = await options.verifier.identify(token);
    audit.caller = `token:${identity.subject ?? '(no subject)'}`;
    if (identity.projectId !== projectId) {
      throw new KmsError('ProjectMismatch', 'URIs in URL and X-Auth-Token do not match.');
    }
    return undefined;
  }
  // Two credentials could name two projects; which one the request acts for must never be in doubt.
  if (req.headers['x-auth-token'] !== undefined) {
    throw new KmsError('AuthIncomplete', 'Send either X-Auth-Token or an Authorization signature, not both.');
  }
  const url = req.url ?? '';
  const queryAt = url.indexOf('?');
  const pending = await openHuaweiSignature(
    {
      method: req.method ?? '',
      path: queryAt === -1 ? url : url.slice(0, queryAt),
      query: queryAt === -1 ? '' : url.slice(queryAt + 1),
      headers: req.headersDistinct,
    },
    options.lookupSecret,
    { now: options.now ?? Date.now },
  );
  const headerProject = req.headers['x-project-id'];
  if (headerProject !== undefined && headerProject !== projectId) {
    throw new KmsError('ProjectMismatch', 'X-Project-Id does not match the project_id in the URL.');
  }
  const body = await readBody();
  pending.verify(body);
  audit.caller = `access-key:${pending.accessKeyId}`;
  // Only now that the caller has proved it holds the SK: the key's project is nobody else's business.
  if (pending.projectId !== projectId) {
    throw new KmsError('ProjectMismatch', 'The access key belongs to another project than the project_id in the URL.');
  }
  return body;
}
