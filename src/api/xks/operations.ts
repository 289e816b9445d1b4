import { z } from 'zod';
import type { AuditDraft } from '../../core/audit.js';
import type { XksService } from '../../core/xks.service.js';
import { decodeXksMetadata, MAX_XKS_METADATA_BYTES, XKS_IV_BYTES, XKS_TAG_BYTES } from '../../core/xks-ciphertext.js';
import { decodeBase64 } from '../base64.js';
import { XksApiError } from './errors.js';

/**
 * The four XKS proxy operations (xks_proxy_api_spec.md v1.0.3; custom-key-stores.md §1.1): validate the JSON body,
 * call XksService once, answer in the spec's fields (every binary one in base64).
 */

/** What the health report says about this deployment, fixed at start-up. */
export interface XksDeployment {
  /** Processes serving the API (KMS_WORKERS). */
  readonly fleetSize: number;
  readonly ekmVendor: string;
  /** The default HSM: its token, and what kind of module it is. */
  readonly ekm: { readonly id: string; readonly model: string };
}

export interface XksContext {
  readonly service: XksService;
  readonly deployment: XksDeployment;
}

/** The URI's project and, for a key operation, external key id. */
export interface XksTarget {
  readonly projectId: string;
  readonly keyId: string;
}

/** `audit` is the request's audit draft: an operation that uses a key version says which (`usedKey`). */
export type XksOperation = (
  context: XksContext,
  target: XksTarget,
  body: unknown,
  audit: AuditDraft,
) => Promise<object>;

export type XksOperationName = 'metadata' | 'encrypt' | 'decrypt' | 'health';

export const XKS_VENDOR = 'hsm-kms';
export const XKS_MODEL = 'hsm-kms XKS proxy 1';

/** The spec's minimums are 4,300 bytes of plaintext and 8,192 of AAD; twice as much is taken. */
export const MAX_XKS_PLAINTEXT_BYTES = 16_384;
export const MAX_XKS_AAD_BYTES_ACCEPTED = 16_384;

/**
 * Every request carries it. The spec forbids checking kmsRequestId's format and refusing a kmsOperation this proxy
 * does not know; members it may add later are ignored.
 */
const requestMetadata = z.object({ kmsRequestId: z.string(), kmsOperation: z.string() });
const keyRequestMetadata = requestMetadata.extend({ awsPrincipalArn: z.string() });
const base64 = z.string();

const metadataRequest = z.object({ requestMetadata: keyRequestMetadata });
const encryptRequest = z.object({
  requestMetadata: keyRequestMetadata,
  plaintext: base64,
  encryptionAlgorithm: z.string(),
  additionalAuthenticatedData: base64.optional(),
  ciphertextDataIntegrityValueAlgorithm: z.string().optional(),
});
const decryptRequest = z.object({
  requestMetadata: keyRequestMetadata,
  ciphertext: base64,
  ciphertextMetadata: base64.optional(),
  encryptionAlgorithm: z.string(),
  additionalAuthenticatedData: base64.optional(),
  authenticationTag: base64,
  initializationVector: base64,
});
const healthRequest = z.object({ requestMetadata });

function parse<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new XksApiError('ValidationException', 'The request body must be a JSON object.');
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const member = issue?.path.join('.') ?? '';
  throw new XksApiError(
    'ValidationException',
    issue?.code === 'invalid_type' && issue.input === undefined
      ? `${member} is required.`
      : `${member} is not valid: ${issue?.message ?? 'unexpected value'}.`,
  );
}

/** A base64 member's bytes, within [min, max]; refused bytes are zeroed (they may be a plaintext). */
function bytesOf(value: string, member: string, min: number, max: number): Buffer {
  const bytes = decodeBase64(value);
  if (bytes === undefined) throw new XksApiError('ValidationException', `${member} is not valid base64.`);
  if (bytes.length < min || bytes.length > max) {
    bytes.fill(0);
    throw new XksApiError('ValidationException', `${member} must be ${min} to ${max} bytes, not ${bytes.length}.`);
  }
  return bytes;
}

/** Version 1 of the API has AES-GCM only; a later algorithm is one this proxy does not offer. */
function aesGcm(algorithm: string): void {
  if (algorithm !== 'AES_GCM') {
    throw new XksApiError('UnsupportedOperationException', 'encryptionAlgorithm must be AES_GCM.');
  }
}

