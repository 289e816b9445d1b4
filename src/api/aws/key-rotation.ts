import { z } from 'zod';
import { KmsError } from '../../core/errors.js';
import type { KeyRecord } from '../../core/keys.js';
import type { Services } from '../huawei/context.js';
import { AwsApiError, validationError } from './errors.js';
import type { AwsOperation } from './operations.js';
import { type Caller, integerInRange, keyArn, keyRef, parseBody } from './wire.js';

/**
 * AWS's key rotation operations (kms-apis.md §2.2) over the core's key versions: a rotation adds a version made
 * where the key lives, new ciphertexts use it, and every older one keeps decrypting.
 *
 * Our rotations are synchronous: RotateKeyOnDemand answers once the new version is the key's current one, so
 * GetKeyRotationStatus never has an on-demand rotation in progress to report, and OnDemandRotationStartDate is never
 * sent (AWS removes it once the rotation completes; ListKeyRotations shows the completed one).
 */

/** AWS's range for RotationPeriodInDays (the core allows 7–2560: Alibaba's and Huawei's may be shorter). */
const MIN_PERIOD_DAYS = 90;
const MAX_PERIOD_DAYS = 2560;
const DEFAULT_PERIOD_DAYS = 365;

/** AWS's quota: "You can perform on-demand key rotation a maximum of 25 times per KMS key." */
export const MAX_ON_DEMAND_ROTATIONS = 25;

const INCLUDE_KEY_MATERIAL = ['ALL_KEY_MATERIAL', 'ROTATIONS_ONLY'];

const toSeconds = (ms: number) => ms / 1000;

/**
 * AWS does not rotate keys in a custom key store, automatically or on demand, and refuses to change their rotation
 * with UnsupportedOperationException. A key of a wrapped store may be rotated through Alibaba, which does rotate
 * such keys: GetKeyRotationStatus and ListKeyRotations then show it as it is.
 */
function refuseStoreKey(key: KeyRecord, caller: Caller, operation: string): void {
  if (key.keyStoreId !== null) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      `${keyArn(key, caller)} is in custom key store ${key.keyStoreId}: ${operation} is not supported for keys in a custom key store.`,
    );
  }
}

/**
 * The key states that refuse a rotation change, worded with the key's ARN: DisabledException for a disabled key
 * (the operations' modeled error for "not enabled"), KMSInvalidStateException for a key pending deletion.
 */
function refuseUnusableKey(key: KeyRecord, caller: Caller): void {
  if (key.state === 'Disabled') throw new AwsApiError('DisabledException', `${keyArn(key, caller)} is disabled.`);
  if (key.state === 'PendingDeletion') {
    throw new AwsApiError('KMSInvalidStateException', `${keyArn(key, caller)} is pending deletion.`);
  }
}

/** The key, checked as every operation that changes its rotation checks it. */
async function rotatableKey(services: Services, caller: Caller, keyId: string, operation: string) {
  const ref = keyRef(keyId, caller);
  const key = await services.keys.get(caller.projectId, ref);
  refuseStoreKey(key, caller, operation);
  refuseUnusableKey(key, caller);
  return { ref, key };
}

const KeyOnly = z.object({ KeyId: z.string() }).strict();

const EnableKeyRotation = z.object({ KeyId: z.string(), RotationPeriodInDays: z.number().optional() }).strict();

/** Also changes the period of a key already rotating: the next rotation then comes a period after the last one. */
const enableKeyRotation: AwsOperation = async (services, caller, body) => {
  const req = parseBody(EnableKeyRotation, body);
  const days =
    req.RotationPeriodInDays === undefined
      ? DEFAULT_PERIOD_DAYS
      : integerInRange(req.RotationPeriodInDays, 'rotationPeriodInDays', MIN_PERIOD_DAYS, MAX_PERIOD_DAYS);
  const { ref } = await rotatableKey(services, caller, req.KeyId, 'EnableKeyRotation');
  await services.keys.enableRotation(caller.projectId, ref, days);
  return {};
};

const disableKeyRotation: AwsOperation = async (services, caller, body) => {
  const { ref } = await rotatableKey(services, caller, parseBody(KeyOnly, body).KeyId, 'DisableKeyRotation');
  await services.keys.disableRotation(caller.projectId, ref);
  return {};
};

