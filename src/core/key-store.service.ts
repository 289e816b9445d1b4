import { randomBytes } from 'node:crypto';
import { KmsError, needs } from './errors.js';
import {
  ConnectionFailure,
  type ConnectionOffer,
  type ConnectionState,
  type KeyStoreRecord,
  MAX_KEY_STORE_NAME_LENGTH,
  MAX_KEY_STORES_PER_PROJECT,
  MAX_PIN_LENGTH,
  MAX_TRUST_ANCHOR_LENGTH,
  MIN_PIN_LENGTH,
  pinAad,
  STORE_ROOT_KEY_LABEL,
} from './key-stores.js';
import type { KeyRecord } from './keys.js';
import type { Clock, Hsm, KeyStoreConnector, MetadataStore } from './ports.js';

/**
 * How long a process waits before trying again to open a connected store's token after it failed to: a token that
 * is down is not asked again on every request.
 */
const REOPEN_BACKOFF_MS = 1_000;
/**
 * How long a connection may stay CONNECTING before a new connect takes it over (its process died, say). Opening a
 * token takes well under a second.
 */
export const STALE_CONNECTING_MS = 60_000;
/**
 * How often a process looks whether the stores it holds open are still connected, and closes those that are not:
 * a store disconnected through another process is logged out of here within this time even if no request uses it.
 */
const OPEN_STORES_CHECK_MS = 2_000;

/** The login failures that retrying would only repeat, and that could lock the tenant's HSM user out. */
const CREDENTIAL_FAILURES: ReadonlySet<string> = new Set(['INVALID_CREDENTIALS', 'USER_LOCKED_OUT']);

const ALL_STATES: readonly ConnectionState[] = ['CONNECTED', 'CONNECTING', 'FAILED', 'DISCONNECTED', 'DISCONNECTING'];

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
 * Run in the connecting process once the store's token is open, before the store is recorded CONNECTED: cleans up
 * keys whose creation in the store was interrupted (KeyService.reconcileStore).
 */
export type BeforeConnected = (store: KeyStoreRecord, hsm: Hsm) => Promise<void>;

/**
 * This process's session to a store's token (or the failure of the last attempt to open it, and when), for the
 * connection numbered `epoch`.
 */
