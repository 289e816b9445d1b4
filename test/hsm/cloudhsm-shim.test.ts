import { execFile } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCloudHsmShim } from '../support/cloudhsm-shim.js';
import { type CloudHsmShimTestToken, createTestToken, removeTestToken } from '../support/softhsm.js';
import { ckrThrownBy } from './hsm-fixtures.js';

/**
 * The CloudHSM-rules shim (test/support/cloudhsm-shim/cloudhsm-shim.c) driven with raw pkcs11js, one rule per test.
 * SoftHSM underneath would accept everything refused here, so each test fails when its rule is taken out of the shim.
 */

const CKM_AES_ECB_ENCRYPT_DATA = 0x1104;
const CKM_AES_CBC_ENCRYPT_DATA = 0x1105;
const CKM_AES_KEY_WRAP_PAD = 0x210a;
const CKM_AES_KEY_WRAP_KWP = 0x210b;
const CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD = 0x8000216f;
const GCM_MAX_DATA_BYTES = 16384;

let token: CloudHsmShimTestToken;
let lib: pkcs11js.PKCS11;
let slot: pkcs11js.Handle;
let session: pkcs11js.Handle;
/** AES-256 token key with a value the test knows, so node:crypto can check what the module did with it. */
const knownKeyValue = randomBytes(32);
let knownKey: pkcs11js.Handle;

beforeAll(() => {
  token = createTestToken('cloudhsm-shim');
  lib = new pkcs11js.PKCS11();
  lib.load(token.library);
  lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const found = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === token.tokenLabel);
  if (found === undefined) throw new Error(`no token labelled ${token.tokenLabel} behind the shim`);
  slot = found;
  session = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
  lib.C_Login(session, pkcs11js.CKU_USER, token.pin);
  knownKey = importAesKey(knownKeyValue, [
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_WRAP, value: true },
    { type: pkcs11js.CKA_UNWRAP, value: true },
  ]);
});

afterAll(() => {
  lib?.C_Finalize();
  if (token) removeTestToken(token.dir);
});

function importAesKey(value: Buffer, usage: pkcs11js.Template, extra: pkcs11js.Template = []): pkcs11js.Handle {
  return lib.C_CreateObject(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_VALUE, value },
    ...usage,
    ...extra,
  ]);
}

function generateAesKey(extra: pkcs11js.Template = []): pkcs11js.Handle {
  return lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    ...extra,
  ]);
}

function readAttribute(object: pkcs11js.Handle, type: number): Buffer {
  const [attribute] = lib.C_GetAttributeValue(session, object, [{ type }]);
  return attribute?.value as Buffer;
}

function gcm(iv: Buffer, aad = Buffer.alloc(0)): pkcs11js.Mechanism {
  const parameter: pkcs11js.GcmParams = { type: pkcs11js.CK_PARAMS_GCM, iv, aad, ivBits: 96, tagBits: 128 };
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}

/** Encrypts under the shim's rules: a zeroed 12-byte pIv that the module fills at C_Encrypt. */
function encrypt(key: pkcs11js.Handle, plaintext: Buffer, aad = Buffer.alloc(0)) {
  const iv = Buffer.alloc(12);
  lib.C_EncryptInit(session, gcm(iv, aad), key);
  const ciphertext = lib.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + 16));
  return { iv, ciphertext };
}

function decrypt(key: pkcs11js.Handle, iv: Buffer, ciphertext: Buffer, aad = Buffer.alloc(0)): Buffer {
  lib.C_DecryptInit(session, gcm(iv, aad), key);
  return lib.C_Decrypt(session, ciphertext, Buffer.alloc(ciphertext.length));
}

