import { KmsError } from '../../core/errors.js';
import type { KeyRecord, KeyRef } from '../../core/keys.js';
import type { Services } from '../huawei/context.js';
import { aliasNotFound } from './errors.js';
import type { Caller } from './wire.js';

/** A KeyId given as an alias that names nothing is Alibaba's Forbidden.AliasNotFound, not KeyNotFound. */
export function aliasAware(ref: KeyRef) {
  return (err: unknown): never => {
    if (ref.kind === 'alias' && err instanceof KmsError && err.code === 'KeyNotFound') throw aliasNotFound();
    throw err;
  };
}

export function getKey(services: Services, caller: Caller, ref: KeyRef): Promise<KeyRecord> {
  return services.keys.get(caller.projectId, ref).catch(aliasAware(ref));
}
