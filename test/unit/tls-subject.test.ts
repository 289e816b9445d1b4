import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { subjectOf } from '../../src/http/tls-credentials.js';
import { createTestPki, type TestPki } from '../support/test-pki.js';

let pki: TestPki;
beforeAll(() => {
  pki = createTestPki();
});
afterAll(() => pki.remove());

describe('a client certificate subject in RFC 4514 form (KMS_TLS_CLIENT_SUBJECT)', () => {
  it('when the subject has several attributes and characters to escape, then it reads as openssl -nameopt RFC2253 prints it', () => {
    const cases: [string, string][] = [
      ['/CN=cks.kms.eu-west-1.amazonaws.com', 'CN=cks.kms.eu-west-1.amazonaws.com'],
      ['/C=US/O=Acme, Inc./OU=a=b+c/CN=cks.kms.eu-west-1.amazonaws.com', ''],
      ['/C=US/O=Acme/OU=keys+OU=xks/CN=proxy', 'CN=proxy,OU=keys+OU=xks,O=Acme,C=US'],
    ];
    for (const [index, [subject, expected]] of cases.entries()) {
      const client = pki.client(`subject-${index}`, { subject });
      const printed = execFileSync('openssl', [
        'x509',
        '-noout',
        '-subject',
        '-nameopt',
        'RFC2253',
        '-in',
        client.certFile,
      ])
        .toString('utf8')
        .trim()
        .replace(/^subject=/, '');
      expect(subjectOf(new X509Certificate(client.cert))).toBe(printed);
      if (expected !== '') expect(printed).toBe(expected);
    }
  });
});
