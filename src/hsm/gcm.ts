import type pkcs11js from 'pkcs11js';
import { KmsError } from '../core/errors.js';
import type { GcmSealed } from '../core/ports.js';
import type { HsmProfile } from './hsm-profiles.js';
import { GCM_IV_BYTES, GCM_TAG_BYTES, gcmMechanism } from './key-templates.js';
import { toKmsError } from './pkcs11-errors.js';

type Handle = Buffer;

/** Refuses more plaintext than one C_Encrypt with AES-GCM may carry on the module (HsmProfile.gcmMaxBytesPerCall). */
export function checkGcmPlaintextLength(profile: HsmProfile, bytes: number): void {
  if (bytes > profile.gcmMaxBytesPerCall) {
    throw new KmsError('InvalidParameter', `At most ${profile.gcmMaxBytesPerCall} bytes can be encrypted at once.`);
  }
}

/**
 * AES-256-GCM encryption with the IV made as the profile says:
 * - `host-random`: 96 bits from the module's own C_GenerateRandom, passed in (SoftHSM, NSS), drawn by `drawIv` (the
 *   adapter's health-tested draw). Random IVs stay unique per key version across processes without coordination
 *   (SP 800-38D §8.2.2).
 * - `module-writes-piv`: a zeroed 12-byte pIv that the module fills in at C_Encrypt (CloudHSM's CKM_AES_GCM,
 *   kmsp11). pkcs11js hands the Buffer's own memory to the module, so the IV is read back from it afterwards.
 */
export function gcmEncrypt(
  lib: pkcs11js.PKCS11,
  session: Handle,
  profile: HsmProfile,
  key: Handle,
  plaintext: Buffer,
  aad: Buffer,
  drawIv: (iv: Buffer) => void,
): GcmSealed {
  checkGcmPlaintextLength(profile, plaintext.length);
  const iv = Buffer.alloc(GCM_IV_BYTES);
  let fn = 'C_GenerateRandom';
  let ciphertextWithTag: Buffer;
  try {
    if (profile.ivMode === 'host-random') drawIv(iv);
    fn = 'C_EncryptInit';
    lib.C_EncryptInit(session, gcmMechanism(iv, aad), key);
    fn = 'C_Encrypt';
    ciphertextWithTag = lib.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + GCM_TAG_BYTES));
  } catch (err) {
    throw toKmsError(err, fn);
  }
  // A module that leaves the IV zero did not make one: every message would then share it, so refuse the result.
  if (iv.every((byte) => byte === 0)) {
    throw new KmsError('InternalError', `The module returned no GCM IV (profile ${profile.name}: ${profile.ivMode}).`);
  }
  return { iv, ciphertextWithTag };
}
