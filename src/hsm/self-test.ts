import pkcs11js from 'pkcs11js';
import { KmsError } from '../core/errors.js';
import { gcmEncrypt } from './gcm.js';
import type { HsmProfile } from './hsm-profiles.js';
import {
  AES_KEY_GEN_MECHANISM,
  asSessionObject,
  credentialKeyTemplate,
  gcmMechanism,
  HMAC_SHA256_MECHANISM,
  kwpMechanism,
  newVersionKeyTemplate,
  rootWrappingKeyTemplate,
  versionKeyTemplate,
  WRAPPED_AES_256_BYTES,
} from './key-templates.js';
import { ckrName, ckrOf } from './pkcs11-errors.js';

type Handle = Buffer;

/**
 * What the service needs of a module, tried once at start-up with throwaway session objects, so that a module that
 * cannot serve is refused before it is trusted with a key (rather than at the first create-key, with an HTTP 500).
 * Each step names the capability it proves; the first that fails is named in the refusal.
 */
export function runSelfTest(lib: pkcs11js.PKCS11, session: Handle, profile: HsmProfile, library: string): void {
  const made: Handle[] = [];
  const step = <T>(capability: string, call: () => T): T => {
    try {
      return call();
    } catch (err) {
      const code = ckrOf(err);
      const why = code === undefined ? (err instanceof Error ? err.message : String(err)) : ckrName(code);
      throw new KmsError(
        'HsmUnavailable',
        `Refusing to start: the PKCS#11 module ${library} (profile ${profile.name}) cannot do ${capability}: ${why}. ` +
          'See docs/hsm-profiles.md; KMS_HSM_PROFILE chooses another profile.',
        { cause: err },
      );
    }
  };
  const keep = (handle: Handle): Handle => {
    made.push(handle);
    return handle;
  };
  try {
    step('random numbers (C_GenerateRandom)', () => lib.C_GenerateRandom(session, Buffer.alloc(32)));
    // Session stand-ins for the root and credential keys, which the self-test never touches.
    const wrapping = step('AES-256 key generation (CKM_AES_KEY_GEN) of a wrapping key', () =>
      keep(
        lib.C_GenerateKey(
          session,
          AES_KEY_GEN_MECHANISM,
          asSessionObject(rootWrappingKeyTemplate('hsm-kms-self-test', profile)),
        ),
      ),
    );
    const fresh = step('AES-256 key generation (CKM_AES_KEY_GEN) of an extractable session key', () =>
      keep(lib.C_GenerateKey(session, AES_KEY_GEN_MECHANISM, newVersionKeyTemplate('self-test', 0, false))),
    );
    const mechanism = `RFC 5649 key wrap (mechanism 0x${profile.kwpMechanism.toString(16)})`;
    const wrapped = step(mechanism, () => {
      const room = Buffer.alloc(2 * WRAPPED_AES_256_BYTES);
      const out = lib.C_WrapKey(session, kwpMechanism(profile.kwpMechanism), wrapping, fresh, room);
      if (out.length !== WRAPPED_AES_256_BYTES) {
        throw new Error(`it gave ${out.length} bytes, not ${WRAPPED_AES_256_BYTES}`);
      }
      return out;
    });
    const usable = step(`${mechanism} unwrap into a non-extractable key`, () =>
      keep(
        lib.C_UnwrapKey(
          session,
          kwpMechanism(profile.kwpMechanism),
          wrapping,
          wrapped,
          versionKeyTemplate('self-test', 0, true),
        ),
      ),
    );
    const gcm = `AES-GCM (CKM_AES_GCM, IV mode ${profile.ivMode})`;
    const plaintext = Buffer.from('hsm-kms self-test');
    const aad = Buffer.from('aad');
    const sealed = step(gcm, () =>
      gcmEncrypt(lib, session, profile, usable, plaintext, aad, (iv) => lib.C_GenerateRandom(session, iv)),
    );
    step(`${gcm} decryption`, () => {
      lib.C_DecryptInit(session, gcmMechanism(sealed.iv, aad), usable);
      const opened = lib.C_Decrypt(session, sealed.ciphertextWithTag, Buffer.alloc(sealed.ciphertextWithTag.length));
      if (!opened.equals(plaintext)) throw new Error('the round trip gave other bytes');
    });
    step(`${gcm} tag check (a failure must be one of ${profile.tagFailureCodes.map(ckrName).join(', ')})`, () => {
      const tampered = Buffer.from(sealed.ciphertextWithTag);
      tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 1;
      lib.C_DecryptInit(session, gcmMechanism(sealed.iv, aad), usable);
      try {
        lib.C_Decrypt(session, tampered, Buffer.alloc(tampered.length));
      } catch (err) {
        const code = ckrOf(err);
        if (code !== undefined && profile.tagFailureCodes.includes(code)) return;
        throw err;
      }
      throw new Error('a tampered tag decrypted');
    });
    const hmacKey = step('generic secret key generation (CKM_GENERIC_SECRET_KEY_GEN)', () =>
      keep(
        lib.C_GenerateKey(
          session,
          { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN },
          asSessionObject(credentialKeyTemplate('hsm-kms-self-test', profile)),
        ),
      ),
    );
    step('HMAC-SHA256 (CKM_SHA256_HMAC)', () => {
      lib.C_SignInit(session, HMAC_SHA256_MECHANISM, hmacKey);
      lib.C_Sign(session, plaintext, Buffer.alloc(32));
    });
  } finally {
    for (const handle of made) {
      try {
        lib.C_DestroyObject(session, handle);
      } catch {
        // A session object: it goes with the session anyway.
      }
    }
  }
}
