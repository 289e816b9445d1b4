import { createHash } from 'node:crypto';
import type { AuditEvent } from '../core/audit.js';

/**
 * The audit log's line format (JSON lines, one record a line):
 *
 *   {"v":1,"seq":<n>,"prev":"<hash of record n-1>",<the event's fields, in AuditEvent's order>,"hash":"<hash>"}
 *
 * `hash` is hex SHA-256 over the ASCII hex of `prev` followed by the record's canonical bytes: the line exactly as
 * written, without its `,"hash":"…"` member (so its bytes end with the last field's value and `}`). Hashing the bytes
 * as written, not a re-serialisation, makes any changed byte a broken record. The first record (seq 1) chains to
 * GENESIS; a rotated file's first record chains to the previous file's last, so files verify as one chain.
 */
export const AUDIT_FORMAT_VERSION = 1;
export const GENESIS_HASH = '0'.repeat(64);

const HASH_SUFFIX = /,"hash":"([0-9a-f]{64})"\}$/;

/** The end of a chain: the last record's sequence number and hash. */
export interface ChainHead {
  readonly seq: number;
  readonly hash: string;
}

export const EMPTY_CHAIN: ChainHead = { seq: 0, hash: GENESIS_HASH };

export function recordHash(prev: string, canonical: string): string {
  return createHash('sha256').update(prev).update(canonical).digest('hex');
}

/** The line (with its newline) that appends `event` to the chain ending at `head`, and the new head. */
export function chainRecord(head: ChainHead, event: AuditEvent): { line: string; head: ChainHead } {
  const seq = head.seq + 1;
  // Fixed member order; absent values as null, so that every record has every field.
  const canonical = JSON.stringify({
    v: AUDIT_FORMAT_VERSION,
    seq,
    prev: head.hash,
    time: event.time,
    dialect: event.dialect,
    requestId: event.requestId ?? null,
    source: event.source ?? null,
    caller: event.caller ?? null,
    projectId: event.projectId ?? null,
    operation: event.operation ?? null,
    keyId: event.keyId ?? null,
    keyVersion: event.keyVersion ?? null,
    outcome: event.outcome,
    status: event.status,
    errorCode: event.errorCode ?? null,
  });
  const hash = recordHash(head.hash, canonical);
  return { line: `${canonical.slice(0, -1)},"hash":"${hash}"}\n`, head: { seq, hash } };
}

/** A line's record checked on its own: its hash over its bytes, and the seq and prev it claims. */
export type ParsedLine =
  | { readonly ok: true; readonly seq: number; readonly prev: string; readonly hash: string }
  | { readonly ok: false; readonly reason: string };

export function parseLine(line: string): ParsedLine {
  const suffix = HASH_SUFFIX.exec(line);
  if (!suffix) return { ok: false, reason: 'not a record: no hash member at the end of the line' };
  const hash = suffix[1] as string;
  const canonical = `${line.slice(0, suffix.index)}}`;
  let fields: { v?: unknown; seq?: unknown; prev?: unknown };
  try {
    fields = JSON.parse(canonical) as typeof fields;
  } catch {
    return { ok: false, reason: 'not a record: the line is not JSON' };
  }
  if (fields.v !== AUDIT_FORMAT_VERSION) return { ok: false, reason: `unknown record version ${String(fields.v)}` };
  if (typeof fields.seq !== 'number' || typeof fields.prev !== 'string') {
    return { ok: false, reason: 'not a record: seq or prev missing' };
  }
  if (recordHash(fields.prev, canonical) !== hash) {
    return { ok: false, reason: 'the record does not match its hash (altered)' };
  }
  return { ok: true, seq: fields.seq, prev: fields.prev, hash };
}