describe('the module', () => {
  it('when C_GetInfo is called, then it names the shim in blank-padded 32-byte fields', () => {
    const info = lib.C_GetInfo();
    expect(info.manufacturerID).toBe('hsm-kms test shim'.padEnd(32));
    expect(info.libraryDescription).toBe('CloudHSM rules over SoftHSM'.padEnd(32));
  });

  it('when a read-only session is opened, then it fails with CKR_FUNCTION_FAILED, as CloudHSM SDK 5 does', () => {
    expect(ckrThrownBy(() => lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION))).toBe(pkcs11js.CKR_FUNCTION_FAILED);
    const rw = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
    lib.C_CloseSession(rw);
  });

  it('when the mechanisms are listed, then what CloudHSM lacks is hidden and its zero-pad key wrap is shown', () => {
    const mechanisms = lib.C_GetMechanismList(slot);
    expect(mechanisms).toContain(pkcs11js.CKM_AES_GCM);
    expect(mechanisms).toContain(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD);
    for (const refused of [
      CKM_AES_CBC_ENCRYPT_DATA,
      CKM_AES_ECB_ENCRYPT_DATA,
      CKM_AES_KEY_WRAP_PAD,
      CKM_AES_KEY_WRAP_KWP,
    ]) {
      expect(mechanisms).not.toContain(refused);
      expect(ckrThrownBy(() => lib.C_GetMechanismInfo(slot, refused))).toBe(pkcs11js.CKR_MECHANISM_INVALID);
    }
    const zeroPad = lib.C_GetMechanismInfo(slot, CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD);
    expect(zeroPad.flags & pkcs11js.CKF_WRAP).toBe(pkcs11js.CKF_WRAP);
  });
});

