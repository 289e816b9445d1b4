import type { OperationClass } from '../../core/rate-limiter.js';
import type { HuaweiActionName } from './router.js';

/**
 * Each action's rate-limit class. Huawei's documented 1,000 requests/s applies to the cryptographic actions: those
 * that use a key or the HSM's generator. The keystore paths are all management.
 */
export const HUAWEI_ACTION_CLASSES = {
  'gen-random': 'cryptographic',
  'create-datakey': 'cryptographic',
  'create-datakey-without-plaintext': 'cryptographic',
  'encrypt-datakey': 'cryptographic',
  'decrypt-datakey': 'cryptographic',
  'encrypt-data': 'cryptographic',
  'decrypt-data': 'cryptographic',
  'create-key': 'management',
  'describe-key': 'management',
  'list-keys': 'management',
  'enable-key': 'management',
  'disable-key': 'management',
  'schedule-key-deletion': 'management',
  'cancel-key-deletion': 'management',
  'update-key-alias': 'management',
  'update-key-description': 'management',
  'enable-key-rotation': 'management',
  'disable-key-rotation': 'management',
  'update-key-rotation-interval': 'management',
  'get-key-rotation-status': 'management',
  'user-instances': 'management',
  'user-quotas': 'management',
} as const satisfies Record<HuaweiActionName, OperationClass>;
