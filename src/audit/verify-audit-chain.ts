import { readFileSync } from 'node:fs';
import { type ChainHead, EMPTY_CHAIN, parseLine } from './audit-chain.js';

export type ChainVerdict =
  | { readonly ok: true; readonly count: number; readonly head: ChainHead }
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
 */
export function verifyAuditFiles(files: readonly string[]): ChainVerdict {
  let head = EMPTY_CHAIN;
  let count = 0;
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const lines = text.split('\n');
    // A complete file ends with a newline: the last piece is empty. A non-empty one is a record cut short.
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
    if (last !== undefined && last !== '') return broken(lines.length, 'the last line is cut short (no newline)');
  }
  return { ok: true, count, head };
}
