#!/usr/bin/env node
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadOrCreateIssuerKeys, signProjectToken } from '../auth/local-issuer.js';

/** The `kms` command line. Each command prints its result alone on stdout, so it can be captured with $(...). */
const USAGE = `Usage: kms <command> [options]

Commands:
  token --project <project_id> [--ttl <seconds>]
      Print an X-Auth-Token for the project, signed with the local issuer key in $KMS_DATA_DIR/issuer
      (default ./.data). Valid for --ttl seconds (default 86400, at most 31536000).
  help
      Print this text.
`;

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

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'token':
      return token(rest);
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

main(process.argv.slice(2)).catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
