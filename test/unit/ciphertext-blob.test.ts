import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { encodeBinding } from '../../src/core/ciphertext-binding.js';
import {
  blobAad,
  blobLength,
  decodeFrame,
  decodePayload,
  encodeBlob,
  GCM_IV_LENGTH,
  GCM_TAG_LENGTH,
  MAX_PLAINTEXT_LENGTH,
  PAYLOAD_FORMAT_AES_256_GCM,
  PAYLOAD_FORMAT_AES_256_GCM_TEXT,
  type PlaintextKind,
} from '../../src/core/ciphertext-blob.js';
import { type EncryptionContext, encodeEncryptionContext } from '../../src/core/encryption-context.js';
import golden from '../vectors/ciphertext-blob.json' with { type: 'json' };
import huawei from '../vectors/huawei-published-blobs.json' with { type: 'json' };
import {
  expectInvalidCiphertext,
  expectInvalidParameter,
  gcmOpen,
  handBuiltAad,
  handBuiltBlob,
  withRecomputedChecksum,
} from './blob-test-kit.js';

const hex = (text: string): Buffer => Buffer.from(text, 'hex');
const aesKey = hex(golden.aesKeyHex);
const KEY_ID = '0d0466b0-e727-4d9c-b35d-f84bb474a37f';

/** A valid blob for ad-hoc tests: 64-byte plaintext, fixed IV and ciphertext bytes. */
function sampleBlob(keyVersion = 0): Buffer {
  return encodeBlob({
    keyId: KEY_ID,
    keyVersion,
    iv: Buffer.alloc(12, 0xa5),
    ciphertextWithTag: Buffer.alloc(80, 0x5a),
  });
}

describe('constants', () => {
  it('when read, then they describe AES-256-GCM with a 96-bit IV, a 128-bit tag and 4096-byte plaintexts', () => {
    expect([PAYLOAD_FORMAT_AES_256_GCM, GCM_IV_LENGTH, GCM_TAG_LENGTH, MAX_PLAINTEXT_LENGTH]).toEqual([
      1, 12, 16, 4096,
    ]);
  });
});

describe('blobLength', () => {
  it('when the plaintext is a 64-byte DEK, then the blob is 169 bytes, within the 188 bytes of a Huawei DEK blob', () => {
    expect(blobLength(64)).toBe(169);
  });

  it('when the plaintext is 1 or 4096 bytes, then the blob is 105 bytes longer', () => {
    expect(blobLength(1)).toBe(106);
    expect(blobLength(4096)).toBe(4201);
  });

  it.each([0, -1, 4097, 1.5, Number.NaN])(
    'when the plaintext length is %s, then it is an InvalidParameter',
    (length) => {
      expectInvalidParameter(() => blobLength(length), 'Invalid plaintext length.');
    },
  );
});