describe('AES-GCM', () => {
  it('when C_Encrypt runs, then the zeroed pIv holds a fresh random IV that decrypts, in the module and in node:crypto', () => {
    const plaintext = Buffer.from('the quick brown fox jumps over the lazy dog');
    const aad = Buffer.from('encryption context');
    const first = encrypt(knownKey, plaintext, aad);
    const second = encrypt(knownKey, plaintext, aad);
    expect(first.iv.length).toBe(12);
    expect(first.iv.equals(Buffer.alloc(12))).toBe(false);
    expect(first.iv.equals(second.iv)).toBe(false);
    expect(first.ciphertext.equals(second.ciphertext)).toBe(false);

    expect(decrypt(knownKey, first.iv, first.ciphertext, aad).equals(plaintext)).toBe(true);
    const decipher = createDecipheriv('aes-256-gcm', knownKeyValue, first.iv);
    decipher.setAAD(aad);
    decipher.setAuthTag(first.ciphertext.subarray(plaintext.length));
    const fromNode = Buffer.concat([decipher.update(first.ciphertext.subarray(0, plaintext.length)), decipher.final()]);
    expect(fromNode.equals(plaintext)).toBe(true);
  });

  it('when the output buffer is too small, then the IV is not handed out until the C_Encrypt that succeeds', () => {
    const plaintext = Buffer.from('sixteen bytes!!!');
    const iv = Buffer.alloc(12);
    lib.C_EncryptInit(session, gcm(iv), knownKey);
    expect(ckrThrownBy(() => lib.C_Encrypt(session, plaintext, Buffer.alloc(8)))).toBe(pkcs11js.CKR_BUFFER_TOO_SMALL);
    expect(iv.equals(Buffer.alloc(12))).toBe(true);
    const ciphertext = lib.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + 16));
    expect(iv.equals(Buffer.alloc(12))).toBe(false);
    expect(decrypt(knownKey, iv, ciphertext).equals(plaintext)).toBe(true);
  });

  it('when pIv is not 12 zero bytes, then C_EncryptInit fails with CKR_MECHANISM_PARAM_INVALID', () => {
    const nonZero = Buffer.alloc(12);
    nonZero[11] = 1;
    for (const iv of [nonZero, randomBytes(12), Buffer.alloc(16)]) {
      expect(ckrThrownBy(() => lib.C_EncryptInit(session, gcm(iv), knownKey))).toBe(
        pkcs11js.CKR_MECHANISM_PARAM_INVALID,
      );
    }
    // No operation was left behind.
    expect(encrypt(knownKey, Buffer.from('x')).ciphertext.length).toBe(17);
  });

  it('when a GCM call carries more than 16 KB of data, then it fails with CKR_DATA_LEN_RANGE and ends the operation', () => {
    const largest = randomBytes(GCM_MAX_DATA_BYTES);
    const { iv, ciphertext } = encrypt(knownKey, largest);
    expect(ciphertext.length).toBe(GCM_MAX_DATA_BYTES + 16);
    expect(decrypt(knownKey, iv, ciphertext).equals(largest)).toBe(true);

    const tooLarge = randomBytes(GCM_MAX_DATA_BYTES + 1);
    const unused = Buffer.alloc(12);
    lib.C_EncryptInit(session, gcm(unused), knownKey);
    expect(ckrThrownBy(() => lib.C_Encrypt(session, tooLarge, Buffer.alloc(tooLarge.length + 16)))).toBe(
      pkcs11js.CKR_DATA_LEN_RANGE,
    );
    expect(unused.equals(Buffer.alloc(12))).toBe(true);
    // SoftHSM itself encrypts this much; the ciphertext is only something of the right length to decrypt.
    const longCiphertext = Buffer.concat([ciphertext, Buffer.alloc(1)]);
    lib.C_DecryptInit(session, gcm(iv), knownKey);
    expect(ckrThrownBy(() => lib.C_Decrypt(session, longCiphertext, Buffer.alloc(longCiphertext.length)))).toBe(
      pkcs11js.CKR_DATA_LEN_RANGE,
    );
    // Both operations ended: new ones start without CKR_OPERATION_ACTIVE.
    const again = encrypt(knownKey, Buffer.from('again'));
    expect(decrypt(knownKey, again.iv, again.ciphertext).toString()).toBe('again');
  });

  it('when GCM is used multi-part, then C_EncryptUpdate and C_DecryptUpdate fail with CKR_FUNCTION_NOT_SUPPORTED', () => {
    lib.C_EncryptInit(session, gcm(Buffer.alloc(12)), knownKey);
    expect(ckrThrownBy(() => lib.C_EncryptUpdate(session, Buffer.alloc(16), Buffer.alloc(32)))).toBe(
      pkcs11js.CKR_FUNCTION_NOT_SUPPORTED,
    );
    const { iv, ciphertext } = encrypt(knownKey, Buffer.from('single part'));
    lib.C_DecryptInit(session, gcm(iv), knownKey);
    expect(ckrThrownBy(() => lib.C_DecryptUpdate(session, ciphertext, Buffer.alloc(ciphertext.length)))).toBe(
      pkcs11js.CKR_FUNCTION_NOT_SUPPORTED,
    );
    expect(decrypt(knownKey, iv, ciphertext).toString()).toBe('single part');
  });

  it('when several sessions have a GCM encryption pending and finish on several threads, then each gets its own IV', async () => {
    const pending = Array.from({ length: 8 }, (_, i) => {
      const session = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
      const iv = Buffer.alloc(12);
      lib.C_EncryptInit(session, gcm(iv), knownKey);
      return { session, iv, plaintext: Buffer.from(`message ${i}`) };
    });
    // Every operation is initialised before any finishes; the async C_Encrypt runs on libuv's thread pool.
    const ciphertexts = await Promise.all(
      pending.map(
        ({ session, plaintext }) =>
          new Promise<Buffer>((resolve, reject) =>
            lib.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + 16), (err, ciphertext) =>
              err ? reject(err) : resolve(ciphertext),
            ),
          ),
      ),
    );
    for (const { session } of pending) lib.C_CloseSession(session);
    expect(new Set(pending.map(({ iv }) => iv.toString('hex'))).size).toBe(pending.length);
    pending.forEach(({ iv, plaintext }, i) => {
      expect(decrypt(knownKey, iv, ciphertexts[i] as Buffer).equals(plaintext)).toBe(true);
    });
  });
});

describe('key derivation', () => {
  it('when C_DeriveKey asks for CKM_AES_CBC_ENCRYPT_DATA, then it fails with CKR_MECHANISM_INVALID', () => {
    const root = generateAesKey([{ type: pkcs11js.CKA_DERIVE, value: true }]);
    const mechanism = {
      mechanism: CKM_AES_CBC_ENCRYPT_DATA,
      parameter: { type: pkcs11js.CK_PARAMS_AES_CBC, iv: Buffer.alloc(16), data: randomBytes(32) },
    };
    const template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
      { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    ];
    expect(ckrThrownBy(() => lib.C_DeriveKey(session, mechanism, root, template))).toBe(pkcs11js.CKR_MECHANISM_INVALID);
  });
});

