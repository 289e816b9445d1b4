import type { OperationClass } from '../../core/rate-limiter.js';
import type { AlibabaOperationName } from './operations.js';

/**
 * Each operation's rate-limit class: Alibaba's cryptographic QPS quota covers the operations that use a key
 * (custom-key-stores.md, Alibaba's limits page); GetRandomPassword draws from the HSM's generator, as AWS counts
 * GenerateRandom. Everything else is management.
 */
export const ALIBABA_OPERATION_CLASSES = {
  Encrypt: 'cryptographic',
  Decrypt: 'cryptographic',
  GenerateDataKey: 'cryptographic',
  GenerateDataKeyWithoutPlaintext: 'cryptographic',
  GetRandomPassword: 'cryptographic',
  CreateKey: 'management',
  DescribeKey: 'management',
  ListKeys: 'management',
  EnableKey: 'management',
  DisableKey: 'management',
  ScheduleKeyDeletion: 'management',
  CancelKeyDeletion: 'management',
  UpdateKeyDescription: 'management',
  CreateAlias: 'management',
  UpdateAlias: 'management',
  DeleteAlias: 'management',
  ListAliases: 'management',
  ListAliasesByKeyId: 'management',
  DescribeRegions: 'management',
  UpdateRotationPolicy: 'management',
  CreateKeyVersion: 'management',
  ListKeyVersions: 'management',
  DescribeKeyVersion: 'management',
  ListKmsInstances: 'management',
  GetKmsInstance: 'management',
  GetKmsInstanceQuotaInfos: 'management',
} as const satisfies Record<AlibabaOperationName, OperationClass>;