describe('golden vectors (test/vectors/ciphertext-blob.json)', () => {
  describe.each(golden.vectors)('$name', (vector) => {
    const context = (vector.context ?? undefined) as EncryptionContext | undefined;
    const additionalData = 'additionalData' in vector ? vector.additionalData : undefined;
    const kind = ('kind' in vector ? vector.kind : 'bytes') as PlaintextKind;
    const format = kind === 'text' ? 0x02 : 0x01;
    const binding = { context, additionalData };
    const iv = hex(vector.ivHex);
    const ciphertextWithTag = hex(vector.ciphertextWithTagHex);
    const plaintext = hex(vector.plaintextHex);

    it('when the parts are encoded, then the blob equals the vector byte for byte', () => {
      const blob = encodeBlob({ keyId: vector.keyId, keyVersion: vector.keyVersion, iv, ciphertextWithTag, kind });
      expect(blob.toString('hex')).toBe(vector.blobHex);
      expect(blob.length).toBe(vector.blobLength);
      expect(blobLength(plaintext.length)).toBe(vector.blobLength);
    });

    it('when the blob is rebuilt by hand from the layout, then it equals the vector (header, N, SHA-256 tail)', () => {
      const blob = hex(vector.blobHex);
      expect(handBuiltBlob(vector.keyId, vector.keyVersion, iv, ciphertextWithTag, format).equals(blob)).toBe(true);
      const n = blob.readUInt16LE(2);
      expect([blob[0], blob[1], n + 36]).toEqual([0x02, 0x00, blob.length]);
      expect(
        createHash('sha256')
          .update(blob.subarray(0, n + 4))
          .digest()
          .equals(blob.subarray(n + 4)),
      ).toBe(true);
    });

    it('when the AAD is computed, then it equals the vector and the hand-built AAD', () => {
      const aad = blobAad(vector.keyId, vector.keyVersion, plaintext.length, binding, kind);
      expect(aad.toString('hex')).toBe(vector.aadHex);
      expect(encodeEncryptionContext(context).toString('hex')).toBe(vector.contextHex);
      if ('bindingHex' in vector) expect(encodeBinding(binding).toString('hex')).toBe(vector.bindingHex);
      const byHand = handBuiltAad(
        vector.keyId,
        vector.keyVersion,
        plaintext.length,
        hex(vector.contextHex),
        additionalData,
        format,
      );
      expect(byHand.equals(aad)).toBe(true);
    });

    it('when the blob is decoded, then the parts come back and AES-GCM under that AAD opens to the plaintext', () => {
      const frame = decodeFrame(hex(vector.blobHex));
      expect(frame.keyId).toBe(vector.keyId);
      expect(frame.keyVersion).toBe(vector.keyVersion);
      const payload = decodePayload(frame);
      expect(payload.iv.toString('hex')).toBe(vector.ivHex);
      expect(payload.ciphertextWithTag.toString('hex')).toBe(vector.ciphertextWithTagHex);
      expect(payload.plaintextLength).toBe(plaintext.length);
      expect(payload.kind).toBe(kind);
      const aad = blobAad(frame.keyId, frame.keyVersion, payload.plaintextLength, binding, payload.kind);
      expect(gcmOpen(aesKey, payload.iv, payload.ciphertextWithTag, aad)?.toString('hex')).toBe(vector.plaintextHex);
    });

    it('when the blob is opened with another encryption context, then AES-GCM rejects it', () => {
      const frame = decodeFrame(hex(vector.blobHex));
      const payload = decodePayload(frame);
      const other = { context: { other: 'context' }, additionalData };
      const aad = blobAad(frame.keyId, frame.keyVersion, payload.plaintextLength, other, payload.kind);
      expect(gcmOpen(aesKey, payload.iv, payload.ciphertextWithTag, aad)).toBeUndefined();
    });

    it('when the blob is opened with other additional data, or none, then AES-GCM rejects it', () => {
      const frame = decodeFrame(hex(vector.blobHex));
      const payload = decodePayload(frame);
      const others = additionalData === undefined ? ['x', ' '] : [undefined, `${additionalData.slice(0, -1)}!`];
      for (const data of others) {
        const aad = blobAad(frame.keyId, frame.keyVersion, payload.plaintextLength, { context, additionalData: data });
        expect(gcmOpen(aesKey, payload.iv, payload.ciphertextWithTag, aad)).toBeUndefined();
      }
    });

    it('when the blob is opened as the other plaintext kind, then AES-GCM rejects it', () => {
      const frame = decodeFrame(hex(vector.blobHex));
      const payload = decodePayload(frame);
      const other = kind === 'text' ? 'bytes' : 'text';
      const aad = blobAad(frame.keyId, frame.keyVersion, payload.plaintextLength, binding, other);
      expect(gcmOpen(aesKey, payload.iv, payload.ciphertextWithTag, aad)).toBeUndefined();
    });
  });

  it('when the set is read, then it covers 1, 32, 64, 1024 and 4096-byte plaintexts, additional data and text', () => {
    const lengths = new Set(golden.vectors.map((v) => v.plaintextHex.length / 2));
    expect([...lengths]).toEqual(expect.arrayContaining([1, 32, 64, 1024, 4096]));
    expect(golden.vectors.filter((v) => 'additionalData' in v).map((v) => v.name)).toHaveLength(3);
    expect(golden.vectors.filter((v) => 'kind' in v && v.kind === 'text').map((v) => v.name)).toHaveLength(2);
  });

  it('when the first six vectors (made before additional data and text) are read, then they name neither', () => {
    for (const vector of golden.vectors.slice(0, 6)) {
      expect('additionalData' in vector || 'kind' in vector).toBe(false);
    }
  });
});

