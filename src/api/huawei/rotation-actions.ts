import { z } from 'zod';
import { assertUsableForCrypto, type KeyRecord, transitions } from '../../core/keys.js';
import type { HuaweiAction } from './context.js';
import { invalid } from './errors.js';
import { integerString, KeyOnly, keyRef, parseBody, sequence } from './wire.js';

/**
 * Automatic key rotation: enable-key-rotation, disable-key-rotation, update-key-rotation-interval and
 * get-key-rotation-status (OTC-API kms_02_0038 to kms_02_0041). Huawei has no on-demand rotation; versions made by
 * another dialect's on-demand rotation count in number_of_rotations all the same.
 */

/** Huawei's rotation interval: 30 to 365 days, 365 when enable-key-rotation sets it (OTC-API kms_02_0038, kms_02_0039). */
const MIN_ROTATION_INTERVAL = 30;
const MAX_ROTATION_INTERVAL = 365;
const DEFAULT_ROTATION_INTERVAL = 365;

const UpdateRotationInterval = z.object({ key_id: z.string(), rotation_interval: integerString, sequence }).strict();

const rotationNotEnabled = () => invalid('KMS.0313', 'Key rotation is not enabled.');

/**
 * Huawei does not rotate keys of a dedicated keystore (KMS.0338), whichever way the store keeps them; the core would
 * rotate a wrapped store's keys, as Alibaba does for HsmEncryptedDatabase stores (docs/custom-key-stores.md).
 */
function refuseKeystoreKey(key: KeyRecord): void {
  if (key.keyStoreId !== null) throw invalid('KMS.0338', 'The custom keystore do not support rotation.');
}

export const enableKeyRotation: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const ref = keyRef(req.key_id, false);
  const key = await services.keys.get(projectId, ref);
  assertUsableForCrypto(key);
  refuseKeystoreKey(key);
  // Enabling it again would restart the period; Huawei's code table has "Key rotation is not disabled." for this.
  if (key.rotationPeriodDays !== null) throw invalid('KMS.2901', 'Key rotation is not disabled.');
  await services.keys.enableRotation(projectId, ref, DEFAULT_ROTATION_INTERVAL);
  return {};
};

export const disableKeyRotation: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const ref = keyRef(req.key_id, false);
  const key = await services.keys.get(projectId, ref);
  // A key pending deletion says so before its rotation state is looked at, as on enable and update.
  transitions.edit(key, {});
  if (key.rotationPeriodDays === null) throw rotationNotEnabled();
  await services.keys.disableRotation(projectId, ref);
  return {};
};

export const updateKeyRotationInterval: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(UpdateRotationInterval, body);
  if (req.rotation_interval < MIN_ROTATION_INTERVAL || req.rotation_interval > MAX_ROTATION_INTERVAL) {
    throw invalid('KMS.3001', 'Invalid rotation_interval.');
  }
  const ref = keyRef(req.key_id, false);
  const key = await services.keys.get(projectId, ref);
  assertUsableForCrypto(key);
  refuseKeystoreKey(key);
  if (key.rotationPeriodDays === null) throw rotationNotEnabled();
  // The next rotation comes the new interval after the last automatic one (or after rotation was enabled).
  await services.keys.enableRotation(projectId, ref, req.rotation_interval);
  return {};
};

/**
 * The types are those of Huawei's SDK model (HW-GO-SDK model_show_key_rotation_status_response.go) and of the OTC
 * example: key_rotation_enabled a boolean, rotation_interval and number_of_rotations integers, last_rotation_time a
 * string. (The OTC table types the boolean and the count as String, but the Go SDK could not decode them as such.)
 * last_rotation_time is in milliseconds, as the OTC example and describe-key's dates are, and "" before any
 * rotation, as scheduled_deletion_date is when none is set. While rotation is off, rotation_interval is the 365 days
 * enable-key-rotation would set: Huawei marks the field mandatory and an integer, so it is never left out.
 */
export const getKeyRotationStatus: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const key = await services.keys.get(projectId, keyRef(req.key_id, false));
  return {
    key_rotation_enabled: key.rotationPeriodDays !== null,
    rotation_interval: key.rotationPeriodDays ?? DEFAULT_ROTATION_INTERVAL,
    last_rotation_time: key.lastRotatedAt === null ? '' : String(key.lastRotatedAt),
    number_of_rotations: key.rotations,
  };
};
