import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** A certificate and its key, as files and as PEM. */
export interface IssuedCertificate {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** A throw-away PKI in a temporary directory, made with the openssl command. */
export interface TestPki {
  readonly dir: string;
  readonly ca: IssuedCertificate;
  /** A second CA, which the service does not trust. */
  readonly otherCa: IssuedCertificate;
  /** For 127.0.0.1, ::1 and localhost, from `ca`. */
  readonly server: IssuedCertificate;
  /** Makes a client certificate: from `ca` unless told otherwise, valid for a day unless `expired`. */
  client(
    name: string,
    options?: { subject?: string; issuer?: IssuedCertificate; expired?: boolean },
  ): IssuedCertificate;
  /** Makes a certificate signed by `ca` for `names` (subjectAltName entries such as `DNS:localhost`). */
  serverFor(name: string, names: string, options?: { expired?: boolean }): IssuedCertificate;
  remove(): void;
}

/** The subject AWS KMS presents to an XKS proxy in eu-west-1. */
export const KMS_CLIENT_SUBJECT = '/CN=cks.kms.eu-west-1.amazonaws.com';

function openssl(cwd: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function createTestPki(): TestPki {
  const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-pki-'));
  const issued = (name: string): IssuedCertificate => {
    const certFile = path.join(dir, `${name}.crt`);
    const keyFile = path.join(dir, `${name}.key`);
    return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
  };
  const newCa = (name: string, subject: string) => {
    openssl(
      dir,
      ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
      ...['-keyout', `${name}.key`, '-out', `${name}.crt`, '-subj', subject, '-days', '2'],
      ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    );
    return issued(name);
  };
  /** A key and a certificate request, then the certificate from `issuer` with the extensions. */
  const issue = (
    name: string,
    subject: string,
    issuer: IssuedCertificate,
    extensions: string,
    expired: boolean,
  ): IssuedCertificate => {
    writeFileSync(path.join(dir, `${name}.ext`), extensions);
    openssl(
      dir,
      ...['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
      ...['-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject],
    );
    openssl(
      dir,
      ...['x509', '-req', '-in', `${name}.csr`, '-CA', issuer.certFile, '-CAkey', issuer.keyFile],
      ...['-set_serial', String(Date.now() * 1000 + Math.floor(Math.random() * 1000)), '-out', `${name}.crt`],
      // A negative validity ends the certificate a day before it starts: it has expired.
      ...['-days', expired ? '-1' : '1', '-extfile', `${name}.ext`],
    );
    return issued(name);
  };
  const ca = newCa('ca', '/CN=hsm-kms test CA');
  const otherCa = newCa('other-ca', '/CN=another test CA');
  const serverFor: TestPki['serverFor'] = (name, names, options = {}) =>
    issue(
      name,
      '/CN=localhost',
      ca,
      `basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=${names}\n`,
      options.expired ?? false,
    );
  return {
    dir,
    ca,
    otherCa,
    server: serverFor('server', 'IP:127.0.0.1,IP:::1,DNS:localhost'),
    client: (name, options = {}) =>
      issue(
        name,
        options.subject ?? KMS_CLIENT_SUBJECT,
        options.issuer ?? ca,
        'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n',
        options.expired ?? false,
      ),
    serverFor,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
