import type { OperationClass } from '../../core/rate-limiter.js';
import type { XksOperationName } from './operations.js';

/**
 * Each XKS operation's rate-limit class, per project (the project is the URI path prefix, the isolation point the
 * spec allows its own quota). Metadata and health are what AWS KMS asks when a key is created or the store checked.
 */
export const XKS_OPERATION_CLASSES = {
  encrypt: 'cryptographic',
  decrypt: 'cryptographic',
  metadata: 'management',
  health: 'management',
} as const satisfies Record<XksOperationName, OperationClass>;
