import type { ServerResponse } from 'node:http';
import { retryAfterOf } from '../core/errors.js';

/** Sets `Retry-After` (RFC 9110 §10.2.3, in seconds) when the error is one a client may retry later. */
export function setRetryAfter(res: ServerResponse, err: unknown): void {
  const seconds = retryAfterOf(err);
  if (seconds !== undefined) res.setHeader('Retry-After', seconds);
}
