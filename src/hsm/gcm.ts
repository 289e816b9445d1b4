import type pkcs11js from 'pkcs11js';
import { KmsError } from '../core/errors.js';
import type { GcmSealed } from '../core/ports.js';
import type { HsmProfile } from './hsm-profiles.js';
import { GCM_IV_BYTES, GCM_TAG_BYTES, gcmMechanism } from './key-templates.js';
import { pkcs11Async } from './pkcs11-async.js';
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
  const { iv, out } = beginGcmEncrypt(lib, session, profile, key, plaintext, aad, drawIv);
  let ciphertextWithTag: Buffer;
  try {
    ciphertextWithTag = lib.C_Encrypt(session, plaintext, out);
  } catch (err) {
    throw toKmsError(err, 'C_Encrypt');
  }
  return sealedWith(profile, iv, ciphertextWithTag);
}

/**
 * gcmEncrypt with C_Encrypt made through pkcs11js's callback variant (C_EncryptInit has none and stays synchronous).
 * The session stays busy until the module answers; `iv`, which a module-writes-piv module fills in at C_Encrypt,
 * and `plaintext` stay referenced until then.
 */
export async function gcmEncryptAsync(
  lib: pkcs11js.PKCS11,
  session: Handle,
  profile: HsmProfile,
  key: Handle,
  plaintext: Buffer,
  aad: Buffer,
  drawIv: (iv: Buffer) => void,
): Promise<GcmSealed> {
  const { iv, out } = beginGcmEncrypt(lib, session, profile, key, plaintext, aad, drawIv);
  let ciphertextWithTag: Buffer;
  try {
    ciphertextWithTag = await pkcs11Async<Buffer>((done) => lib.C_Encrypt(session, plaintext, out, done));
  } catch (err) {
    throw toKmsError(err, 'C_Encrypt');
  }
  return sealedWith(profile, iv, ciphertextWithTag);
}

/** Checks the length, makes the IV as the profile says and starts the operation: what is left is one C_Encrypt. */
function beginGcmEncrypt(
  lib: pkcs11js.PKCS11,
  session: Handle,
  profile: HsmProfile,
  key: Handle,
  plaintext: Buffer,
  aad: Buffer,
  drawIv: (iv: Buffer) => void,
): { iv: Buffer; out: Buffer } {
  checkGcmPlaintextLength(profile, plaintext.length);
  const iv = Buffer.alloc(GCM_IV_BYTES);
  let fn = 'C_GenerateRandom';
  try {
    if (profile.ivMode === 'host-random') drawIv(iv);
    fn = 'C_EncryptInit';
    lib.C_EncryptInit(session, gcmMechanism(iv, aad), key);
  } catch (err) {
    throw toKmsError(err, fn);
  }
  return { iv, out: Buffer.alloc(plaintext.length + GCM_TAG_BYTES) };
}

function sealedWith(profile: HsmProfile, iv: Buffer, ciphertextWithTag: Buffer): GcmSealed {
  // A module that leaves the IV zero did not make one: every message would then share it, so refuse the result.
  if (iv.every((byte) => byte === 0)) {
    throw new KmsError('InternalError', `The module returned no GCM IV (profile ${profile.name}: ${profile.ivMode}).`);
  }
  return { iv, ciphertextWithTag };
}