describe('published Huawei blobs (test/vectors/huawei-published-blobs.json)', () => {
  describe.each(huawei.blobs)('$name', (published) => {
    const blob = Buffer.from(published.cipherText, published.encoding as BufferEncoding);

    it('when the frame is decoded, then it is valid and names the key and version 0', () => {
      expect(blob.length).toBe(published.length);
      expect(blob.readUInt16LE(2)).toBe(published.n);
      const frame = decodeFrame(blob);
      expect(frame.keyId).toBe(published.keyId);
      expect(frame.keyVersion).toBe(published.keyVersion);
      expect(frame.payload.length).toBe(published.n - 40);
    });

    it('when the payload is decoded, then it is refused as not ours', () => {
      const frame = decodeFrame(blob);
      expectInvalidCiphertext(() => decodePayload(frame));
    });
  });

  it('when the create-datakey seed is decoded, then N is 152 and the blob 188 bytes', () => {
    const seed =
      '020098009EEAFCE122CAA5927D2E020086F9548BA1675FDB022E4ECC01B96F2189CF4B85E78357E73E1CEB518DAF7A4960E7C7DE8885ED3FB2F1471ABF400119CC1B20BD3C4A9B80AF590EFD0AEDABFDBB0E2B689DA7B6C9E7D3C5645FCD9274802586BE63779471F9156F2CDF07CD8412FFBE9230643034363662302D653732372D346439632D623335642D6638346262343734613337660000000045B05321483BD9F9561865EE7DFE9BE267A42EB104E98C16589CE46940B18E52';
    const blob = Buffer.from(seed, 'hex');
    expect(blob.length).toBe(188);
    expect(blob.readUInt16LE(2)).toBe(152);
    expect(decodeFrame(blob)).toMatchObject({ keyId: KEY_ID, keyVersion: 0 });
  });
});

describe('encodeBlob', () => {
  it('when the key id is not a lower-case UUID, then it is an InvalidParameter', () => {
    for (const keyId of ['0D0466B0-E727-4D9C-B35D-F84BB474A37F', `${KEY_ID}0`, KEY_ID.slice(1), 'alias/4555', '']) {
      expectInvalidParameter(
        () => encodeBlob({ keyId, keyVersion: 0, iv: Buffer.alloc(12), ciphertextWithTag: Buffer.alloc(17) }),
        'Invalid key id.',
      );
    }
  });

  it('when the key version is negative, fractional or beyond u32, then it is an InvalidParameter', () => {
    for (const keyVersion of [-1, 0.5, 2 ** 32, Number.NaN]) {
      expectInvalidParameter(
        () => encodeBlob({ keyId: KEY_ID, keyVersion, iv: Buffer.alloc(12), ciphertextWithTag: Buffer.alloc(17) }),
        'Invalid key version.',
      );
    }
  });

  it('when the IV is not 12 bytes, then it is an InvalidParameter', () => {
    expectInvalidParameter(
      () => encodeBlob({ keyId: KEY_ID, keyVersion: 0, iv: Buffer.alloc(16), ciphertextWithTag: Buffer.alloc(17) }),
      'Invalid IV length.',
    );
  });

  it('when the ciphertext is empty or longer than 4096 bytes plus the tag, then it is an InvalidParameter', () => {
    for (const length of [0, 16, 4096 + 17]) {
      expectInvalidParameter(
        () =>
          encodeBlob({ keyId: KEY_ID, keyVersion: 0, iv: Buffer.alloc(12), ciphertextWithTag: Buffer.alloc(length) }),
        'Invalid plaintext length.',
      );
    }
  });
});

