import type { IncomingMessage } from 'node:http';
import { type AuditDialect, AuditDraft, type AuditLog } from '../core/audit.js';

/**
 * One dialect's side of the audit trail: a draft per request, filled as the request is handled, written as a record
 * just before the answer is sent. Without a log (KMS_AUDIT_ENABLED=false) it writes nothing.
 */
export class RequestAuditor {
  constructor(
    private readonly log: AuditLog | undefined,
    private readonly dialect: AuditDialect,
  ) {}

  draft(): AuditDraft {
    return new AuditDraft();
  }

  /**
   * Writes the request's record; throws (AuditWriteError) when it cannot, and the caller must then answer with an
   * internal error instead of what it was about to send.
   */
  record(
    req: IncomingMessage,
    requestId: string | undefined,
    draft: AuditDraft,
    status: number,
    errorCode?: string,
  ): void {
    this.log?.append({
      time: new Date().toISOString(),
      dialect: this.dialect,
      requestId,
      source: req.socket.remoteAddress,
      caller: draft.caller,
      projectId: draft.projectId,
      operation: draft.operation,
      keyId: draft.keyId,
      keyVersion: draft.keyVersion,
      outcome: status < 400 ? 'ok' : 'error',
      status,
      errorCode,
    });
  }
}
