import { describe, expect, it } from 'vitest';
import { HSM_RETRY_AFTER_SECONDS, KmsError, retryAfterOf } from '../../src/core/errors.js';

describe('retryAfterOf', () => {
  it('gives HsmUnavailable a default and Throttled its own, rounded up to whole seconds', () => {
    expect(retryAfterOf(new KmsError('HsmUnavailable', 'x'))).toBe(String(HSM_RETRY_AFTER_SECONDS));
    expect(retryAfterOf(new KmsError('Throttled', 'x', { retryAfterSeconds: 0.2 }))).toBe('1');
    expect(retryAfterOf(new KmsError('Throttled', 'x', { retryAfterSeconds: 2.5 }))).toBe('3');
  });

  it('gives nothing for errors a retry cannot cure', () => {
    expect(retryAfterOf(new KmsError('KeyNotFound', 'x'))).toBeUndefined();
    expect(retryAfterOf(new KmsError('InternalError', 'x'))).toBeUndefined();
    expect(retryAfterOf(new Error('x'))).toBeUndefined();
  });
});
