import { randomBytes } from 'node:crypto';
import { KmsError, needs } from './errors.js';
import {
  ConnectionFailure,
  type ConnectionOffer,
  type ConnectionState,
  type KeyStoreRecord,
  MAX_KEY_STORES_PER_PROJECT,
  pinAad,
  STORE_ROOT_KEY_LABEL,
} from './key-stores.js';
import type { KeyRecord } from './keys.js';
import type { Clock, Hsm, KeyStoreConnector, MetadataStore } from './ports.js';

/** AWS's bounds on KeyStorePassword (the token user's PIN). */
const MIN_PIN_LENGTH = 7;
const MAX_PIN_LENGTH = 32;
/** AWS's bound on TrustAnchorCertificate. */
export const MAX_TRUST_ANCHOR_LENGTH = 5000;
export const MAX_KEY_STORE_NAME_LENGTH = 256;
/**
 * How long a process waits before trying again to open a connected store's token after it failed to: a token that
 * is down is not asked again on every request.
 */
const REOPEN_BACKOFF_MS = 1_000;

export interface CreateKeyStoreInput {
  readonly projectId: string;
  readonly name: string;
  readonly connectionId: string;
  readonly trustAnchorCertificate: string;
  /** The token user's PIN; the caller zeroes it afterwards. */
  readonly pin: Buffer;
}

export interface UpdateKeyStoreInput {
  readonly name?: string;
  readonly connectionId?: string;
  readonly pin?: Buffer;
}

/**
 * How often a process looks whether the stores it holds open are still connected, and closes those that are not:
 * a store disconnected through another process is logged out of here within this time even if no request uses it.
 */
const OPEN_STORES_CHECK_MS = 2_000;

/**
 * This process's session to a store's token (or the failure of the last attempt to open it, and when), for the
 * connection that began at `connectedAt`.
 */
type OpenStore = { readonly projectId: string; readonly connectedAt: number | null } & (
  | { readonly hsm: Promise<Hsm> }
  | { readonly failedAt: number; readonly error: unknown }
);

/**
 * Tenants' key stores (src/core/key-stores.ts): their records, their connection state machine (AWS's: connect is
 * asynchronous, the state says how it went), and the HSM each store's keys and random bytes come from. A key of a
 * store is only ever used on its store's token: when that is not connected, the operation fails, never falling
 * back to another HSM.
 *
 * The record in the metadata store is the truth every process follows: the process that connects a store opens its
 * token and records CONNECTED; the others open their own session to it on first use, and close it when they see the
 * store is no longer connected.
 */
export class KeyStoreService {
  readonly #open = new Map<string, OpenStore>();
  /** Connection attempts under way in this process, so that tests and shutdown can wait for them. */
  readonly #connecting = new Set<Promise<void>>();
  #closed = false;
  readonly #checker: NodeJS.Timeout;

  constructor(
    private readonly defaultHsm: Hsm,
    private readonly store: MetadataStore,
    private readonly connector: KeyStoreConnector,
    private readonly clock: Clock,
  ) {
    this.#checker = setInterval(() => void this.closeDisconnected(), OPEN_STORES_CHECK_MS).unref();
  }

  /** The connections offered to the project, by id. */
  offersFor(projectId: string): ConnectionOffer[] {
    return this.connector.offers.filter((offer) => offer.projects === undefined || offer.projects.includes(projectId));
  }

  /**
   * A new store, DISCONNECTED, on a connection offered to the project. The PIN is sealed under the default HSM at
   * once. As on AWS, asking again for a disconnected store with the same name, connection and trust anchor gives the
   * existing one.
   */
  async create(input: CreateKeyStoreInput): Promise<KeyStoreRecord> {
    checkName(input.name);
    checkPin(input.pin);
    needs(
      input.trustAnchorCertificate.length <= MAX_TRUST_ANCHOR_LENGTH,
      `The trust anchor certificate must be at most ${MAX_TRUST_ANCHOR_LENGTH} characters.`,
    );
    const offer = this.#offer(input.projectId, input.connectionId);
    const existing = await this.store.findKeyStoreByName(input.projectId, input.name);
    if (
      existing?.connectionState === 'DISCONNECTED' &&
      existing.connectionId === input.connectionId &&
      existing.trustAnchorCertificate === input.trustAnchorCertificate
    ) {
      return existing;
    }
    const id = `cks-${randomBytes(9).toString('hex').slice(0, 17)}`;
    const record: KeyStoreRecord = {
      id,
      projectId: input.projectId,
      name: input.name,
      connectionId: offer.id,
      keyScheme: offer.keyScheme,
      trustAnchorCertificate: input.trustAnchorCertificate,
      sealedPin: await this.defaultHsm.sealSecret(input.pin, pinAad(id)),
      connectionState: 'DISCONNECTED',
      connectionErrorCode: null,
      rootTokenId: null,
      connectedAt: null,
      createdAt: this.clock.now(),
    };
    await this.store.insertKeyStore(record, MAX_KEY_STORES_PER_PROJECT);
    return record;
  }

