import type { KmsErrorCode } from '../../core/errors.js';
import { KmsError } from '../../core/errors.js';
import { ownEntry } from '../own-entry.js';

/**
 * Alibaba Cloud's RPC error body, `{"RequestId","HostId","Code","Message","Recommend"}`, with the HTTP status
 * Alibaba sends for the code. Codes and messages are the ones Alibaba documents (kms-apis.md §3.3, the KMS API
 * pages' error tables and the POP gateway's common codes), because SDK users match on `Code`.
 */
export interface AlibabaErrorBody {
  readonly RequestId: string;
  readonly HostId: string;
  readonly Code: string;
  readonly Message: string;
  readonly Recommend: string;
}

/** An error raised by the Alibaba adapter itself (protocol, signature, parameters): it already carries its code. */
export class AlibabaApiError extends Error {
  override readonly name = 'AlibabaApiError';
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** Alibaba's wording for a missing parameter. */
export function missingParameter(name: string): AlibabaApiError {
  return new AlibabaApiError(
    'MissingParameter',
    `The input parameter "${name}" that is mandatory for processing this request is not supplied.`,
  );
}

/** Alibaba's wording for an invalid parameter, followed by what would be valid. */
export function invalidParameter(name: string, valid: string): AlibabaApiError {
  return new AlibabaApiError('InvalidParameter', `The specified parameter "${name}" is not valid: ${valid}`);
}

export const unsupportedOperation = (what: string) =>
  new AlibabaApiError('UnsupportedOperation', `This action is not supported: ${what}`);
export const aliasNotFound = () =>
  new AlibabaApiError('Forbidden.AliasNotFound', 'The specified Alias is not found.', 404);

interface Mapping {
  readonly code: string;
  readonly status: number;
  /** Replaces the core's message, which speaks Huawei's words. */
  readonly message: string;
}

const stateIs = (state: 'Disabled' | 'PendingDeletion'): Mapping => ({
  code: `Rejected.${state}`,
  status: 409,
  message: `The request was rejected because the key state is ${state}.`,
});

/**
 * Every core error code, rendered the Alibaba way. `satisfies` makes a missing code a type error. Codes, statuses
 * and messages are those of the KMS API reference (version 2016-01-20) where it documents one; where it documents
 * none (an invalid ciphertext, an alias that exists, cancelling a deletion that is not scheduled), the nearest
 * documented code with a message that says what happened.
 */
export const ALIBABA_ERROR_TABLE = {
  KeyNotFound: { code: 'Forbidden.KeyNotFound', status: 404, message: 'The specified Key is not found.' },
  KeyDisabled: stateIs('Disabled'),
  KeyPendingDeletion: stateIs('PendingDeletion'),
  // EnableKey and DisableKey succeed on a key already in the state asked for: only a key pending deletion refuses.
  KeyNotDisabled: stateIs('PendingDeletion'),
  KeyNotEnabled: stateIs('PendingDeletion'),
  KeyAlreadyPendingDeletion: stateIs('PendingDeletion'),
  KeyNotPendingDeletion: {
    code: 'Rejected.NotPendingDeletion',
    status: 409,
    message: 'The request was rejected because the key state is not PendingDeletion.',
  },
  AliasAlreadyExists: {
    code: 'Rejected.ResourceExist',
    status: 409,
    message: 'The request was rejected because the resource already exists.',
  },
  KeyQuotaExceeded: {
    code: 'Rejected.LimitExceeded',
    status: 400,
    message: 'The request was rejected because user create resource limit was exceeded',
  },
  TagLimitExceeded: {
    code: 'Rejected.LimitExceeded',
    status: 400,
    message: 'The request was rejected because the key has too many tags.',
  },
  // One answer for every bad blob, whatever is wrong with it: no oracle.
  InvalidCiphertext: {
    code: 'InvalidParameter',
    status: 400,
    message:
      'The specified parameter "CiphertextBlob" is not valid: it is not a ciphertext of this service, it was altered, or the EncryptionContext differs from the one it was made with.',
  },
  IncorrectKey: {
    code: 'InvalidParameter',
    status: 400,
    message: 'The specified parameter "CiphertextBlob" is not valid: it was not made with the specified key.',
  },
  InvalidParameter: { code: 'InvalidParameter', status: 400, message: 'The specified parameter is not valid.' },
  AuthMissing: { code: 'MissingParameter', status: 400, message: 'The request is not signed.' },
  AuthInvalid: {
    code: 'InvalidAccessKeyId.NotFound',
    status: 404,
    message: 'The Access Key ID provided does not exist in our records.',
  },
  AuthIncomplete: { code: 'IncompleteSignature', status: 400, message: 'The request signature is incomplete.' },
  AuthSignatureMismatch: {
    code: 'SignatureDoesNotMatch',
    status: 400,
    message: 'Specified signature is not matched with our calculation.',
  },
  AuthUnknownCredential: {
    code: 'InvalidAccessKeyId.NotFound',
    status: 404,
    message: 'The Access Key ID provided does not exist in our records.',
  },
  AuthExpired: {
    code: 'InvalidTimeStamp.Expired',
    status: 400,
    message: 'Specified time stamp or date value is expired.',
  },
  ProjectMismatch: {
    code: 'Forbidden.NoPermission',
    status: 403,
    message: 'This operation is forbidden by permission system.',
  },
  // KMS instances (key stores). Alibaba's API reference documents no code for an unknown instance; the generic
  // Forbidden.ResourceNotFound says it without telling a foreign instance from a missing one.
  KeyStoreNotFound: {
    code: 'Forbidden.ResourceNotFound',
    status: 404,
    message: 'The specified KMS instance is not found.',
  },
  // Forbidden.DKMSInstanceStateInvalid is what Alibaba's CreateKey answers while an instance cannot take keys (the
  // Terraform provider waits on it); the status is not documented, 403 is its Forbidden family's. In this dialect
  // KeyStoreInvalidState only comes from CreateKey in an instance that is not connected.
  KeyStoreInvalidState: {
    code: 'Forbidden.DKMSInstanceStateInvalid',
    status: 403,
    message: 'The KMS instance is not Connected: keys can be created in it only while it is.',
  },
  KeyStoreNotConnected: {
    code: 'Forbidden.DKMSInstanceStateInvalid',
    status: 403,
    message: 'The KMS instance of the key is not Connected: its keys cannot be used until it is connected again.',
  },
  // The rest concern creating, connecting and deleting stores, which no Alibaba operation here does (instances are
  // bought in the console); a first guess, should one be added.
  KeyStoreNameInUse: { code: 'Rejected.ResourceExist', status: 409, message: 'The KMS instance name is in use.' },
  KeyStoreHasKeys: { code: 'Rejected.InvalidStatus', status: 400, message: 'The KMS instance still holds keys.' },
  KeyStoreLimitExceeded: { code: 'Rejected.LimitExceeded', status: 400, message: 'Too many KMS instances.' },
  ConnectionNotFound: { code: 'InvalidParameter', status: 400, message: 'The specified HSM cluster is not offered.' },
  ConnectionInUse: { code: 'Rejected.ResourceExist', status: 409, message: 'The HSM cluster is in use.' },
  ConnectionNotRelated: {
    code: 'InvalidParameter',
    status: 400,
    message: 'The HSM cluster does not hold the keys of the instance.',
  },
  // Alibaba's keys kept HsmInternal in an instance do not rotate: UpdateRotationPolicy and CreateKeyVersion document
  // Rejected.UnsupportedOperation for keys that cannot; Recommend says why.
  RotationNotSupported: { code: 'Rejected.UnsupportedOperation', status: 400, message: 'Unsupported operation.' },
  // No on-demand quota is passed through this dialect.
  RotationLimitExceeded: {
    code: 'Rejected.LimitExceeded',
    status: 400,
    message: 'The request was rejected because user create resource limit was exceeded',
  },
  // Alibaba's limits page: a caller over its QPS quota gets HTTP 429 Rejected.Throttling.
  Throttled: { code: 'Rejected.Throttling', status: 429, message: 'QPS Limit Exceeded.' },
  HsmUnavailable: { code: 'ServiceUnavailableTemporary', status: 503, message: 'Service Unavailable Temporary.' },
  InternalError: { code: 'InternalFailure', status: 500, message: 'Internal Failure' },
} as const satisfies Record<KmsErrorCode, Mapping>;

/** What to do about an error, by code; Alibaba's gateway fills `Recommend` with a troubleshooting hint. */
const RECOMMENDATIONS: Readonly<Record<string, string>> = {
  MissingParameter: 'Add the parameter named in Message.',
  InvalidParameter: 'Correct the parameter named in Message.',
  'InvalidAction.NotFound': 'Check the Action name against the KMS API reference (version 2016-01-20).',
  InvalidVersion: 'Send Version=2016-01-20.',
  'InvalidTimeStamp.Expired': "Sync the client's clock: Timestamp must be within 15 minutes of the server time (UTC).",
  'InvalidTimeStamp.Format': 'Send Timestamp in ISO 8601 UTC, e.g. 2026-01-01T12:00:00Z.',
  IllegalTimestamp: 'Send Timestamp in ISO 8601 UTC, e.g. 2026-01-01T12:00:00Z.',
  SignatureNonceUsed: 'Send a new, unique SignatureNonce with every request.',
  SignatureDoesNotMatch: 'Check the AccessKey secret and sign the request as the RPC signature method requires.',
  'InvalidAccessKeyId.NotFound': 'Check the AccessKey ID, or create one with `kms credentials create`.',
  'Forbidden.KeyNotFound': 'Check the KeyId: it must name a key of your project by id, alias or ARN.',
  'Forbidden.AliasNotFound': 'Check the alias name: it must be an alias of your project.',
  'Rejected.Disabled': 'Enable the key (EnableKey) before using it.',
  'Rejected.PendingDeletion': 'Cancel the key deletion (CancelKeyDeletion) before using the key.',
  'Rejected.ResourceExist': 'Choose another alias name, or point the alias elsewhere with UpdateAlias.',
  'Forbidden.ResourceNotFound': 'Check the KMS instance id: ListKmsInstances lists those of your project.',
  'Forbidden.DKMSInstanceStateInvalid':
    'Check the instance with GetKmsInstance: its Status must be Connected. Connect it (through the AWS or Huawei API) and retry.',
  'Rejected.UnsupportedOperation':
    'Keys kept HsmInternal in a KMS instance do not rotate: to rotate keys, create them in an instance whose keys are kept HsmEncryptedDatabase, or as default keys.',
  UnsupportedOperation: 'This service offers symmetric AES-256 keys in its HSM; see README.md for what it supports.',
  UnsupportedHTTPMethod: 'Send the request as GET or POST.',
  InternalFailure: 'Retry the request.',
  ServiceUnavailableTemporary: 'Retry the request.',
  'Rejected.Throttling': 'Send fewer requests per second: retry after the seconds given in Retry-After.',
};

/** The status and body for any error; `unexpected` is true when the error must be logged as a bug. */
export function renderAlibabaError(
  err: unknown,
  requestId: string,
  hostId: string,
): { status: number; body: AlibabaErrorBody; unexpected: boolean } {
  let code: string;
  let status: number;
  let message: string;
  let unexpected = false;
  if (err instanceof AlibabaApiError) {
    ({ code, status, message } = err);
  } else if (err instanceof KmsError) {
    const mapping: Mapping = ALIBABA_ERROR_TABLE[err.code];
    ({ code, status } = mapping);
    // The core's InvalidParameter messages say what is wrong; keep them. Others speak Huawei's words.
    message = err.code === 'InvalidParameter' || err.reported ? err.message : mapping.message;
    unexpected = (err.code === 'InternalError' || err.code === 'HsmUnavailable') && !err.reported;
  } else {
    ({ code, status, message } = ALIBABA_ERROR_TABLE.InternalError);
    unexpected = true;
  }
  const Recommend = ownEntry(RECOMMENDATIONS, code) ?? 'See the Alibaba Cloud KMS API reference (version 2016-01-20).';
  return {
    status,
    body: { RequestId: requestId, HostId: hostId, Code: code, Message: message, Recommend },
    unexpected,
  };
}
