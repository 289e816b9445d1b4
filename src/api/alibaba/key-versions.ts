import type { Services } from '../huawei/context.js';
import { ownEntry } from '../own-entry.js';
import { invalidParameter } from './errors.js';
import { aliasAware, getKey } from './key-lookup.js';
import type { AlibabaOperation } from './operations.js';
import { type Caller, DAY_SECONDS, isoDate, keyRef, keyVersionId, page, type RpcParams } from './wire.js';

/**
 * Alibaba's key rotation (API version 2016-01-20) over the core's key versions: a key version is a core version,
 * its KeyVersionId derived from the key id and the version number (wire.ts keyVersionId). CreateKeyVersion is an
 * on-demand rotation; UpdateRotationPolicy sets the period of automatic ones, which the primary's sweep makes.
 *
 * Which keys rotate follows Alibaba: keys of the default HSM and of instances whose keys are kept
 * HsmEncryptedDatabase (wrapped stores) do; keys kept HsmInternal (token objects of a tenant's store) do not, and
 * the core refuses them (RotationNotSupported, Alibaba's Rejected.UnsupportedOperation).
 *
 * Not enforced: the seven days the older CreateKeyVersion page asked between two versions of a key, and its 50
 * versions per key (the current pages name neither, only that each version counts against an instance's key quota).
 */

const UNIT_SECONDS: Readonly<Record<string, number>> = { d: DAY_SECONDS, h: 3_600, m: 60, s: 1 };
/** `integer[unit]`, the unit d, h, m or s: Alibaba's UpdateRotationPolicy and CreateKey pages (`30d`, `604800s`). */
const ROTATION_INTERVAL = /^(\d{1,12})([dhms])$/;
/**
 * The periods Alibaba takes for keys that rotate (its current UpdateRotationPolicy and CreateKey pages: 7 to 365
 * days; an older page said 730).
 */
const ALIBABA_MIN_ROTATION_DAYS = 7;
const ALIBABA_MAX_ROTATION_DAYS = 365;

/** RotationInterval as a number of days: Alibaba's bounds, in whole days (the core rotates on a period of days). */
function rotationIntervalDays(value: string): number {
  const match = ROTATION_INTERVAL.exec(value);
  const unit = match ? ownEntry(UNIT_SECONDS, match[2] as string) : undefined;
  const seconds = match && unit ? Number(match[1]) * unit : Number.NaN;
  if (!(seconds >= ALIBABA_MIN_ROTATION_DAYS * DAY_SECONDS && seconds <= ALIBABA_MAX_ROTATION_DAYS * DAY_SECONDS)) {
    throw invalidParameter(
      'RotationInterval',
      `an integer and a unit (d, h, m or s) from ${ALIBABA_MIN_ROTATION_DAYS} to ${ALIBABA_MAX_ROTATION_DAYS} days, e.g. 30d or 2592000s.`,
    );
  }
  if (seconds % DAY_SECONDS !== 0) {
    throw invalidParameter(
      'RotationInterval',
      'a whole number of days: this service rotates keys on a period of days.',
    );
  }
  return seconds / DAY_SECONDS;
}

/**
 * EnableAutomaticRotation and RotationInterval, as UpdateRotationPolicy and CreateKey take them: the period in days,
 * or null for no automatic rotation. The interval is required with "true", and ignored with "false" (Alibaba: it
 * may then be left out).
 */
export function automaticRotationDays(params: RpcParams, enable: boolean): number | null {
  return enable ? rotationIntervalDays(params.required('RotationInterval')) : null;
}

const keyVersion = (keyId: string, version: number, createdAt: number) => ({
  KeyId: keyId,
  KeyVersionId: keyVersionId(keyId, version),
  CreationDate: isoDate(createdAt),
});

/** EnableAutomaticRotation is required; a key that is not Enabled cannot have rotation turned on (Alibaba's rule). */
const updateRotationPolicy: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  params.required('EnableAutomaticRotation');
  const days = automaticRotationDays(params, params.boolean('EnableAutomaticRotation', false));
  const updated =
    days === null
      ? services.keys.disableRotation(caller.projectId, ref)
      : services.keys.enableRotation(caller.projectId, ref, days);
  await updated.catch(aliasAware(ref));
  return {};
};

/** A new version, made where the key lives, becomes the primary one: what Encrypt and GenerateDataKey use next. */
const createKeyVersion: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  const rotated = await services.keys.rotate(caller.projectId, ref, 'ON_DEMAND').catch(aliasAware(ref));
  // Only a rotation conditional on an expected version comes back without a key; this one is not.
  if (!rotated) throw new Error('an unconditional rotation returned no key');
  return { KeyVersion: keyVersion(rotated.id, rotated.currentVersion, rotated.lastRotatedAt ?? rotated.createdAt) };
};

async function versionsOf(services: Services, caller: Caller, params: RpcParams) {
  const ref = keyRef(params.required('KeyId'), caller);
  const key = await getKey(services, caller, ref);
  return { key, versions: await services.keys.rotations(caller.projectId, { kind: 'id', id: key.id }) };
}

/** Oldest first, the key's first version included. */
const listKeyVersions: AlibabaOperation = async (services, caller, params) => {
  const { pageNumber, pageSize, offset } = page(params);
  const { key, versions } = await versionsOf(services, caller, params);
  return {
    KeyVersions: {
      KeyVersion: versions.slice(offset, offset + pageSize).map((v) => keyVersion(key.id, v.version, v.createdAt)),
    },
    TotalCount: versions.length,
    PageNumber: pageNumber,
    PageSize: pageSize,
  };
};

/** A KeyVersionId that is no version of the key is InvalidParameter, the one error Alibaba documents for it. */
const describeKeyVersion: AlibabaOperation = async (services, caller, params) => {
  const wanted = params.required('KeyVersionId');
  const { key, versions } = await versionsOf(services, caller, params);
  const found = versions.find((v) => keyVersionId(key.id, v.version) === wanted);
  if (!found) throw invalidParameter('KeyVersionId', `it names no version of key ${key.id}.`);
  return { KeyVersion: keyVersion(key.id, found.version, found.createdAt) };
};

/** The key version and rotation operations, registered with the others in ALIBABA_OPERATIONS. */
export const KEY_VERSION_OPERATIONS = {
  UpdateRotationPolicy: {
    run: updateRotationPolicy,
    parameters: ['KeyId', 'EnableAutomaticRotation', 'RotationInterval'],
  },
  CreateKeyVersion: { run: createKeyVersion, parameters: ['KeyId'] },
  ListKeyVersions: { run: listKeyVersions, parameters: ['KeyId', 'PageNumber', 'PageSize'] },
  DescribeKeyVersion: { run: describeKeyVersion, parameters: ['KeyId', 'KeyVersionId'] },
} as const satisfies Readonly<Record<string, { run: AlibabaOperation; parameters: readonly string[] }>>;
