import { readFileSync } from 'node:fs';
import { type ChainHead, EMPTY_CHAIN, parseLine } from './audit-chain.js';

/** Where a file ends in part of a record: a process stopped in mid-write (or the file is being written now). */
export interface CutShort {
  readonly file: string;
  readonly line: number;
}

export type ChainVerdict =
  | { readonly ok: true; readonly count: number; readonly head: ChainHead; readonly cutShort: readonly CutShort[] }
  | {
      readonly ok: false;
      readonly file: string;
      /** 1-based line number in `file`. */
      readonly line: number;
      /** The sequence number the record should have had. */
      readonly expectedSeq: number;
      readonly reason: string;
    };

/**
 * Checks audit files as one chain, in the order given (a slot's files after rotation: oldest first). The chain must
 * start at seq 1 from the genesis hash, so that a deleted first record is seen too. Stops at the first broken record.
 *
 * A file may end in part of a record, without its newline: a process that died in mid-write leaves that, and the
 * process that takes its slot over goes on in a new file from the last whole record (src/audit/file-audit-log.ts).
 * That part was never a record (its request was never answered), so it breaks nothing; it is reported, not failed.
 * Anywhere else, a line that is not a whole record is a broken record.
 */
export function verifyAuditFiles(files: readonly string[]): ChainVerdict {
  let head = EMPTY_CHAIN;
  let count = 0;
  const cutShort: CutShort[] = [];
  for (const file of files) {
    const lines = readFileSync(file, 'utf8').split('\n');
    // A file ends with a newline: the last piece is empty. A non-empty one is a record cut short.
    const last = lines.pop();
    const broken = (index: number, reason: string): ChainVerdict => ({
      ok: false,
      file,
      line: index + 1,
      expectedSeq: head.seq + 1,
      reason,
    });
    for (const [index, line] of lines.entries()) {
      const record = parseLine(line);
      if (!record.ok) return broken(index, record.reason);
      if (record.seq !== head.seq + 1) {
        return broken(index, `sequence ${record.seq} where ${head.seq + 1} was due (a record deleted or moved)`);
      }
      if (record.prev !== head.hash) {
        return broken(index, 'prev is not the hash of the record before it (a record deleted, moved or replaced)');
      }
      head = { seq: record.seq, hash: record.hash };
      count++;
    }
    if (last !== undefined && last !== '') cutShort.push({ file, line: lines.length + 1 });
  }
  return { ok: true, count, head, cutShort };
}