describe('blobAad', () => {
  it('when the context is absent or empty, then the AAD is the same', () => {
    expect(blobAad(KEY_ID, 1, 64, {}).equals(blobAad(KEY_ID, 1, 64, { context: {} }))).toBe(true);
  });

  it('when the additional data is absent or empty, then the AAD is the one of a blob made before the field existed', () => {
    const before = handBuiltAad(KEY_ID, 1, 64, Buffer.from([0, 0]));
    expect(blobAad(KEY_ID, 1, 64, {}).equals(before)).toBe(true);
    expect(blobAad(KEY_ID, 1, 64, { additionalData: '' }).equals(before)).toBe(true);
  });

  it('when the kind is text, then only the format byte of the AAD differs from bytes', () => {
    const bytes = blobAad(KEY_ID, 1, 64, {});
    const text = blobAad(KEY_ID, 1, 64, {}, 'text');
    expect(text[4]).toBe(0x02);
    expect(Buffer.concat([bytes.subarray(0, 4), Buffer.from([0x02]), bytes.subarray(5)]).equals(text)).toBe(true);
  });

  it('when the key id, version, length or context differ, then the AAD differs', () => {
    const base = blobAad(KEY_ID, 1, 64, { context: { a: 'b' } });
    const variants = [
      blobAad('0d0466b0-e727-4d9c-b35d-f84bb474a37e', 1, 64, { context: { a: 'b' } }),
      blobAad(KEY_ID, 2, 64, { context: { a: 'b' } }),
      blobAad(KEY_ID, 1, 65, { context: { a: 'b' } }),
      blobAad(KEY_ID, 1, 64, { context: { a: 'c' } }),
      blobAad(KEY_ID, 1, 64, {}),
    ];
    for (const variant of variants) expect(variant.equals(base)).toBe(false);
  });

  it('when the key id or version is invalid, then it is an InvalidParameter', () => {
    expectInvalidParameter(() => blobAad('alias/4555', 0, 64, {}), 'Invalid key id.');
    expectInvalidParameter(() => blobAad(KEY_ID, -1, 64, {}), 'Invalid key version.');
    expectInvalidParameter(() => blobAad(KEY_ID, 0, 0, {}), 'Invalid plaintext length.');
  });
});

