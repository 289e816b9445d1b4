import { randomUUID } from 'node:crypto';
import express, { type Express } from 'express';
import helmet from 'helmet';
import type { Services } from './api/huawei/context.js';
import { invalid } from './api/huawei/errors.js';
import { huaweiErrorHandler, huaweiRouter } from './api/huawei/router.js';
import type { TokenVerifier } from './auth/token-verifier.js';
import type { Logger } from './logger.js';

export interface AppDeps {
  readonly services: Services;
  readonly verifier: TokenVerifier;
  readonly logger: Logger;
}

/** The HTTP application. Does no I/O of its own: main.ts (or a test) gives it its parts and listens. */
export function createApp(deps: AppDeps): Express {
  const app = express();
  // An ETag costs a hash of every response and means nothing for one-off cryptographic answers.
  app.set('etag', false);
  app.set('x-powered-by', false);
  app.use(helmet());
  app.use((_req, res, next) => {
    res.set('X-Request-Id', randomUUID());
    res.set('Cache-Control', 'no-store');
    next();
  });
  app.use(huaweiRouter(deps.services, deps.verifier, deps.logger));
  app.use(() => {
    throw invalid('KMS.0201', 'Invalid request URL.');
  });
  app.use(huaweiErrorHandler(deps.logger));
  return app;
}