  /** A store of the project; a foreign or unknown store is KeyStoreNotFound, indistinguishably. */
  async get(projectId: string, keyStoreId: string): Promise<KeyStoreRecord> {
    const found = await this.store.findKeyStore(projectId, keyStoreId);
    if (!found) throw notFound(keyStoreId);
    return found;
  }

  async getByName(projectId: string, name: string): Promise<KeyStoreRecord> {
    const found = await this.store.findKeyStoreByName(projectId, name);
    if (!found) throw new KmsError('KeyStoreNotFound', `Custom key store named '${name}' does not exist.`);
    return found;
  }

  list(projectId: string, offset: number, limit: number): Promise<{ stores: KeyStoreRecord[]; total: number }> {
    return this.store.listKeyStores(projectId, offset, limit);
  }

  /** How many keys (in any state) the store holds: what AWS and Alibaba report, and what blocks deletion. */
  countKeys(keyStoreId: string): Promise<number> {
    return this.store.countKeysInStore(keyStoreId);
  }

  /**
   * Starts connecting the store and returns at once, as AWS does: the state is CONNECTING until the token is open
   * and has passed its self-test (CONNECTED), or FAILED with the reason. Connecting a store that is connected or
   * connecting changes nothing; one that is FAILED must be disconnected first.
   */
  async connect(projectId: string, keyStoreId: string): Promise<void> {
    const current = await this.get(projectId, keyStoreId);
    if (current.connectionState === 'CONNECTED' || current.connectionState === 'CONNECTING') return;
    if (current.connectionState !== 'DISCONNECTED') throw invalidState(current, 'ConnectCustomKeyStore');
    const connecting = await this.store.updateKeyStore(projectId, keyStoreId, ['DISCONNECTED'], {
      connectionState: 'CONNECTING',
      connectionErrorCode: null,
    });
    // Another process moved it meanwhile: answer as if this request had come after that.
    if (!connecting) return this.connect(projectId, keyStoreId);
    this.#startConnecting(connecting);
  }

  /** Closes the store's token in this process and records it DISCONNECTED; the other processes follow on next use. */
  async disconnect(projectId: string, keyStoreId: string): Promise<void> {
    const current = await this.get(projectId, keyStoreId);
    if (current.connectionState === 'DISCONNECTED' || current.connectionState === 'DISCONNECTING') {
      throw invalidState(current, 'DisconnectCustomKeyStore');
    }
    const updated = await this.store.updateKeyStore(projectId, keyStoreId, [current.connectionState], {
      connectionState: 'DISCONNECTED',
      connectionErrorCode: null,
    });
    if (!updated) return this.disconnect(projectId, keyStoreId);
    await this.#close(keyStoreId);
  }

  /**
   * Renames the store (in any state), or, while it is disconnected, gives it a new PIN. Its connection cannot
   * change: the keys are on that connection's token (AWS allows only a cluster sharing its backups).
   */
  async update(projectId: string, keyStoreId: string, change: UpdateKeyStoreInput): Promise<KeyStoreRecord> {
    if (change.name !== undefined) checkName(change.name);
    if (change.pin !== undefined) checkPin(change.pin);
    const current = await this.get(projectId, keyStoreId);
    if (change.connectionId !== undefined && change.connectionId !== current.connectionId) {
      this.#offer(projectId, change.connectionId);
      throw new KmsError(
        'ConnectionNotRelated',
        `The connection ${change.connectionId} does not hold the keys of custom key store ${keyStoreId}.`,
      );
    }
    const onlyName = change.pin === undefined && change.connectionId === undefined;
    const states: readonly ConnectionState[] = onlyName
      ? ['CONNECTED', 'CONNECTING', 'FAILED', 'DISCONNECTED', 'DISCONNECTING']
      : ['DISCONNECTED'];
    if (!states.includes(current.connectionState)) throw invalidState(current, 'UpdateCustomKeyStore');
    const updated = await this.store.updateKeyStore(projectId, keyStoreId, states, {
      ...(change.name === undefined ? {} : { name: change.name }),
      ...(change.pin === undefined
        ? {}
        : { sealedPin: await this.defaultHsm.sealSecret(change.pin, pinAad(keyStoreId)) }),
    });
    if (!updated) throw invalidState(await this.get(projectId, keyStoreId), 'UpdateCustomKeyStore');
    return updated;
  }