describe('decodeFrame', () => {
  it('when the blob is shorter than the 76-byte minimum, then it is an InvalidCiphertext', () => {
    expectInvalidCiphertext(() => decodeFrame(Buffer.alloc(0)));
    expectInvalidCiphertext(() => decodeFrame(Buffer.alloc(75)));
  });

  it('when the frame version is not 02 00, then it is an InvalidCiphertext even with a good checksum', () => {
    for (const version of [
      [0x01, 0x00],
      [0x00, 0x02],
      [0x03, 0x00],
      [0x02, 0x01],
    ]) {
      const blob = sampleBlob();
      blob[0] = version[0] ?? 0;
      blob[1] = version[1] ?? 0;
      expectInvalidCiphertext(() => decodeFrame(withRecomputedChecksum(blob)));
    }
  });

  it('when N disagrees with the total length, then it is an InvalidCiphertext even with a good checksum', () => {
    for (const delta of [-1, 1, 0x100, -0x85]) {
      const blob = sampleBlob();
      blob.writeUInt16LE((blob.readUInt16LE(2) + delta) & 0xffff, 2);
      expectInvalidCiphertext(() => decodeFrame(withRecomputedChecksum(blob)));
    }
  });

  it('when the payload is empty (N = 40), then the frame is valid and decodePayload refuses it', () => {
    const body = Buffer.concat([Buffer.from([0x02, 0x00, 40, 0x00]), Buffer.from(KEY_ID, 'ascii'), Buffer.alloc(4)]);
    const blob = withRecomputedChecksum(Buffer.concat([body, Buffer.alloc(32)]));
    const frame = decodeFrame(blob);
    expect(frame.payload.length).toBe(0);
    expectInvalidCiphertext(() => decodePayload(frame));
  });

  it('when the key id is upper-case or not a UUID, then it is an InvalidCiphertext even with a good checksum', () => {
    for (const keyId of ['0D0466B0-E727-4D9C-B35D-F84BB474A37F', '0d0466b0_e727_4d9c_b35d_f84bb474a37f']) {
      const blob = sampleBlob();
      const n = blob.readUInt16LE(2);
      blob.write(keyId, n - 36, 'ascii');
      expectInvalidCiphertext(() => decodeFrame(withRecomputedChecksum(blob)));
    }
  });

  it('when the SHA-256 tail is wrong, then it is an InvalidCiphertext', () => {
    const blob = sampleBlob();
    blob[blob.length - 1] = (blob[blob.length - 1] ?? 0) ^ 1;
    expectInvalidCiphertext(() => decodeFrame(blob));
  });

  it('when the key version is large, then it is read as an unsigned 32-bit number', () => {
    expect(decodeFrame(sampleBlob(0xffff_fffe)).keyVersion).toBe(0xffff_fffe);
  });

  it('when the input is a plain Uint8Array view into a larger buffer, then it decodes the view only', () => {
    const blob = sampleBlob();
    const backing = new Uint8Array(blob.length + 10);
    backing.set(blob, 5);
    expect(decodeFrame(Buffer.from(backing.buffer, 5, blob.length)).keyId).toBe(KEY_ID);
  });

  it('when the input is not a byte buffer, then it is an InvalidCiphertext', () => {
    expectInvalidCiphertext(() => decodeFrame('0200' as unknown as Buffer));
    expectInvalidCiphertext(() => decodeFrame(undefined as unknown as Buffer));
  });

  it('when the caller later overwrites its buffer, then the decoded payload is unaffected', () => {
    const blob = sampleBlob();
    const frame = decodeFrame(blob);
    blob.fill(0);
    expect(frame.payload[0]).toBe(0x01);
  });
});

describe('decodePayload', () => {
  const frameWith = (payload: Buffer) => ({ keyId: KEY_ID, keyVersion: 0, payload });

  it.each([0x00, 0x03, 0xff])('when the format byte is %s (not 0x01 or 0x02), then it is an InvalidCiphertext', (f) => {
    expectInvalidCiphertext(() => decodePayload(frameWith(Buffer.concat([Buffer.from([f]), Buffer.alloc(40)]))));
  });

  it('when the format byte is 0x01 or 0x02, then the plaintext kind is bytes or text', () => {
    const kindOf = (f: number) => decodePayload(frameWith(Buffer.concat([Buffer.from([f]), Buffer.alloc(40)]))).kind;
    expect([kindOf(PAYLOAD_FORMAT_AES_256_GCM), kindOf(PAYLOAD_FORMAT_AES_256_GCM_TEXT)]).toEqual(['bytes', 'text']);
  });

  it('when the ciphertext is empty (only format, IV and tag), then it is an InvalidCiphertext', () => {
    expectInvalidCiphertext(() => decodePayload(frameWith(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(28)]))));
  });

  it('when the ciphertext is longer than 4096 bytes, then it is an InvalidCiphertext', () => {
    expectInvalidCiphertext(() =>
      decodePayload(frameWith(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(28 + 4097)]))),
    );
  });

  it('when the ciphertext is 1 or 4096 bytes, then the plaintext length follows', () => {
    expect(decodePayload(frameWith(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(29)]))).plaintextLength).toBe(1);
    expect(
      decodePayload(frameWith(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(28 + 4096)]))).plaintextLength,
    ).toBe(4096);
  });
});
