import { describe, expect, it } from 'vitest';
import { renderXksError, XKS_ERROR_STATUS, XKS_ERROR_TABLE } from '../../src/api/xks/errors.js';
import { KMS_ERROR_CODES, KmsError } from '../../src/core/errors.js';
import { decodeXksMetadata, encodeXksMetadata, xksHsmAad } from '../../src/core/xks-ciphertext.js';

describe('the XKS ciphertext metadata and HSM AAD', () => {
  it('when version 258 is encoded, then the metadata is 01 00 00 01 02 and decodes back', () => {
    expect(encodeXksMetadata(258).toString('hex')).toBe('0100000102');
    expect(decodeXksMetadata(Buffer.from('0100000102', 'hex'))).toBe(258);
  });

  it.each([
    ['empty', ''],
    ['another format', '0200000000'],
    ['too short', '01000000'],
    ['too long', '010000000000'],
  ])('when the metadata is %s, then it names no version', (_, hex) => {
    expect(decodeXksMetadata(Buffer.from(hex, 'hex'))).toBeUndefined();
  });

  it('when the AAD and metadata are given, then the HSM AAD is len16_be(AAD) AAD len8(metadata) metadata', () => {
    const aad = Buffer.alloc(0x0102, 0xaa);
    const hsmAad = xksHsmAad(aad, Buffer.from('0100000007', 'hex'));
    expect(hsmAad.subarray(0, 2).toString('hex')).toBe('0102');
    expect(hsmAad.subarray(2, 2 + 0x0102).equals(aad)).toBe(true);
    expect(hsmAad.subarray(2 + 0x0102).toString('hex')).toBe('050100000007');
    expect(xksHsmAad(Buffer.alloc(0), Buffer.alloc(0)).toString('hex')).toBe('000000');
  });
});

describe('the XKS error table', () => {
  it('when any core error is rendered, then it has a name and status of the spec', () => {
    for (const code of KMS_ERROR_CODES) {
      const { status, body } = renderXksError(new KmsError(code, 'message'));
      expect(XKS_ERROR_STATUS[body.errorName]).toBe(status);
      expect(body.errorName).toBe(XKS_ERROR_TABLE[code]);
    }
  });

  it('when the HSM is unavailable, then it is DependencyTimeoutException 503, logged as unexpected', () => {
    expect(renderXksError(new KmsError('HsmUnavailable', 'C_Encrypt failed'))).toMatchObject({
      status: 503,
      body: { errorName: 'DependencyTimeoutException' },
      unexpected: true,
    });
  });

  it('when an unexpected exception is rendered, then it is InternalException 500 and says nothing of it', () => {
    const rendered = renderXksError(new TypeError('secret detail at /some/path'));
    expect(rendered.status).toBe(500);
    expect(rendered.body.errorName).toBe('InternalException');
    expect(rendered.body.errorMessage).not.toContain('secret detail');
  });

  it('when a message has characters that are not printable ASCII or is long, then they are replaced and it is cut to 512', () => {
    const { body } = renderXksError(new KmsError('InvalidParameter', `bad\u0000value\u00e9${'x'.repeat(600)}`));
    expect(body.errorMessage.startsWith('bad?value?x')).toBe(true);
    expect(body.errorMessage).toHaveLength(512);
  });
});
