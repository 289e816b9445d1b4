import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RATE_LIMITS_OFF } from '../../test/support/child-service.js';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));

export interface Started {
  readonly process: ChildProcess;
  readonly url: string;
  readonly log: () => string;
}

/**
 * Spawns a server process and resolves once `listeners` processes (1, or one per cluster worker) have logged a
 * `"msg":"listening"` JSON line with their URL on stderr. After that the log is only kept, not searched: a service
 * that logs every request (the XKS API does) writes tens of megabytes in a run, and searching all of it again on
 * every chunk would eat the cores the server is measured on.
 */
export function spawnServer(
  args: readonly string[],
  env: Record<string, string>,
  listeners: number,
  timeoutMs = 60_000,
): Promise<Started> {
  const child = spawn(process.execPath, args, {
    cwd: REPO,
    // Benchmarks measure what the service can serve, not a project's rate limit.
    env: { ...process.env, ...RATE_LIMITS_OFF, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const chunks: string[] = [];
  let stderr = '';
  let listening = false;
  const log = () => {
    if (chunks.length > 0) stderr += chunks.splice(0).join('');
    return stderr;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${args.join(' ')} did not start in ${timeoutMs} ms:\n${log()}`));
    }, timeoutMs);
    const onExit = (code: number | null, signal: string | null) => {
      clearTimeout(timer);
      reject(new Error(`${args.join(' ')} exited (${code ?? signal}) before listening:\n${log()}`));
    };
    child.once('exit', onExit);
    child.stderr?.on('data', (chunk: Buffer) => {
      chunks.push(chunk.toString());
      if (listening) return;
      const urls = [...log().matchAll(/"msg":"listening","url":"([^"]+)"/g)].map((m) => m[1] as string);
      if (urls.length >= listeners) {
        listening = true;
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve({ process: child, url: urls[0] as string, log });
      }
    });
  });
}

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`. */
export function stopProcess(child: ChildProcess, graceMs = 15_000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(full) : statSync(full).mtimeMs);
  }
  return newest;
}

/**
 * The service's build for benchmarking: `tsc -p tsconfig.build.json --outDir node_modules/.cache/hsm-kms-bench/dist`,
 * redone when any file in src/ is newer. A private output directory, so that a `npm run build` or clean by someone
 * else in the same checkout cannot pull dist/ away mid-run, and outside the linted and committed trees. Packages
 * resolve from the repository's node_modules; a package.json there marks the build as ES modules. Returns main.js.
 *
 * `outDir` overrides that directory. Git worktrees that share one node_modules (a symlink) also share the default:
 * a build from another worktree's src/ that is newer than this one's would be run as if it were this one's.
 */
export function ensureBuilt(
  log: (line: string) => void,
  outDir = path.join(REPO, 'node_modules', '.cache', 'hsm-kms-bench', 'dist'),
): string {
  const main = path.join(outDir, 'main.js');
  let built = 0;
  try {
    built = statSync(main).mtimeMs;
  } catch {
    built = 0;
  }
  if (built < newestMtime(path.join(REPO, 'src'))) {
    log(`${path.relative(REPO, outDir)} is missing or older than src/: building with tsc -p tsconfig.build.json`);
    execFileSync(
      process.execPath,
      [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', outDir],
      { cwd: REPO, stdio: 'inherit' },
    );
    writeFileSync(path.join(outDir, 'package.json'), '{ "type": "module" }\n');
  }
  return main;
}

export function machine(): Record<string, string> {
  const tryRun = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  const softhsm = /Version:\s*(\S+)/.exec(tryRun('dpkg', ['-s', 'softhsm2']))?.[1] ?? 'unknown';
  const cpu = /model name\s*:\s*(.+)/.exec(tryRun('cat', ['/proc/cpuinfo']))?.[1] ?? 'unknown';
  return { nproc: tryRun('nproc', []), cpu, node: process.version, softhsm2: softhsm };
}