type OpenStore = { readonly projectId: string; readonly epoch: number } & (
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
 * store is no longer connected, or connected again since (a new epoch).
 */
export class KeyStoreService {
  readonly #open = new Map<string, OpenStore>();
  /** Connection attempts under way in this process, so that tests and shutdown can wait for them. */
  readonly #connecting = new Set<Promise<void>>();
  #closed = false;
  #checker: NodeJS.Timeout | undefined;
  #beforeConnected: BeforeConnected = async () => undefined;

  /** `tokenObjectLabel`: what a key's token object is labelled with in a `token-object` store (its ARN). */
  constructor(
    private readonly defaultHsm: Hsm,
    private readonly store: MetadataStore,
    private readonly connector: KeyStoreConnector,
    private readonly clock: Clock,
    readonly tokenObjectLabel: (key: KeyRecord) => string,
  ) {}

  /** Starts closing, every few seconds, this process's sessions to stores disconnected elsewhere. */
  watchOpenStores(): void {
    this.#checker ??= setInterval(() => void this.closeDisconnected(), OPEN_STORES_CHECK_MS).unref();
  }

  /** What the connecting process runs before it records a store CONNECTED. */
  onBeforeConnected(hook: BeforeConnected): void {
    this.#beforeConnected = hook;
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
    const now = this.clock.now();
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
      connectionEpoch: 0,
      stateChangedAt: now,
      createdAt: now,
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
   * connecting changes nothing (unless that connection was abandoned: then this one takes over); one that is FAILED
   * must be disconnected first.
   */
  async connect(projectId: string, keyStoreId: string): Promise<void> {
    for (;;) {
      const current = await this.get(projectId, keyStoreId);
      if (current.connectionState === 'CONNECTED') return;
      if (current.connectionState === 'CONNECTING' && !this.#abandoned(current)) return;
      if (current.connectionState === 'FAILED' || current.connectionState === 'DISCONNECTING') {
        throw invalidState(current, 'ConnectCustomKeyStore');
      }
      // False when another process moved it meanwhile: answer as if this request had come after that.
      if (await this.#beginConnecting(current)) return;
    }
  }

  /** Closes the store's token in this process and records it DISCONNECTED; the other processes follow shortly. */
  async disconnect(projectId: string, keyStoreId: string): Promise<void> {
    for (;;) {
      const current = await this.get(projectId, keyStoreId);
      if (current.connectionState === 'DISCONNECTED' || current.connectionState === 'DISCONNECTING') {
        throw invalidState(current, 'DisconnectCustomKeyStore');
      }
      const updated = await this.store.updateKeyStore(
        projectId,
        keyStoreId,
        { states: [current.connectionState], epoch: current.connectionEpoch },
        { connectionState: 'DISCONNECTED', connectionErrorCode: null, stateChangedAt: this.clock.now() },
      );
      if (updated) break;
    }
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
    const states = onlyName ? ALL_STATES : (['DISCONNECTED'] as const);
    if (!states.includes(current.connectionState)) throw invalidState(current, 'UpdateCustomKeyStore');
    const sealedPin =
      change.pin === undefined ? undefined : await this.defaultHsm.sealSecret(change.pin, pinAad(keyStoreId));
    const updated = await this.store.updateKeyStore(
      projectId,
      keyStoreId,
      { states },
      {
        ...(change.name === undefined ? {} : { name: change.name }),
        ...(sealedPin === undefined ? {} : { sealedPin }),
      },
    );
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

  /** The HSM a key of a store lives in: its store's, which must be connected. */
  async hsmFor(key: KeyRecord & { keyStoreId: string }): Promise<Hsm> {
    const store = await this.store.findKeyStore(key.projectId, key.keyStoreId);
    if (store?.connectionState !== 'CONNECTED') {
      if (store) await this.#close(store.id);
      throw new KmsError(
        'KeyStoreNotConnected',
        `${key.id} is unavailable because its custom key store ${key.keyStoreId} is not connected.`,
        { subject: { kind: 'id', id: key.id } },
      );
    }
    return this.#hsmOf(store);
  }

  /**
   * What a process does at start-up (primary or single): connections a crash left CONNECTING start again, and stores
   * left DISCONNECTING are recorded DISCONNECTED.
   */
  async resumeConnections(): Promise<void> {
    for (const store of await this.store.listKeyStoresIn(['CONNECTING', 'DISCONNECTING'])) {
      if (store.connectionState === 'CONNECTING') {
        await this.#beginConnecting(store);
      } else {
        await this.store.updateKeyStore(
          store.projectId,
          store.id,
          { states: ['DISCONNECTING'], epoch: store.connectionEpoch },
          { connectionState: 'DISCONNECTED', stateChangedAt: this.clock.now() },
        );
      }
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
      if (current?.connectionState !== 'CONNECTED' || current.connectionEpoch !== open.epoch) await this.#close(id);
    }
  }

  async close(): Promise<void> {
    if (this.#checker) clearInterval(this.#checker);
    this.#closed = true;
    await this.settled();
    await Promise.all([...this.#open.keys()].map((id) => this.#close(id)));
  }

  /** The connection if it is offered to the project. */
  #offer(projectId: string, connectionId: string): ConnectionOffer {
    const offer = this.connector.offers.find(
      (o) => o.id === connectionId && (o.projects === undefined || o.projects.includes(projectId)),
    );
    if (!offer) {
      throw new KmsError('ConnectionNotFound', `No HSM connection with id ${connectionId} is offered to this project.`);
    }
    return offer;
  }

  #abandoned(store: KeyStoreRecord): boolean {
    return this.clock.now() - store.stateChangedAt > STALE_CONNECTING_MS;
  }

  /** Moves the store to CONNECTING under the next epoch and starts the attempt; false if the store changed first. */
  async #beginConnecting(current: KeyStoreRecord): Promise<boolean> {
    const connecting = await this.store.updateKeyStore(
      current.projectId,
      current.id,
      { states: [current.connectionState], epoch: current.connectionEpoch },
      {
        connectionState: 'CONNECTING',
        connectionErrorCode: null,
        connectionEpoch: current.connectionEpoch + 1,
        stateChangedAt: this.clock.now(),
      },
    );
    if (!connecting) return false;
    const attempt = this.#establish(connecting).finally(() => this.#connecting.delete(attempt));
    this.#connecting.add(attempt);
    return true;
  }

  /**
   * Opens the token, makes or checks the store's root key, cleans up interrupted creations, and records how it went,
   * only if the store is still in this attempt's epoch. Never throws.
   */
  async #establish(store: KeyStoreRecord): Promise<void> {
    await this.#close(store.id);
    const mine = { states: ['CONNECTING'] as const, epoch: store.connectionEpoch };
    let hsm: Hsm | undefined;
    try {
      hsm = await this.#openToken(store);
      const rootTokenId =
        store.keyScheme === 'wrapped' && store.rootTokenId === null
          ? await hsm.ensureRootKey(STORE_ROOT_KEY_LABEL)
          : store.rootTokenId;
      await this.#beforeConnected(store, hsm);
      const connected = await this.store.updateKeyStore(store.projectId, store.id, mine, {
        connectionState: 'CONNECTED',
        connectionErrorCode: null,
        rootTokenId,
        stateChangedAt: this.clock.now(),
      });
      if (connected && !this.#closed) {
        this.#open.set(store.id, {
          projectId: store.projectId,
          epoch: store.connectionEpoch,
          hsm: Promise.resolve(hsm),
        });
        return;
      }
      await hsm.close();
    } catch (err) {
      await hsm?.close().catch(() => undefined);
      const code = err instanceof ConnectionFailure ? err.code : 'INTERNAL_ERROR';
      await this.store
        .updateKeyStore(store.projectId, store.id, mine, {
          connectionState: 'FAILED',
          connectionErrorCode: code,
          stateChangedAt: this.clock.now(),
        })
        .catch(() => undefined);
    }
  }

  /**
   * Logs in to the store's token with its PIN (unsealed for the call, zeroed after). A wrapped store's root key, once
   * recorded, is checked in every process: a token whose root is missing or another is refused.
   */
  async #openToken(store: KeyStoreRecord): Promise<Hsm> {
    const pin = await this.defaultHsm.openSecret(store.sealedPin, pinAad(store.id));
    let hsm: Hsm;
    try {
      hsm = await this.connector.connect(store.connectionId, pin);
    } finally {
      pin.fill(0);
    }
    if (store.keyScheme === 'wrapped' && store.rootTokenId !== null) {
      try {
        await hsm.checkRootKey(STORE_ROOT_KEY_LABEL, store.rootTokenId);
      } catch (err) {
        await hsm.close();
        throw new ConnectionFailure('INTERNAL_ERROR', `Custom key store ${store.id}: its root key is not right.`, {
          cause: err,
        });
      }
    }
    return hsm;
  }

  /** This process's session to a connected store's token, opened on first use. */
  async #hsmOf(store: KeyStoreRecord): Promise<Hsm> {
    let open = this.#open.get(store.id);
    if (open && open.epoch !== store.connectionEpoch) {
      // Opened for an earlier connection: the tenant may have changed the PIN in between.
      await this.#close(store.id);
      open = undefined;
    }
    if (open && 'hsm' in open) return open.hsm.catch((err: unknown) => Promise.reject(unavailable(store, err)));
    if (open && this.clock.now() - open.failedAt < REOPEN_BACKOFF_MS) throw unavailable(store, open.error);
    const which = { projectId: store.projectId, epoch: store.connectionEpoch };
    const hsm = this.#openToken(store);
    this.#open.set(store.id, { ...which, hsm });
    try {
      return await hsm;
    } catch (err) {
      this.#open.set(store.id, { ...which, failedAt: this.clock.now(), error: err });
      if (err instanceof ConnectionFailure && CREDENTIAL_FAILURES.has(err.code)) {
        // The PIN no longer opens the token (changed on the HSM by its owner): asking again every second could lock
        // the user out. The store fails, as AWS reports it, until the tenant disconnects and connects it again.
        await this.store.updateKeyStore(
          store.projectId,
          store.id,
          { states: ['CONNECTED'], epoch: store.connectionEpoch },
          { connectionState: 'FAILED', connectionErrorCode: err.code, stateChangedAt: this.clock.now() },
        );
      }
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
    `The key store password must be ${MIN_PIN_LENGTH} to ${MAX_PIN_LENGTH} bytes.`,
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
