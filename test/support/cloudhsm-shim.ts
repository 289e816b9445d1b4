import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The C source of the CloudHSM-rules PKCS#11 module; its header comment lists the rules and the env it reads. */
export const CLOUDHSM_SHIM_SOURCE = fileURLToPath(new URL('./cloudhsm-shim/cloudhsm-shim.c', import.meta.url));

const GCC_FLAGS = ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-Werror'] as const;

/**
 * Compiles the shim with the machine's gcc and returns the path of the shared library. The build is cached under
 * `cacheRoot` (the temp directory) by a hash of the source and flags, so only the first test file of a run pays for
 * gcc (about a second); vitest workers that build at once each write a file of their own and rename it into place,
 * which is atomic, so none ever loads a half-written library.
 */
export function buildCloudHsmShim(cacheRoot: string = tmpdir()): string {
  const source = readFileSync(CLOUDHSM_SHIM_SOURCE);
  const hash = createHash('sha256').update(GCC_FLAGS.join(' ')).update('\0').update(source).digest('hex');
  const dir = path.join(cacheRoot, `hsm-kms-cloudhsm-shim-${hash.slice(0, 16)}`);
  const library = path.join(dir, 'libcloudhsm-shim.so');
  if (existsSync(library)) return library;

  mkdirSync(dir, { recursive: true });
  const partial = `${library}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    execFileSync('gcc', [...GCC_FLAGS, '-o', partial, CLOUDHSM_SHIM_SOURCE, '-ldl'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    rmSync(partial, { force: true });
    const { code, stderr } = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (code === 'ENOENT') {
      throw new Error('gcc not found: the CloudHSM-rules shim is built from C source (apt-get install gcc libc6-dev)');
    }
    throw new Error(`gcc failed to build ${CLOUDHSM_SHIM_SOURCE}:\n${stderr?.toString() ?? String(err)}`);
  }
  renameSync(partial, library);
  return library;
}
