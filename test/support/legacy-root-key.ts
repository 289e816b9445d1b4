import pkcs11js from 'pkcs11js';
import { LEGACY_ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';

/**
 * The derive-only root key of the legacy scheme cbc-encrypt-data-v1, made as releases before the wrapped scheme
 * made it at open: a token AES-256 key that can only derive (CKM_AES_CBC_ENCRYPT_DATA). The adapter no longer
 * creates it, so tests (and benchmarks) that need a previous release's token make it through the raw library.
 */
export function makeLegacyRootKey(lib: pkcs11js.PKCS11, session: Buffer, label = LEGACY_ROOT_KEY_LABEL): Buffer {
  return lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_MODIFIABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_DERIVE, value: true },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
  ]);
}
