import pkcs11js from 'pkcs11js';

/**
 * What differs between PKCS#11 modules, as data: one record per module family, chosen once at start-up (from
 * C_GetInfo, or by KMS_HSM_PROFILE) and read by the adapter, which never asks which vendor it is on. Each value
 * names where it comes from; docs/hsm-profiles.md has the full table with sources.
 */

/** How an AES-GCM IV is made: drawn by the adapter with C_GenerateRandom and passed in, or written by the module. */
export type IvMode = 'host-random' | 'module-writes-piv';

export const PROFILE_NAMES = ['softhsm2', 'nss', 'cloudhsm', 'generic'] as const;
export type ProfileName = (typeof PROFILE_NAMES)[number];

export interface HsmProfile {
  readonly name: ProfileName;
  /** The mechanism number that does RFC 5649 on this module: modules disagree (SoftHSM issue #726). */
  readonly kwpMechanism: number;
  /** Whether the module offers the legacy scheme's CKM_AES_CBC_ENCRYPT_DATA derivation. */
  readonly derivesCbcEncryptData: boolean;
  readonly ivMode: IvMode;
  /** Most plaintext (or ciphertext, tag excluded) one C_Encrypt / C_Decrypt with AES-GCM may carry. */
  readonly gcmMaxBytesPerCall: number;
  /** Most bytes one C_GenerateRandom may ask for; larger draws are split. */
  readonly randomBytesPerCall: number;
  /** Whether key templates may say CKA_MODIFIABLE=false (CloudHSM accepts only the default, true). */
  readonly templatesMayFreeze: boolean;
  /** The codes C_Decrypt returns for an AES-GCM tag that does not verify: an invalid ciphertext, not a fault. */
  readonly tagFailureCodes: readonly number[];
  /**
   * Most CMK version keys one process keeps unwrapped as session objects at once (KMS_KEY_CACHE_SIZE is capped at
   * this). Per process: with KMS_WORKERS=n the service holds up to n times as many.
   */
  readonly sessionKeyBudget: number;
  /**
   * Whether the hot-path calls (GCM C_Encrypt / C_Decrypt, the credential C_Sign) go through pkcs11js's callback
   * variants by default (KMS_HSM_ASYNC_CALLS overrides): worth it where each call is a network round trip; slower
   * than a direct call for a library that answers in microseconds (docs/performance.md).
   */
  readonly asyncCalls: boolean;
  /** For operators: what the module needs in C_Initialize and in the PIN (never read by code). */
  readonly notes: string;
}

/** What C_GetInfo says about the module: the only input to the automatic choice. */
export interface ModuleInfo {
  readonly manufacturerId: string;
  readonly libraryDescription: string;
}

/** CKM_VENDOR_DEFINED | 0x216F: CloudHSM Client SDK 5's RFC 5649 ("AES key wrap with zero padding"). */
export const CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD = 0x8000216f;
/**
 * The two standard numbers modules use for RFC 5649: v2.40's CKM_AES_KEY_WRAP_PAD, which v2.40 left loosely defined
 * (SoftHSM does RFC 5649 under it, NSS PKCS#7 padding + RFC 3394), and v3.0's CKM_AES_KEY_WRAP_KWP.
 */
export const CKM_AES_KEY_WRAP_PAD = 0x210a;
export const CKM_AES_KEY_WRAP_KWP = 0x210b;

const STANDARD_TAG_FAILURES = [pkcs11js.CKR_ENCRYPTED_DATA_INVALID, pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE];

