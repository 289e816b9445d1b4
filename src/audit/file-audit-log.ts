import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import type { AuditEvent, AuditLog } from '../core/audit.js';
import { type ChainHead, chainRecord, EMPTY_CHAIN, parseLine } from './audit-chain.js';

export interface FileAuditLogOptions {
  readonly dir: string;
  /**
   * One chain per writer: each process writes its own slot's files and no other (the single process 0, cluster
   * workers 1..N, handed down by the primary), so that two processes never interleave writes into one chain.
   */
  readonly slot: number;
  /** A file is rotated once the next record would take it past this size; the next file continues the chain. */
  readonly maxBytes: number;
  /** fsync after every record: survives power loss, at the cost of a disk flush per request. */
  readonly fsync: boolean;
}

/** Why a request was refused: its record could not be written. Rendered as each dialect's internal error. */
export class AuditWriteError extends Error {
  constructor(cause: unknown) {
    super('the audit record could not be written', { cause });
    this.name = 'AuditWriteError';
  }
}

/** How much of a file's end is read to find its last record at start-up: records are well under 2 KiB. */
const TAIL_BYTES = 64 * 1024;

/**
 * The audit log as JSON-lines files `audit-<slot>-<nnnnnn>.jsonl` (src/audit/audit-chain.ts has the format), mode
 * 0600, appended with one synchronous write per record on a descriptor opened O_APPEND. A record is in the kernel
 * when `append` returns, so it survives the process crashing; with `fsync` it survives power loss too. At start the
 * chain resumes from the slot's newest record.
 */
export class FileAuditLog implements AuditLog {
  private fd: number | undefined;
  private fileNumber: number;
  private size = 0;
  private head: ChainHead;
  /** Set when a failed write may have left part of a record in the file: the next record starts a new file. */
  private abandoned = false;

  constructor(private readonly options: FileAuditLogOptions) {
    mkdirSync(options.dir, { recursive: true, mode: 0o700 });
    const resumed = resumeChain(options.dir, options.slot);
    this.head = resumed.head;
    this.fileNumber = resumed.fileNumber;
    // A file whose last record was cut short (a crash mid-write) is left as it is; verify names that record.
    if (resumed.cutShort) this.abandoned = true;
    else this.open();
  }

  /** The file the next record goes to (unless it rotates first). */
  get currentFile(): string {
    return fileName(this.options.dir, this.options.slot, this.fileNumber);
  }

  append(event: AuditEvent): void {
    const { line, head } = chainRecord(this.head, event);
    const bytes = Buffer.from(line, 'utf8');
    try {
      if (this.abandoned || this.fd === undefined) this.rotate();
      else if (this.size > 0 && this.size + bytes.length > this.options.maxBytes) this.rotate();
      this.write(this.fd as number, bytes);
    } catch (err) {
      throw new AuditWriteError(err);
    }
    this.head = head;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private write(fd: number, bytes: Buffer): void {
    const before = this.size;
    try {
      let written = 0;
      while (written < bytes.length) written += writeSync(fd, bytes, written);
      if (this.options.fsync) fsyncSync(fd);
      this.size += bytes.length;
    } catch (err) {
      // Part of the record may be in the file: the chain goes on in a new file, and verify names the broken one.
      this.abandoned = safeSize(fd) !== before;
      throw err;
    }
  }

  private rotate(): void {
    this.close();
    this.fileNumber++;
    this.abandoned = false;
    this.open();
  }

  private open(): void {
    this.fd = openSync(this.currentFile, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o600);
    this.size = fstatSync(this.fd).size;
  }
}

function fileName(dir: string, slot: number, fileNumber: number): string {
  return path.join(dir, `audit-${slot}-${String(fileNumber).padStart(6, '0')}.jsonl`);
}

function safeSize(fd: number): number | undefined {
  try {
    return fstatSync(fd).size;
  } catch {
    return undefined;
  }
}

/** The slot's files, oldest first: the order `kms audit verify` takes them in. */
export function auditFiles(dir: string, slot: number): string[] {
  const pattern = new RegExp(`^audit-${slot}-(\\d{6,})\\.jsonl$`);
  return readdirSync(dir)
    .map((name) => ({ name, match: pattern.exec(name) }))
    .filter((entry) => entry.match !== null)
    .sort((a, b) => Number(a.match?.[1]) - Number(b.match?.[1]))
    .map((entry) => path.join(dir, entry.name));
}

/** The newest file of the slot and the chain's head: its last complete record, or an earlier file's. */
function resumeChain(dir: string, slot: number): { head: ChainHead; fileNumber: number; cutShort: boolean } {
  const files = auditFiles(dir, slot);
  const newest = files.at(-1);
  const fileNumber = newest === undefined ? 1 : Number(/-(\d+)\.jsonl$/.exec(newest)?.[1]);
  for (const file of files.reverse()) {
    const tail = readTail(file);
    if (tail.length === 0) continue;
    const lines = tail.split('\n');
    const cutShort = file === newest && lines.at(-1) !== '';
    const complete = lines.slice(0, -1).filter((line) => line !== '');
    const last = complete.at(-1);
    if (last === undefined) continue;
    const record = parseLine(last);
    if (!record.ok) throw new Error(`cannot resume the audit chain from ${file}: ${record.reason}`);
    return { head: { seq: record.seq, hash: record.hash }, fileNumber, cutShort };
  }
  return { head: EMPTY_CHAIN, fileNumber, cutShort: false };
}

function readTail(file: string): string {
  const fd = openSync(file, constants.O_RDONLY);
  try {
    const stat = fstatSync(fd);
    // Only regular files are read: a device standing in for the log has no records to resume from.
    if (!stat.isFile()) return '';
    const length = Math.min(stat.size, TAIL_BYTES);
    const buffer = Buffer.alloc(length);
    readSync(fd, buffer, 0, length, stat.size - length);
    return buffer.toString('utf8');
  } finally {
    closeSync(fd);
  }
}