/**
 * The period and next date only while automatic rotation is on, as AWS sends them. A key pending deletion shows
 * false (AWS: "While a KMS key is pending deletion, its key rotation status is false"); its rotation comes back if
 * the deletion is cancelled.
 */
const getKeyRotationStatus: AwsOperation = async (services, caller, body) => {
  const key = await services.keys.get(caller.projectId, keyRef(parseBody(KeyOnly, body).KeyId, caller));
  const enabled = key.state !== 'PendingDeletion' && key.rotationPeriodDays !== null && key.nextRotationAt !== null;
  return {
    KeyRotationEnabled: enabled,
    KeyId: keyArn(key, caller),
    ...(enabled
      ? { RotationPeriodInDays: key.rotationPeriodDays, NextRotationDate: toSeconds(key.nextRotationAt as number) }
      : {}),
  };
};

/** On-demand rotations leave the automatic schedule as it was (AWS's rule; the core keeps nextRotationAt). */
const rotateKeyOnDemand: AwsOperation = async (services, caller, body) => {
  const { ref, key } = await rotatableKey(services, caller, parseBody(KeyOnly, body).KeyId, 'RotateKeyOnDemand');
  // The quota is enforced in the store's compare-and-set, so concurrent requests cannot overshoot it.
  const rotated = await services.keys
    .rotate(caller.projectId, ref, 'ON_DEMAND', MAX_ON_DEMAND_ROTATIONS)
    .catch((err: unknown) => {
      if (err instanceof KmsError && err.code === 'RotationLimitExceeded') {
        throw new AwsApiError(
          'LimitExceededException',
          `${keyArn(key, caller)} has been rotated on demand ${MAX_ON_DEMAND_ROTATIONS} times, the most a key can be.`,
        );
      }
      throw err;
    });
  return { KeyId: keyArn(rotated, caller) };
};

const ListKeyRotations = z
  .object({
    KeyId: z.string(),
    IncludeKeyMaterial: z.string().optional(),
    Limit: z.number().optional(),
    Marker: z.string().optional(),
  })
  .strict();

/**
 * The key's rotations, oldest first, paged like ListKeys. Entries name the key by id, as AWS's examples show them.
 * ALL_KEY_MATERIAL adds the key's first version, which has no rotation date or type.
 */
const listKeyRotations: AwsOperation = async (services, caller, body) => {
  const req = parseBody(ListKeyRotations, body);
  if (req.IncludeKeyMaterial !== undefined && !INCLUDE_KEY_MATERIAL.includes(req.IncludeKeyMaterial)) {
    throw validationError(
      req.IncludeKeyMaterial,
      'includeKeyMaterial',
      `Member must satisfy enum value set: [${INCLUDE_KEY_MATERIAL.join(', ')}]`,
    );
  }
  const limit = req.Limit === undefined ? 100 : integerInRange(req.Limit, 'limit', 1, 1000);
  const offset = req.Marker === undefined ? 0 : Number(req.Marker);
  if (!/^\d+$/.test(req.Marker ?? '0') || !Number.isSafeInteger(offset)) {
    throw new AwsApiError('InvalidMarkerException', 'The marker that specifies where to start paginating is invalid.');
  }
  const ref = keyRef(req.KeyId, caller);
  const key = await services.keys.get(caller.projectId, ref);
  const versions = await services.keys.rotations(caller.projectId, ref);
  const listed =
    req.IncludeKeyMaterial === 'ALL_KEY_MATERIAL' ? versions : versions.filter((v) => v.rotationType !== null);
  const page = listed.slice(offset, offset + limit);
  const truncated = offset + page.length < listed.length;
  return {
    Rotations: page.map((v) => ({
      KeyId: key.id,
      ...(v.rotationType === null ? {} : { RotationDate: toSeconds(v.createdAt), RotationType: v.rotationType }),
    })),
    Truncated: truncated,
    ...(truncated ? { NextMarker: String(offset + page.length) } : {}),
  };
};

export const KEY_ROTATION_OPERATIONS = {
  EnableKeyRotation: enableKeyRotation,
  DisableKeyRotation: disableKeyRotation,
  GetKeyRotationStatus: getKeyRotationStatus,
  RotateKeyOnDemand: rotateKeyOnDemand,
  ListKeyRotations: listKeyRotations,
} as const satisfies Record<string, AwsOperation>;