describe('CKA_MODIFIABLE', () => {
  const modifiable = (value: boolean) => [{ type: pkcs11js.CKA_MODIFIABLE, value }];

  it('when a template sets it to false, then the call fails with CKR_ATTRIBUTE_VALUE_INVALID', () => {
    expect(ckrThrownBy(() => generateAesKey(modifiable(false)))).toBe(pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID);
    expect(ckrThrownBy(() => importAesKey(randomBytes(32), [], modifiable(false)))).toBe(
      pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
    );
    const key = generateAesKey();
    expect(ckrThrownBy(() => lib.C_CopyObject(session, key, modifiable(false)))).toBe(
      pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
    );
    expect(ckrThrownBy(() => lib.C_SetAttributeValue(session, key, modifiable(false)))).toBe(
      pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID,
    );
  });

  it('when a template sets it to true or leaves it out, then the key is made', () => {
    for (const key of [generateAesKey(modifiable(true)), generateAesKey()]) {
      expect(readAttribute(key, pkcs11js.CKA_MODIFIABLE)).toEqual(Buffer.from([1]));
    }
  });
});

describe('key wrap', () => {
  const kekValue = randomBytes(32);
  let kek: pkcs11js.Handle;
  const exportable = (value: Buffer) =>
    importAesKey(
      value,
      [{ type: pkcs11js.CKA_ENCRYPT, value: true }],
      [
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: false },
      ],
    );
  const unwrapTemplate: pkcs11js.Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: false },
    { type: pkcs11js.CKA_EXTRACTABLE, value: true },
  ];

  const wrapZeroPad = (key: pkcs11js.Handle) =>
    lib.C_WrapKey(session, { mechanism: CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD }, kek, key, Buffer.alloc(64));

  beforeAll(() => {
    kek = importAesKey(kekValue, [
      { type: pkcs11js.CKA_WRAP, value: true },
      { type: pkcs11js.CKA_UNWRAP, value: true },
    ]);
  });

  it('when an AES-256 key is wrapped with CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, then it is the RFC 5649 wrap, and unwraps', () => {
    const keyValue = randomBytes(32);
    const wrapped = wrapZeroPad(exportable(keyValue));
    const cipher = createCipheriv('id-aes256-wrap-pad', kekValue, Buffer.from('a65959a6', 'hex'));
    const expected = Buffer.concat([cipher.update(keyValue), cipher.final()]);
    expect(wrapped.length).toBe(40);
    expect(wrapped.toString('hex')).toBe(expected.toString('hex'));

    const unwrapped = lib.C_UnwrapKey(
      session,
      { mechanism: CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD },
      kek,
      wrapped,
      unwrapTemplate,
    );
    expect(readAttribute(unwrapped, pkcs11js.CKA_VALUE).equals(keyValue)).toBe(true);
  });

  it('when the standard CKM_AES_KEY_WRAP_PAD or _KWP is asked for, then wrap and unwrap fail with CKR_MECHANISM_INVALID', () => {
    const key = exportable(randomBytes(32));
    const wrapped = wrapZeroPad(key);
    for (const mechanism of [CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP]) {
      expect(ckrThrownBy(() => lib.C_WrapKey(session, { mechanism }, kek, key, Buffer.alloc(64)))).toBe(
        pkcs11js.CKR_MECHANISM_INVALID,
      );
      expect(ckrThrownBy(() => lib.C_UnwrapKey(session, { mechanism }, kek, wrapped, unwrapTemplate))).toBe(
        pkcs11js.CKR_MECHANISM_INVALID,
      );
    }
  });

  it('when an unwrap template sets CKA_MODIFIABLE to false, then it fails with CKR_ATTRIBUTE_VALUE_INVALID', () => {
    const key = exportable(randomBytes(32));
    const wrapped = wrapZeroPad(key);
    const template = [...unwrapTemplate, { type: pkcs11js.CKA_MODIFIABLE, value: false }];
    expect(
      ckrThrownBy(() =>
        lib.C_UnwrapKey(session, { mechanism: CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD }, kek, wrapped, template),
      ),
    ).toBe(pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID);
  });
});

/**
 * HSM_KMS_SHIM_HIDE is read at C_Initialize, which is once per process here, so a child process loads the shim
 * with it set and reports what it saw.
 */