const aadOf = (value: string | undefined) =>
  value === undefined ? Buffer.alloc(0) : bytesOf(value, 'additionalAuthenticatedData', 0, MAX_XKS_AAD_BYTES_ACCEPTED);

const getKeyMetadata: XksOperation = async ({ service }, { projectId, keyId }, body) => {
  parse(metadataRequest, body);
  const { status } = await service.metadata(projectId, keyId);
  // Every key of this service is an AES-256 key that encrypts and decrypts.
  return { keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'], keyStatus: status };
};

const encrypt: XksOperation = async ({ service }, { projectId, keyId }, body, audit) => {
  const request = parse(encryptRequest, body);
  aesGcm(request.encryptionAlgorithm);
  const integrity = request.ciphertextDataIntegrityValueAlgorithm;
  if (integrity !== undefined && integrity !== 'SHA_256') {
    throw new XksApiError('UnsupportedOperationException', 'ciphertextDataIntegrityValueAlgorithm must be SHA_256.');
  }
  const aad = aadOf(request.additionalAuthenticatedData);
  const plaintext = bytesOf(request.plaintext, 'plaintext', 1, MAX_XKS_PLAINTEXT_BYTES);
  try {
    const sealed = await service.encrypt(projectId, keyId, { plaintext, aad, integrityValue: integrity !== undefined });
    audit.usedKey(keyId, sealed.keyVersion);
    return {
      ciphertext: sealed.ciphertext.toString('base64'),
      initializationVector: sealed.iv.toString('base64'),
      authenticationTag: sealed.tag.toString('base64'),
      ciphertextMetadata: sealed.metadata.toString('base64'),
      ...(sealed.integrityValue ? { ciphertextDataIntegrityValue: sealed.integrityValue.toString('base64') } : {}),
    };
  } finally {
    plaintext.fill(0);
  }
};

const decrypt: XksOperation = async ({ service }, { projectId, keyId }, body, audit) => {
  const request = parse(decryptRequest, body);
  aesGcm(request.encryptionAlgorithm);
  // The spec allows 12- or 16-byte IVs; this service makes only 12-byte ones (XksService refuses the others).
  const iv = bytesOf(request.initializationVector, 'initializationVector', XKS_IV_BYTES, 16);
  if (iv.length !== XKS_IV_BYTES && iv.length !== 16) {
    throw new XksApiError('ValidationException', 'initializationVector must be 12 or 16 bytes.');
  }
  const input = {
    ciphertext: bytesOf(request.ciphertext, 'ciphertext', 1, MAX_XKS_PLAINTEXT_BYTES),
    tag: bytesOf(request.authenticationTag, 'authenticationTag', XKS_TAG_BYTES, XKS_TAG_BYTES),
    iv,
    aad: aadOf(request.additionalAuthenticatedData),
    metadata:
      request.ciphertextMetadata === undefined
        ? undefined
        : bytesOf(request.ciphertextMetadata, 'ciphertextMetadata', 0, MAX_XKS_METADATA_BYTES),
  };
  const plaintext = await service.decrypt(projectId, keyId, input);
  // The version the metadata names: the decrypt succeeded, so it is one the key has.
  audit.usedKey(keyId, input.metadata && decodeXksMetadata(input.metadata));
  try {
    return { plaintext: plaintext.toString('base64') };
  } finally {
    plaintext.fill(0);
  }
};

const getHealthStatus: XksOperation = async ({ service, deployment }, _target, body) => {
  parse(healthRequest, body);
  const healthStatus = await service.health();
  return {
    xksProxyFleetSize: deployment.fleetSize,
    xksProxyVendor: XKS_VENDOR,
    xksProxyModel: XKS_MODEL,
    ekmVendor: deployment.ekmVendor,
    ekmFleetDetails: [{ id: deployment.ekm.id, model: deployment.ekm.model, healthStatus }],
  };
};

export const XKS_OPERATIONS = {
  metadata: getKeyMetadata,
  encrypt,
  decrypt,
  health: getHealthStatus,
} as const satisfies Record<XksOperationName, XksOperation>;
