import type { AuditDraft } from '../../core/audit.js';
import type { DataKeyService } from '../../core/data-key.service.js';
import type { KeyService } from '../../core/key.service.js';
import type { KeyStoreService } from '../../core/key-store.service.js';
import type { PasswordService } from '../../core/password.service.js';
import type { RandomService } from '../../core/random.service.js';
import type { RateLimiter } from '../../core/rate-limiter.js';

/** The use cases the dialects call, and the deployment facts they report. */
export interface Services {
  readonly random: RandomService;
  readonly passwords: PasswordService;
  readonly keys: KeyService;
  readonly keyStores: KeyStoreService;
  readonly dataKeys: DataKeyService;
  readonly region: string;
  readonly cmkQuota: number;
  /** Admits a project's request of a class, or throws Throttled: every dialect asks once the caller is known. */
  readonly rateLimiter: RateLimiter;
}

/**
 * One Huawei action: the body as received (unvalidated) in, the response body out. `audit` is the request's audit
 * draft: an action that uses a key version says which (`usedKey`).
 */
export type HuaweiAction = (services: Services, projectId: string, body: unknown, audit: AuditDraft) => Promise<object>;
