import type { OperationClass } from '../../core/rate-limiter.js';
import type { AwsOperationName } from './operations.js';

/**
 * Each operation's rate-limit class: AWS's shared cryptographic quota covers Encrypt, Decrypt, ReEncrypt,
 * GenerateDataKey(WithoutPlaintext) and GenerateRandom (kms-apis.md §2.3); everything else is management.
 */
export const AWS_OPERATION_CLASSES = {
  Encrypt: 'cryptographic',
  Decrypt: 'cryptographic',
  ReEncrypt: 'cryptographic',
  GenerateDataKey: 'cryptographic',
  GenerateDataKeyWithoutPlaintext: 'cryptographic',
  GenerateRandom: 'cryptographic',
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
  TagResource: 'management',
  UntagResource: 'management',
  ListResourceTags: 'management',
  CreateCustomKeyStore: 'management',
  DescribeCustomKeyStores: 'management',
  ConnectCustomKeyStore: 'management',
  DisconnectCustomKeyStore: 'management',
  UpdateCustomKeyStore: 'management',
  DeleteCustomKeyStore: 'management',
  EnableKeyRotation: 'management',
  DisableKeyRotation: 'management',
  GetKeyRotationStatus: 'management',
  RotateKeyOnDemand: 'management',
  ListKeyRotations: 'management',
} as const satisfies Record<AwsOperationName, OperationClass>;
