#!/usr/bin/env node
import path from 'node:path';
import { parseArgs } from 'node:util';
import { verifyAuditFiles } from '../audit/verify-audit-chain.js';
import { loadOrCreateIssuerKeys, signProjectToken } from '../auth/local-issuer.js';
import { loadConfig } from '../config.js';
import { CredentialService } from '../core/credential.service.js';
import { RootKeyService } from '../core/root-key.service.js';
import { GrapheneHsm } from '../hsm/graphene-hsm.js';
import { SqliteMetadataStore } from '../store/sqlite-metadata-store.js';

/** The `kms` command line. Each command prints its result alone on stdout, so it can be captured with $(...). */
const USAGE = `Usage: kms <command> [options]

Commands:
  token --project <project_id> [--ttl <seconds>]
      Print an X-Auth-Token for the project, signed with the local issuer key in $KMS_DATA_DIR/issuer
      (default ./.data). Valid for --ttl seconds (default 86400, at most 31536000).
  credentials create --project <project_id> [--format aws|alibaba|huawei|xks]
      Create an access key of the project for the signed dialects (AWS SigV4, Alibaba RPC, Huawei AK/SK) and
      print it as two lines, AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... (or, with --format alibaba,
      ALIBABA_CLOUD_ACCESS_KEY_ID=... and ALIBABA_CLOUD_ACCESS_KEY_SECRET=...; with --format huawei, three,
      HUAWEICLOUD_SDK_AK=..., HUAWEICLOUD_SDK_SK=... and HUAWEICLOUD_SDK_PROJECT_ID=...), so that
      eval "$(kms credentials create --project p)" configures a shell. The secret is shown only now.
      --format xks creates instead a key of the XKS proxy API alone (the credential of an AWS KMS external key
      store whose XksProxyUriPath is /xks/<project_id>/kms/xks/v1), printed as XKS_ACCESS_KEY_ID=... and
      XKS_SECRET_ACCESS_KEY=... (a 44-character secret, as AWS requires for XKS).
  credentials revoke <access_key_id>
      Revoke an access key at once. Fails (exit 1) if it is unknown or already revoked.
      Both credentials commands open the HSM and the metadata store with the service's configuration
      (KMS_DATA_DIR, KMS_PIN or KMS_PIN_FILE, KMS_TOKEN_LABEL, KMS_PKCS11_LIBRARY, SOFTHSM2_CONF, ...).
  root rotate
      Make a new root key in the HSM, rewrap every key version under it (versions of the legacy derivation
      scheme are migrated on the way), then destroy the old root keys. The service keeps serving meanwhile.
      Resumable: after a crash, run it again; it finishes the interrupted rotation first. Run one at a time.
      Prints the new root key's label; progress goes to stderr.
  audit verify <file>...
      Check audit log files (one chain: a process's audit-<slot>-<n>.jsonl files, oldest first, as rotation left
      them) record by record. Clean: prints the record count and the last record's hash, exits 0 (part of a
      record left at the end of a file by a crash is reported on stderr). Otherwise prints the first broken record
      (file, line, the sequence number due there, why) and exits 1.
  help
      Print this text.
`;

/**
 * The variables each dialect's CLIs and SDKs read their access key from (and, for Huawei's SDKs, which have no
 * account to infer it from, the project). One access key serves every dialect.
 */
const CREDENTIAL_VARIABLES: Readonly<Record<string, readonly [string, string, string?]>> = {
  aws: ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'],
  alibaba: ['ALIBABA_CLOUD_ACCESS_KEY_ID', 'ALIBABA_CLOUD_ACCESS_KEY_SECRET'],
  huawei: ['HUAWEICLOUD_SDK_AK', 'HUAWEICLOUD_SDK_SK', 'HUAWEICLOUD_SDK_PROJECT_ID'],
  xks: ['XKS_ACCESS_KEY_ID', 'XKS_SECRET_ACCESS_KEY'],
};

const PROJECT_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const DEFAULT_TTL_SECONDS = 86_400;
const MAX_TTL_SECONDS = 31_536_000;

function fail(message: string): never {
  process.stderr.write(`kms: ${message}\n`);
  process.exit(2);
}

async function token(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { project: { type: 'string' }, ttl: { type: 'string' } },
    strict: true,
  });
  const project = values.project;
  if (project === undefined) fail('token needs --project <project_id>');
  if (!PROJECT_ID_PATTERN.test(project)) fail('a project id is 1 to 64 letters, digits, "_" or "-"');
  const ttl = values.ttl === undefined ? DEFAULT_TTL_SECONDS : Number(values.ttl);
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS) fail(`--ttl must be 1 to ${MAX_TTL_SECONDS}`);
  const dataDir = path.resolve(process.env.KMS_DATA_DIR ?? './.data');
  const keys = loadOrCreateIssuerKeys(dataDir);
  process.stdout.write(`${await signProjectToken(keys, project, ttl)}\n`);
}

/** Runs `use` with a credential service over the service's own HSM token and database, closing both after. */
function withCredentials<T>(use: (credentials: CredentialService) => Promise<T>): Promise<T> {
  return withHsmAndStore((hsm, store) => use(new CredentialService(hsm, store, { now: () => Date.now() })));
}