const HIDE_SCRIPT = `
const pkcs11js = require(process.env.SHIM_PKCS11JS);
const lib = new pkcs11js.PKCS11();
lib.load(process.env.SHIM_LIBRARY);
lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === process.env.SHIM_LABEL);
const session = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
const other = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
lib.C_Login(session, pkcs11js.CKU_USER, process.env.SHIM_PIN);
const key = lib.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
  { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
  { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
  { type: pkcs11js.CKA_TOKEN, value: false },
  { type: pkcs11js.CKA_ENCRYPT, value: true },
  { type: pkcs11js.CKA_DECRYPT, value: true },
]);
const gcm = (iv) => ({ mechanism: pkcs11js.CKM_AES_GCM, parameter: { type: pkcs11js.CK_PARAMS_GCM, iv, ivBits: 96, tagBits: 128 } });
const codeOf = (call) => { try { call(); return 0; } catch (err) { return err.code; } };
process.stdout.write(JSON.stringify({
  listed: lib.C_GetMechanismList(slot).includes(pkcs11js.CKM_AES_GCM),
  info: codeOf(() => lib.C_GetMechanismInfo(slot, pkcs11js.CKM_AES_GCM)),
  encryptInit: codeOf(() => lib.C_EncryptInit(session, gcm(Buffer.alloc(12)), key)),
  decryptInit: codeOf(() => lib.C_DecryptInit(other, gcm(Buffer.alloc(12, 7)), key)),
}));
lib.C_Finalize();
`;

describe('HSM_KMS_SHIM_HIDE', () => {
  async function runWithHidden(hide: string | undefined) {
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', HIDE_SCRIPT], {
      env: {
        PATH: process.env.PATH,
        SOFTHSM2_CONF: token.softhsmConf,
        HSM_KMS_SHIM_TARGET: token.targetLibrary,
        ...(hide === undefined ? {} : { HSM_KMS_SHIM_HIDE: hide }),
        SHIM_PKCS11JS: createRequire(import.meta.url).resolve('pkcs11js'),
        SHIM_LIBRARY: token.library,
        SHIM_LABEL: token.tokenLabel,
        SHIM_PIN: token.pin,
      },
    });
    return JSON.parse(stdout) as { listed: boolean; info: number; encryptInit: number; decryptInit: number };
  }

  it('when it names CKM_AES_GCM, then GCM is not listed and every use of it fails with CKR_MECHANISM_INVALID', async () => {
    expect(await runWithHidden('0x1087')).toEqual({
      listed: false,
      info: pkcs11js.CKR_MECHANISM_INVALID,
      encryptInit: pkcs11js.CKR_MECHANISM_INVALID,
      decryptInit: pkcs11js.CKR_MECHANISM_INVALID,
    });
    expect((await runWithHidden('4231,0x1')).listed).toBe(false);
  });

  it('when it is unset, then GCM is listed and usable', async () => {
    expect(await runWithHidden(undefined)).toEqual({ listed: true, info: 0, encryptInit: 0, decryptInit: 0 });
  });
});

describe('buildCloudHsmShim', () => {
  it('when called twice, then the second call reuses the first build and leaves no temporary file', () => {
    const cacheRoot = mkdtempSync(path.join(tmpdir(), 'hsm-kms-shim-cache-'));
    try {
      const built = buildCloudHsmShim(cacheRoot);
      const builtAt = statSync(built).mtimeMs;
      expect(buildCloudHsmShim(cacheRoot)).toBe(built);
      expect(statSync(built).mtimeMs).toBe(builtAt);
      expect(readdirSync(path.dirname(built))).toEqual(['libcloudhsm-shim.so']);
    } finally {
      rmSync(cacheRoot, { recursive: true, force: true });
    }
  });

  it('when gcc is not on the PATH, then it says so and how to install it', () => {
    const cacheRoot = mkdtempSync(path.join(tmpdir(), 'hsm-kms-shim-cache-'));
    const pathBefore = process.env.PATH;
    process.env.PATH = cacheRoot;
    try {
      expect(() => buildCloudHsmShim(cacheRoot)).toThrow(
        'gcc not found: the CloudHSM-rules shim is built from C source (apt-get install gcc libc6-dev)',
      );
    } finally {
      process.env.PATH = pathBefore;
      rmSync(cacheRoot, { recursive: true, force: true });
    }
  });
});