  /** Deletes a disconnected store that holds no key (not even one pending deletion). Its token is not touched. */
  async delete(projectId: string, keyStoreId: string): Promise<void> {
    const current = await this.get(projectId, keyStoreId);
    if (current.connectionState !== 'DISCONNECTED') throw invalidState(current, 'DeleteCustomKeyStore');
    switch (await this.store.deleteKeyStore(projectId, keyStoreId, ['DISCONNECTED'])) {
      case 'deleted':
        return;
      case 'not-found':
        throw notFound(keyStoreId);
      case 'has-keys':
        throw new KmsError(
          'KeyStoreHasKeys',
          `Custom key store ${keyStoreId} still contains KMS keys. Schedule their deletion and wait until they are deleted.`,
        );
      case 'invalid-state':
        throw invalidState(await this.get(projectId, keyStoreId), 'DeleteCustomKeyStore');
    }
  }

  /** The HSM of a connected store of the project, for creating a key or drawing random bytes in it. */
  async connectedHsm(
    projectId: string,
    keyStoreId: string,
    operation: string,
  ): Promise<{ store: KeyStoreRecord; hsm: Hsm }> {
    const store = await this.get(projectId, keyStoreId);
    if (store.connectionState !== 'CONNECTED') throw invalidState(store, operation);
    return { store, hsm: await this.#hsmOf(store) };
  }

  /** The HSM a key lives in: the default one, or its store's, which must be connected. */
  async hsmFor(key: KeyRecord): Promise<Hsm> {
    if (key.keyStoreId === null) return this.defaultHsm;
    const store = await this.store.findKeyStore(key.projectId, key.keyStoreId);
    if (store?.connectionState !== 'CONNECTED') {
      if (store) await this.#close(store.id);
      throw new KmsError(
        'KeyStoreNotConnected',
        `${key.id} is unavailable because its custom key store ${key.keyStoreId} is not connected.`,
      );
    }
    return this.#hsmOf(store);
  }

  /**
   * What a process does at start-up (primary or single): finishes connections a crash left CONNECTING and records
   * stores left DISCONNECTING as DISCONNECTED.
   */
  async resumeConnections(): Promise<void> {
    for (const store of await this.store.listKeyStoresIn(['CONNECTING', 'DISCONNECTING'])) {
      if (store.connectionState === 'CONNECTING') this.#startConnecting(store);
      else
        await this.store.updateKeyStore(store.projectId, store.id, ['DISCONNECTING'], {
          connectionState: 'DISCONNECTED',
        });
    }
  }

  /** Resolves when every connection attempt this process started has settled (tests; shutdown). */
  async settled(): Promise<void> {
    while (this.#connecting.size > 0) await Promise.allSettled([...this.#connecting]);
  }

  /** Closes this process's sessions to stores that are no longer connected, or were connected again since. */
  async closeDisconnected(): Promise<void> {
    for (const [id, open] of [...this.#open]) {
      const current = await this.store.findKeyStore(open.projectId, id).catch(() => undefined);
      if (current?.connectionState !== 'CONNECTED' || current.connectedAt !== open.connectedAt) await this.#close(id);
    }
  }

  async close(): Promise<void> {
    clearInterval(this.#checker);
    this.#closed = true;
    await this.settled();
    await Promise.all([...this.#open.keys()].map((id) => this.#close(id)));
  }

  #offer(projectId: string, connectionId: string): ConnectionOffer {
    const offer = this.offersFor(projectId).find((o) => o.id === connectionId);
    if (!offer) {
      throw new KmsError('ConnectionNotFound', `No HSM connection with id ${connectionId} is offered to this project.`);
    }
    return offer;
  }

  #startConnecting(store: KeyStoreRecord): void {
    const attempt = this.#establish(store).finally(() => this.#connecting.delete(attempt));
    this.#connecting.add(attempt);
  }

  /** Opens the token, makes or checks the store's root key, and records how it went. Never throws. */
  async #establish(store: KeyStoreRecord): Promise<void> {
    await this.#close(store.id);
    let hsm: Hsm | undefined;
    try {
      hsm = await this.#openToken(store);
      const rootTokenId = store.keyScheme === 'wrapped' ? await this.#checkRoot(hsm, store) : store.rootTokenId;
      const connected = await this.store.updateKeyStore(store.projectId, store.id, ['CONNECTING'], {
        connectionState: 'CONNECTED',
        connectionErrorCode: null,
        rootTokenId,
        connectedAt: this.clock.now(),
      });
      if (connected && !this.#closed) {
        this.#open.set(store.id, {
          projectId: store.projectId,
          connectedAt: connected.connectedAt,
          hsm: Promise.resolve(hsm),
        });
        return;
      }
      await hsm.close();
    } catch (err) {
      await hsm?.close().catch(() => undefined);
      const code = err instanceof ConnectionFailure ? err.code : 'INTERNAL_ERROR';
      await this.store
        .updateKeyStore(store.projectId, store.id, ['CONNECTING'], {
          connectionState: 'FAILED',
          connectionErrorCode: code,
        })
        .catch(() => undefined);
    }
  }

  async #checkRoot(hsm: Hsm, store: KeyStoreRecord): Promise<Buffer> {
    if (store.rootTokenId === null) return hsm.ensureRootKey(STORE_ROOT_KEY_LABEL);
    await hsm.checkRootKey(STORE_ROOT_KEY_LABEL, store.rootTokenId);
    return store.rootTokenId;
  }

