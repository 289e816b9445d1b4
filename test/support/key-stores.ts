import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Hsm } from '../../src/core/ports.js';
import { type AnyTestToken, addSoftHsmToken, createTestToken, type NssTestToken, removeTestToken } from './softhsm.js';
import { startTestService, type TestService, type TestServiceOptions } from './test-service.js';

/** A tenant's token the operator offers as a connection. */
export interface TenantConnection {
  /** The connection id (AWS CloudHsmClusterId, Huawei hsm_cluster_id). */
  readonly id: string;
  readonly token: AnyTestToken;
  /** The token user's PIN: what the tenant gives as KeyStorePassword. */
  readonly pin: string;
  readonly keyScheme: 'token-object' | 'wrapped';
}

/** Calls made on each store's HSM adapter, by connection id and method name. */
export type HsmCallCounts = Map<string, Map<string, number>>;

export interface KeyStoreTestService {
  readonly kms: TestService;
  /** A second SoftHSM token, keys kept as token objects (the AWS way), offered to every project. */
  readonly softhsm: TenantConnection;
  /** A third SoftHSM token, keys wrapped under the store's root (the Alibaba HsmEncryptedDatabase way). */
  readonly softhsmWrapped: TenantConnection;
  /** NSS softokn, a second PKCS#11 implementation, keys kept as token objects. */
  readonly nss: TenantConnection;
  /** A SoftHSM token offered only to project `restricted-project`. */
  readonly restricted: TenantConnection;
  readonly calls: HsmCallCounts;
  destroy(): Promise<void>;
}

export const RESTRICTED_PROJECT = 'restricted-project';

/**
 * The real service on a fresh default SoftHSM token, with four tenant tokens the operator offers in
 * KMS_KEY_STORE_CONNECTIONS_FILE. Every store's adapter is wrapped to count its calls (`calls`).
 */
export async function startKeyStoreTestService(
  extraEnv: Record<string, string> = {},
  options: Pick<TestServiceOptions, 'onLog'> = {},
): Promise<KeyStoreTestService> {
  let tenants:
    | { softhsm: TenantConnection; softhsmWrapped: TenantConnection; restricted: TenantConnection }
    | undefined;
  const nssToken: NssTestToken = createTestToken('nss');
  const nss: TenantConnection = {
    id: 'cluster-nsssoftokntenant',
    token: nssToken,
    pin: nssToken.pin,
    keyScheme: 'token-object',
  };
  const calls: HsmCallCounts = new Map();
  const kms = await startTestService(extraEnv, {
    ...options,
    prepare: (token) => {
      if (token.provider !== 'softhsm') throw new Error('key store tests run on a SoftHSM default token');
      const tenant = (id: string, keyScheme: TenantConnection['keyScheme']): TenantConnection => {
        const added = addSoftHsmToken(token);
        return { id, token: added, pin: added.pin, keyScheme };
      };
      tenants = {
        softhsm: tenant('cluster-softhsmtenant', 'token-object'),
        softhsmWrapped: tenant('cluster-softhsmwrapped', 'wrapped'),
        restricted: tenant('cluster-restrictedonly', 'token-object'),
      };
      const file = path.join(token.dir, 'connections.json');
      const entry = (c: TenantConnection, projects?: string[]) => ({
        id: c.id,
        library: c.token.library,
        tokenLabel: c.token.tokenLabel,
        ...(c.token.initParams ? { initParams: c.token.initParams } : {}),
        keyScheme: c.keyScheme,
        ...(projects ? { projects } : {}),
      });
      writeFileSync(
        file,
        JSON.stringify([
          entry(tenants.softhsm),
          entry(tenants.softhsmWrapped),
          entry(nss),
          entry(tenants.restricted, [RESTRICTED_PROJECT]),
        ]),
      );
      return { KMS_KEY_STORE_CONNECTIONS_FILE: file };
    },
    wrapKeyStoreHsm: (connectionId, hsm) => countingHsm(hsm, connectionId, calls),
  });
  if (!tenants) throw new Error('prepare was not called');
  return {
    kms,
    ...tenants,
    nss,
    calls,
    async destroy() {
      await kms.destroy();
      removeTestToken(nssToken.dir);
    },
  };
}

/** The real adapter, counting each method call by name. */
function countingHsm(hsm: Hsm, connectionId: string, calls: HsmCallCounts): Hsm {
  const counts = calls.get(connectionId) ?? new Map<string, number>();
  calls.set(connectionId, counts);
  return new Proxy(hsm, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== 'function' || typeof property !== 'string') return value;
      return (...args: unknown[]) => {
        counts.set(property, (counts.get(property) ?? 0) + 1);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

/** How many times `method` was called on the adapters of the connection. */
export function callCount(calls: HsmCallCounts, connectionId: string, method: string): number {
  return calls.get(connectionId)?.get(method) ?? 0;
}