/** Runs `use` with the service's own HSM token and database, closing both after. */
async function withHsmAndStore<T>(use: (hsm: GrapheneHsm, store: SqliteMetadataStore) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const store = SqliteMetadataStore.open(config.dbPath);
  try {
    // The CLI may be the first to use a fresh token: it creates the keys it needs, like the service's primary.
    const hsm = await GrapheneHsm.open({ ...config.hsm, poolSize: 1, createTokenKeysIfMissing: true });
    try {
      return await use(hsm, store);
    } finally {
      await hsm.close();
    }
  } finally {
    await store.close();
  }
}

async function root(args: string[]): Promise<void> {
  const [subcommand, ...rest] = args;
  if (subcommand !== 'rotate') {
    fail(subcommand === undefined ? "root needs 'rotate' (try 'kms help')" : `unknown root command '${subcommand}'`);
  }
  parseArgs({ args: rest, options: {}, strict: true });
  const report = await withHsmAndStore((hsm, store) =>
    new RootKeyService(hsm, store, { now: () => Date.now() }).rotate((n) =>
      process.stderr.write(`kms: ${n} key versions rewrapped\n`),
    ),
  );
  process.stderr.write(
    `kms: ${report.rewrapped} key versions rewrapped; destroyed ${JSON.stringify(report.destroyed)}\n`,
  );
  process.stdout.write(`${report.rootKeyLabel}\n`);
}

async function credentials(args: string[]): Promise<void> {
  const [subcommand, ...rest] = args;
  switch (subcommand) {
    case 'create': {
      const { values } = parseArgs({
        args: rest,
        options: { project: { type: 'string' }, format: { type: 'string', default: 'aws' } },
        strict: true,
      });
      const project = values.project;
      if (project === undefined) fail('credentials create needs --project <project_id>');
      if (!PROJECT_ID_PATTERN.test(project)) fail('a project id is 1 to 64 letters, digits, "_" or "-"');
      const names = Object.hasOwn(CREDENTIAL_VARIABLES, values.format)
        ? CREDENTIAL_VARIABLES[values.format]
        : undefined;
      if (names === undefined) fail("--format must be 'aws', 'alibaba', 'huawei' or 'xks'");
      const [accessKeyName, secretName, projectName] = names;
      const kind = values.format === 'xks' ? 'xks' : 'signing';
      const created = await withCredentials((service) => service.create(project, kind));
      process.stdout.write(
        `${accessKeyName}=${created.accessKeyId}\n${secretName}=${created.secretAccessKey}\n` +
          (projectName ? `${projectName}=${project}\n` : ''),
      );
      return;
    }
    case 'revoke': {
      const { positionals } = parseArgs({ args: rest, options: {}, allowPositionals: true, strict: true });
      const [accessKeyId, ...extra] = positionals;
      if (accessKeyId === undefined || extra.length > 0) fail('credentials revoke needs one <access_key_id>');
      if (!(await withCredentials((service) => service.revoke(accessKeyId)))) {
        process.stderr.write(`kms: access key ${accessKeyId} does not exist or is already revoked\n`);
        process.exitCode = 1;
      }
      return;
    }
    default:
      fail(
        subcommand === undefined
          ? "credentials needs 'create' or 'revoke' (try 'kms help')"
          : `unknown credentials command '${subcommand}' (try 'kms help')`,
      );
  }
}

function audit(args: string[]): void {
  const [subcommand, ...rest] = args;
  if (subcommand !== 'verify') {
    fail(subcommand === undefined ? "audit needs 'verify' (try 'kms help')" : `unknown audit command '${subcommand}'`);
  }
  const { positionals: files } = parseArgs({ args: rest, options: {}, allowPositionals: true, strict: true });
  if (files.length === 0) fail('audit verify needs at least one <file>');
  const verdict = verifyAuditFiles(files);
  if (verdict.ok) {
    for (const { file, line } of verdict.cutShort) {
      process.stderr.write(`kms: ${file} line ${line}: part of a record, cut short by a stop in mid-write\n`);
    }
    process.stdout.write(`ok: ${verdict.count} records, last hash ${verdict.head.hash}\n`);
    return;
  }
  process.stdout.write(
    `broken: ${verdict.file} line ${verdict.line} (record ${verdict.expectedSeq} due): ${verdict.reason}\n`,
  );
  process.exitCode = 1;
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'token':
      return token(rest);
    case 'credentials':
      return credentials(rest);
    case 'root':
      return root(rest);
    case 'audit':
      return audit(rest);
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    case undefined:
      process.stderr.write(USAGE);
      process.exit(2);
      break;
    default:
      fail(`unknown command '${command}' (try 'kms help')`);
  }
}

/** Bad arguments (parseArgs' own errors included) exit 2; a failure while doing the work (config, HSM) exits 1. */
main(process.argv.slice(2)).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  if (isUsageError(err)) fail(message);
  process.stderr.write(`kms: ${message}\n`);
  process.exit(1);
});

function isUsageError(err: unknown): boolean {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS');
}
