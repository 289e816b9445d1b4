import { randomUUID } from 'node:crypto';
import type { RequestListener } from 'node:http';
import express from 'express';
import helmet from 'helmet';
import { type AlibabaOptions, alibabaListener } from './api/alibaba/listener.js';
import { type AwsOptions, awsListener } from './api/aws/listener.js';
import type { HuaweiSigningOptions } from './api/huawei/authenticate.js';
import type { Services } from './api/huawei/context.js';
import { invalid } from './api/huawei/errors.js';
import { huaweiActionListener, huaweiErrorHandler, huaweiVersionRouter } from './api/huawei/router.js';
import { type XksOptions, xksListener } from './api/xks/listener.js';
import type { TokenVerifier } from './auth/token-verifier.js';
import type { AuditDialect, AuditLog } from './core/audit.js';
import { RequestAuditor } from './http/request-audit.js';
import type { Logger } from './logger.js';

export interface AppDeps {
  readonly services: Services;
  readonly verifier: TokenVerifier;
  readonly logger: Logger;
  /** The Huawei dialect's AK/SK signatures (beside X-Auth-Token): the access keys' secrets and the clock. */
  readonly huawei: HuaweiSigningOptions;
  /** The AWS dialect: the regions requests may be signed for, and the secrets of access keys. */
  readonly aws: AwsOptions;
  /** The Alibaba dialect: where it is mounted, the access keys' secrets, and the ledger of used nonces. */
  readonly alibaba: AlibabaOptions;
  /** Whether the listener speaks HTTPS: only then is Strict-Transport-Security sent. */
  readonly tls: boolean;
  /** The AWS XKS proxy API under /xks/<project_id>, and /ping; absent, neither is served. */
  readonly xks?: XksOptions;
  /** Where every dialect's requests are recorded before they are answered; absent, none are (KMS_AUDIT_ENABLED). */
  readonly audit?: AuditLog | undefined;
}

/**
 * helmet's headers, computed once: with its default options they are the same for every response, and setting them
 * in one call saves its eleven middlewares on every request (a create-datakey is CPU-bound on Express). Plus
 * `Cache-Control: no-store`: no response of a KMS may be cached. Strict-Transport-Security only over HTTPS (a
 * browser ignores it over plain HTTP, RFC 6797 §8.1), for a year and for this host alone: the service cannot speak
 * for its domain's other hosts.
 */
function staticSecurityHeaders(tls: boolean): Map<string, string> {
  const headers = new Map<string, string>();
  const recorder = {
    setHeader: (name: string, value: unknown) => headers.set(name, String(value)),
    removeHeader: (name: string) => headers.delete(name),
  };
  helmet({ strictTransportSecurity: tls ? { maxAge: 31_536_000, includeSubDomains: false } : false })(
    {} as never,
    recorder as never,
    () => undefined,
  );
  headers.set('Cache-Control', 'no-store');
  return headers;
}

/**
 * The HTTP request listener: an XKS proxy request (`/xks/…`, `/ping`), a Huawei action, an AWS request (`X-Amz-Target`)
 * or an Alibaba request (`Action=`) is served by its dialect's own listener on node:http; everything else (version documents, unknown routes) by Express.
 * Does no I/O of its own: main.ts (or a test) creates the server.
 */
export function createApp(deps: AppDeps): RequestListener {
  const app = express();
  // An ETag costs a hash of every response and means nothing for one-off cryptographic answers.
  app.set('etag', false);
  app.set('x-powered-by', false);
  app.use(huaweiVersionRouter());
  app.use(() => {
    throw invalid('KMS.0201', 'Invalid request URL.');
  });
  app.use(huaweiErrorHandler(deps.logger));

  const auditor = (dialect: AuditDialect) => new RequestAuditor(deps.audit, dialect);
  const huaweiActions = huaweiActionListener(
    deps.services,
    { verifier: deps.verifier, ...deps.huawei },
    deps.logger,
    auditor('huawei'),
  );
  const awsRequests = awsListener(deps.services, deps.aws, deps.logger, auditor('aws'));
  const alibabaRequests = alibabaListener(deps.services, deps.alibaba, deps.logger, auditor('alibaba'));
  const xksRequests = deps.xks ? xksListener(deps.xks, deps.logger, auditor('xks')) : () => false;
  const securityHeaders = staticSecurityHeaders(deps.tls);
  return (req, res) => {
    res.setHeaders(securityHeaders);
    res.setHeader('X-Request-Id', randomUUID());
    // XKS first: its URIs are its own, and it must answer an unknown one under /xks/ whatever the headers say.
    if (!xksRequests(req, res) && !awsRequests(req, res) && !alibabaRequests(req, res) && !huaweiActions(req, res)) {
      app(req, res);
    }
  };
}
