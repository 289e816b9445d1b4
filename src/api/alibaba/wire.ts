import { createHash } from 'node:crypto';
import type { EncryptionContext } from '../../core/encryption-context.js';
import { KmsError } from '../../core/errors.js';
import type { KeyRecord, KeyRef } from '../../core/keys.js';
import { decodeBase64 } from '../base64.js';
import { ownStringMap } from '../encryption-context.js';
import { keyRefOf } from '../key-arn.js';
import { invalidParameter, missingParameter } from './errors.js';

/** Who signed the request: the project is the Alibaba "account" (the uid in ARNs); the region is the service's. */
export interface Caller {
  readonly projectId: string;
  readonly region: string;
}

/**
 * The request's parameters (query string and form body together). Every value is a string on the wire; an empty one
 * counts as absent, because the Alibaba SDKs send an unset field as `Name=`.
 */
export class RpcParams {
  readonly #values: ReadonlyMap<string, string>;

  constructor(values: ReadonlyMap<string, string>) {
    this.#values = values;
  }

  optional(name: string): string | undefined {
    const value = this.#values.get(name);
    return value === '' ? undefined : value;
  }

  required(name: string): string {
    const value = this.optional(name);
    if (value === undefined) throw missingParameter(name);
    return value;
  }

  /** Alibaba's booleans are the strings "true" and "false". */
  boolean(name: string, fallback: boolean): boolean {
    const value = this.optional(name);
    if (value === undefined) return fallback;
    const lower = value.toLowerCase();
    if (lower !== 'true' && lower !== 'false') throw invalidParameter(name, 'use "true" or "false".');
    return lower === 'true';
  }

  /** A decimal integer in [min, max]; `fallback` when absent. */
  integer(name: string, min: number, max: number, fallback: number): number;
  integer(name: string, min: number, max: number): number | undefined;
  integer(name: string, min: number, max: number, fallback?: number): number | undefined {
    const value = this.optional(name);
    if (value === undefined) return fallback;
    const n = /^\d{1,10}$/.test(value) ? Number(value) : Number.NaN;
    if (!(n >= min && n <= max)) throw invalidParameter(name, `an integer from ${min} to ${max}.`);
    return n;
  }

  /**
   * Refuses any parameter whose name (or, for an entry `Name.key` of a map parameter, whose `Name`) is not in
   * `known`: a parameter this service does not understand must not be mistaken for one it honours. Empty values
   * count as absent, as everywhere (the SDKs send unset fields as `Name=`).
   */
  refuseUnknown(known: ReadonlySet<string>): void {
    for (const [name, value] of this.#values) {
      if (value === '' || known.has(name) || isMapEntry(name, known)) continue;
      throw invalidParameter(
        name,
        'this action does not take it, and this service refuses what it does not understand.',
      );
    }
  }