  async #openToken(store: KeyStoreRecord): Promise<Hsm> {
    const pin = await this.defaultHsm.openSecret(store.sealedPin, pinAad(store.id));
    try {
      return await this.connector.connect(store.connectionId, pin);
    } finally {
      pin.fill(0);
    }
  }

  /** This process's session to a connected store's token, opened on first use. */
  async #hsmOf(store: KeyStoreRecord): Promise<Hsm> {
    let open = this.#open.get(store.id);
    if (open && open.connectedAt !== store.connectedAt) {
      // Opened for an earlier connection: the tenant may have changed the PIN in between.
      await this.#close(store.id);
      open = undefined;
    }
    if (open && 'hsm' in open) return open.hsm;
    if (open && this.clock.now() - open.failedAt < REOPEN_BACKOFF_MS) throw unavailable(store, open.error);
    const which = { projectId: store.projectId, connectedAt: store.connectedAt };
    const hsm = this.#openToken(store);
    this.#open.set(store.id, { ...which, hsm });
    try {
      return await hsm;
    } catch (err) {
      this.#open.set(store.id, { ...which, failedAt: this.clock.now(), error: err });
      throw unavailable(store, err);
    }
  }

  async #close(keyStoreId: string): Promise<void> {
    const open = this.#open.get(keyStoreId);
    this.#open.delete(keyStoreId);
    if (open && 'hsm' in open) await (await open.hsm.catch(() => undefined))?.close();
  }
}

function checkName(name: string): void {
  needs(
    name.length >= 1 && name.length <= MAX_KEY_STORE_NAME_LENGTH,
    `The custom key store name must be 1 to ${MAX_KEY_STORE_NAME_LENGTH} characters.`,
  );
}

function checkPin(pin: Buffer): void {
  needs(
    pin.length >= MIN_PIN_LENGTH && pin.length <= MAX_PIN_LENGTH,
    `The key store password must be ${MIN_PIN_LENGTH} to ${MAX_PIN_LENGTH} characters.`,
  );
}

function notFound(keyStoreId: string): KmsError {
  return new KmsError('KeyStoreNotFound', `Custom key store ${keyStoreId} does not exist.`);
}

function invalidState(store: KeyStoreRecord, operation: string): KmsError {
  return new KmsError(
    'KeyStoreInvalidState',
    `${operation} is not valid for custom key store ${store.id}, whose ConnectionState is ${store.connectionState}.`,
  );
}

function unavailable(store: KeyStoreRecord, cause: unknown): KmsError {
  const reason = cause instanceof ConnectionFailure ? ` (${cause.code})` : '';
  return new KmsError('HsmUnavailable', `The HSM of custom key store ${store.id} cannot be reached${reason}.`, {
    cause,
  });
}
