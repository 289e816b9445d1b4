import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** Where the listener's certificate, its key and the client CA come from, and the subject clients must have. */
export interface TlsSettings {
  /** PEM: the server certificate, then any intermediates. */
  readonly certFile: string;
  /** PEM: the certificate's private key, unencrypted. */
  readonly keyFile: string;
  /** PEM: the CA certificates client certificates must chain to; set, a client certificate is required. */
  readonly clientCaFile: string | undefined;
  /** The exact subject a client certificate must have, in RFC 4514 form (see subjectOf). */
  readonly clientSubject: string | undefined;
}

/** The files' contents, checked. `key` is the private key in PEM: zero it once the server has it. */
export interface TlsCredentials {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly clientCa: Buffer | undefined;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/**
 * Reads and checks the files: each is readable, the certificate is one and has not expired, the key is its key, the
 * client CA file holds CA certificates. A refusal names the variable and the file, never what the file holds, nor
 * OpenSSL's message about it.
 */
export function readTlsCredentials(settings: TlsSettings, now: Date = new Date()): TlsCredentials {
  const cert = readFile('KMS_TLS_CERT_FILE', settings.certFile);
  const leaf = certificatesIn(cert, 'KMS_TLS_CERT_FILE', settings.certFile)[0] as X509Certificate;
  if (new Date(leaf.validTo) < now) {
    throw new Error(
      `Invalid configuration: KMS_TLS_CERT_FILE ${settings.certFile}: the certificate expired on ${leaf.validTo}.`,
    );
  }
  const key = readFile('KMS_TLS_KEY_FILE', settings.keyFile);
  try {
    checkKeyMatches(leaf, key, settings);
    const clientCa = settings.clientCaFile === undefined ? undefined : readClientCa(settings.clientCaFile);
    return { cert, key, clientCa };
  } catch (err) {
    key.fill(0);
    throw err;
  }
}

function checkKeyMatches(leaf: X509Certificate, key: Buffer, settings: TlsSettings): void {
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(key));
  } catch {
    throw new Error(
      `Invalid configuration: KMS_TLS_KEY_FILE ${settings.keyFile} does not hold an unencrypted PEM private key.`,
    );
  }
  if (!matches) {
    throw new Error(
      `Invalid configuration: KMS_TLS_KEY_FILE ${settings.keyFile} is not the key of the certificate in ` +
        `KMS_TLS_CERT_FILE ${settings.certFile}.`,
    );
  }
}

function readClientCa(file: string): Buffer {
  const pem = readFile('KMS_TLS_CLIENT_CA_FILE', file);
  const notCa = certificatesIn(pem, 'KMS_TLS_CLIENT_CA_FILE', file).findIndex((c) => !c.ca);
  if (notCa >= 0) {
    throw new Error(
      `Invalid configuration: KMS_TLS_CLIENT_CA_FILE ${file}: certificate ${notCa + 1} is not a CA certificate ` +
        '(basicConstraints CA:TRUE), so no client certificate could chain to it.',
    );
  }
  return pem;
}

function readFile(variable: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch {
    throw new Error(`Invalid configuration: ${variable} ${file} cannot be read.`);
  }
}

function certificatesIn(pem: Buffer, variable: string, file: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  const refusal = () => new Error(`Invalid configuration: ${variable} ${file} does not hold PEM certificates.`);
  if (blocks.length === 0) throw refusal();
  try {
    return blocks.map((block) => new X509Certificate(block));
  } catch {
    throw refusal();
  }
}

/**
 * A certificate's subject in RFC 4514 form: the most specific attribute first, `,` between attributes, `+` within a
 * multi-valued one, `\` escapes: what `openssl x509 -noout -subject -nameopt RFC2253` prints for an ASCII subject.
 * node:crypto lists the attributes one a line (` + ` within a multi-valued one), in the certificate's order, escaped
 * as RFC 4514 says; OpenSSL reverses every attribute, those within a multi-valued one too.
 */
export function subjectOf(certificate: X509Certificate): string {
  return certificate.subject
    .split('\n')
    .reverse()
    .map((rdn) => rdn.split(' + ').reverse().join('+'))
    .join(',');
}