export const HSM_PROFILES: Readonly<Record<ProfileName, HsmProfile>> = {
  /** SoftHSM 2.6.1, tested here. */
  softhsm2: {
    name: 'softhsm2',
    kwpMechanism: CKM_AES_KEY_WRAP_PAD,
    derivesCbcEncryptData: true,
    ivMode: 'host-random',
    gcmMaxBytesPerCall: 1024 * 1024,
    randomBytesPerCall: 1024 * 1024,
    templatesMayFreeze: true,
    // A bad tag is CKR_GENERAL_ERROR here: on any other module that code is a device fault.
    tagFailureCodes: [pkcs11js.CKR_GENERAL_ERROR, ...STANDARD_TAG_FAILURES],
    sessionKeyBudget: 100_000,
    asyncCalls: false,
    notes: 'SOFTHSM2_CONF names the token directory; no library parameters.',
  },
  /** NSS softokn 3.87 (Debian libnss3), tested here. */
  nss: {
    name: 'nss',
    kwpMechanism: CKM_AES_KEY_WRAP_KWP,
    derivesCbcEncryptData: true,
    ivMode: 'host-random',
    gcmMaxBytesPerCall: 1024 * 1024,
    // C_GenerateRandom of more than 64 KiB answers CKR_ARGUMENTS_BAD.
    randomBytesPerCall: 64 * 1024,
    templatesMayFreeze: true,
    tagFailureCodes: STANDARD_TAG_FAILURES,
    sessionKeyBudget: 100_000,
    asyncCalls: false,
    notes:
      "C_Initialize needs KMS_PKCS11_INIT_PARAMS=\"configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='' flags=\".",
  },
  /**
   * AWS CloudHSM Client SDK 5, from its documentation; tested here only through test/support/cloudhsm-shim (its
   * rules over SoftHSM): the module writes the GCM IV into a zeroed pIv, GCM carries at most 16 KB per call, no
   * CKM_AES_CBC_ENCRYPT_DATA, CKA_MODIFIABLE only at its default, read-write sessions only.
   */
  cloudhsm: {
    name: 'cloudhsm',
    kwpMechanism: CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
    derivesCbcEncryptData: false,
    ivMode: 'module-writes-piv',
    // The SDK 5 mechanism table's figure for CKM_AES_GCM; its known-issues page rounds it to "16 KB".
    gcmMaxBytesPerCall: 16_224,
    randomBytesPerCall: 64 * 1024,
    templatesMayFreeze: false,
    tagFailureCodes: STANDARD_TAG_FAILURES,
    // 3,300 keys per hsm1.medium cluster, token keys and other applications' keys included, and session keys live
    // on one HSM of the cluster: 500 per process leaves room for a few workers.
    sessionKeyBudget: 500,
    // Every call is a round trip to the cluster: made synchronously, one slow answer would stall every request.
    asyncCalls: true,
    notes: 'The PIN is "<crypto user>:<password>".',
  },
  /** Any other module: PKCS#11 v3.0's number for RFC 5649 and the standard codes, nothing else assumed. */
  generic: {
    name: 'generic',
    kwpMechanism: CKM_AES_KEY_WRAP_KWP,
    derivesCbcEncryptData: false,
    ivMode: 'host-random',
    gcmMaxBytesPerCall: 16 * 1024,
    randomBytesPerCall: 1024,
    templatesMayFreeze: true,
    tagFailureCodes: STANDARD_TAG_FAILURES,
    sessionKeyBudget: 1_000,
    asyncCalls: false,
    notes: 'Set KMS_PKCS11_INIT_PARAMS if the module needs library parameters.',
  },
};

/** The profile KMS_HSM_PROFILE names, or the one C_GetInfo points to ('generic' for a module we do not know). */
export function chooseProfile(info: ModuleInfo, requested: ProfileName | undefined): HsmProfile {
  if (requested !== undefined) return HSM_PROFILES[requested];
  const said = `${info.manufacturerId} ${info.libraryDescription}`.toLowerCase();
  // CloudHSM first: the test shim that models it says it runs over SoftHSM.
  if (said.includes('cloudhsm') || said.includes('amazon')) return HSM_PROFILES.cloudhsm;
  if (said.includes('softhsm')) return HSM_PROFILES.softhsm2;
  if (said.includes('mozilla') || said.includes('nss')) return HSM_PROFILES.nss;
  return HSM_PROFILES.generic;
}