  /** The entries of a map parameter flattened the SDK way, `Name.key=value`, with the prefix removed. */
  flattened(name: string): [string, string][] {
    const prefix = `${name}.`;
    return [...this.#values].filter(([k]) => k.startsWith(prefix)).map(([k, v]) => [k.slice(prefix.length), v]);
  }
}

/** Parameters that are maps, which the SDKs may flatten into `Name.<key>=<value>` parameters. */
const MAP_PARAMETERS: ReadonlySet<string> = new Set(['EncryptionContext']);

/**
 * `Name.<key>` of a map parameter the action takes. Any other dotted name (`Tags.1.TagKey`, `Policy.x`) is no
 * parameter of ours, and must be refused, not read as its prefix.
 */
function isMapEntry(name: string, known: ReadonlySet<string>): boolean {
  const dot = name.indexOf('.');
  if (dot <= 0) return false;
  const prefix = name.slice(0, dot);
  return MAP_PARAMETERS.has(prefix) && known.has(prefix);
}

/**
 * EncryptionContext: a JSON object of strings, as the API documents it (`{"Example":"Example"}`), or a map the SDK
 * flattened into `EncryptionContext.<key>=<value>` parameters (@alicloud/kms20160120 1.x does this). Not both.
 */
export function encryptionContext(params: RpcParams): EncryptionContext | undefined {
  const json = params.optional('EncryptionContext');
  const flattened = params.flattened('EncryptionContext');
  if (json !== undefined && flattened.length > 0) {
    throw invalidParameter(
      'EncryptionContext',
      'give it as one JSON string or as EncryptionContext.<key> entries, not both.',
    );
  }
  if (flattened.length > 0) return Object.fromEntries(flattened);
  if (json === undefined) return undefined;
  let context: EncryptionContext | undefined;
  try {
    context = ownStringMap(JSON.parse(json));
  } catch {
    context = undefined;
  }
  if (context === undefined) throw invalidParameter('EncryptionContext', 'it must be a JSON object of string values.');
  return context;
}

/** A base64 parameter of `min` to `max` decoded bytes. */
export function base64Param(params: RpcParams, name: string, min: number, max: number): Buffer {
  const bytes = decodeBase64(params.required(name));
  if (bytes === undefined) throw invalidParameter(name, 'it must be Base64-encoded.');
  if (bytes.length < min || bytes.length > max) {
    bytes.fill(0);
    throw invalidParameter(name, `it must decode to ${min} to ${max} bytes.`);
  }
  return bytes;
}

/** PageNumber from 1, PageSize 1–100 (10 by default), as Alibaba's list operations take them. */
export function page(params: RpcParams): { pageNumber: number; pageSize: number; offset: number } {
  const pageNumber = params.integer('PageNumber', 1, 1_000_000_000, 1);
  const pageSize = params.integer('PageSize', 1, 100, 10);
  return { pageNumber, pageSize, offset: (pageNumber - 1) * pageSize };
}

/** acs:kms:<region>:<uid>:key/<id> or …:alias/<name>; the uid is the project. */
const KMS_ARN = /^acs:kms:([a-z0-9-]+):([^:]+):(key|alias)\/(.+)$/;

/**
 * A KeyId as Alibaba takes it: key id, alias (`alias/...`), or the ARN of either. An ARN of another project or region
 * names nothing this caller can see: Forbidden.KeyNotFound, the same as an unknown key.
 */
export function keyRef(keyId: string, caller: Caller): KeyRef {
  const ref = keyRefOf(keyId, KMS_ARN, (region, account) => region === caller.region && account === caller.projectId);
  if (ref === undefined) throw new KmsError('KeyNotFound', 'The key does not exist.');
  return ref;
}

export const keyArn = (key: KeyRecord, caller: Caller) => `acs:kms:${caller.region}:${key.projectId}:key/${key.id}`;

/** `name` with its `alias/` prefix. */
export const aliasArn = (name: string, caller: Caller) => `acs:kms:${caller.region}:${caller.projectId}:${name}`;

/**
 * Alibaba names key versions by id (KeyVersionId, PrimaryKeyVersion); ours are numbers. The id is derived from the
 * key id and the number, so it is stable across restarts and processes without being stored.
 */
export function keyVersionId(keyId: string, version: number): string {
  const hex = createHash('sha256').update(`hsm-kms key version\0${keyId}\0${version}`).digest('hex');
  // UUID layout with version 8 (custom) and the RFC 9562 variant bits.
  const variant = ((Number.parseInt(hex[16] as string, 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** Alibaba's dates: ISO 8601 UTC to the second, `2026-01-01T12:00:00Z`. */
export const isoDate = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export const DAY_SECONDS = 86_400;

/**
 * DescribeKey's KeyMetadata. Keys are symmetric AES-256 kept in an HSM. ProtectionLevel is HSM for every key:
 * Alibaba gives default keys HSM where a managed HSM serves the region, as the default HSM does here, and a hardware
 * instance's keys HSM. DKMSInstanceId names the KMS instance (key store) of a key made in one, and is absent for
 * default keys, as Alibaba leaves it.
 */
export function keyMetadata(key: KeyRecord, caller: Caller) {
  return {
    KeyId: key.id,
    Arn: keyArn(key, caller),
    Creator: key.projectId,
    ...(key.keyStoreId !== null ? { DKMSInstanceId: key.keyStoreId } : {}),
    CreationDate: isoDate(key.createdAt),
    Description: key.description,
    KeyState: key.state,
    KeyUsage: 'ENCRYPT/DECRYPT',
    KeySpec: 'Aliyun_AES_256',
    Origin: 'Aliyun_KMS',
    ProtectionLevel: 'HSM',
    ...rotationMetadata(key),
    MaterialExpireTime: '',
    DeletionProtection: 'Disabled',
    ...(key.deletionDate !== null ? { DeleteDate: isoDate(key.deletionDate) } : {}),
  };
}

/**
 * The rotation fields of KeyMetadata. AutomaticRotation is Suspended while a key with a period is not Enabled:
 * Alibaba stops its rotation then and resumes it once the key is enabled again, as the sweep here rotates Enabled
 * keys only. RotationInterval (in seconds, `604800s`) and NextRotationDate are there while it is Enabled or
 * Suspended; LastRotationDate is the key's creation until its first rotation, as Alibaba documents them.
 */
function rotationMetadata(key: KeyRecord) {
  const period = key.rotationPeriodDays;
  return {
    PrimaryKeyVersion: keyVersionId(key.id, key.currentVersion),
    LastRotationDate: isoDate(key.lastRotatedAt ?? key.createdAt),
    AutomaticRotation: period === null ? 'Disabled' : key.state === 'Enabled' ? 'Enabled' : 'Suspended',
    ...(period === null ? {} : { RotationInterval: `${period * DAY_SECONDS}s` }),
    ...(period === null || key.nextRotationAt === null ? {} : { NextRotationDate: isoDate(key.nextRotationAt) }),
  };
}
