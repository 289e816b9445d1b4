import { KmsError } from '../core/errors.js';
import { ConnectionFailure, type ConnectionOffer, type KeyStoreKeyScheme } from '../core/key-stores.js';
import type { Hsm, KeyStoreConnector } from '../core/ports.js';
import type { RandomHealthEvent } from '../core/random-health.js';
import { connectionErrorCodeOf } from './connection-errors.js';
import { GrapheneHsm } from './graphene-hsm.js';
import type { ProfileName } from './hsm-profiles.js';

/**
 * An HSM connection the operator offers tenants (KMS_KEY_STORE_CONNECTIONS_FILE). Only this list ever names a
 * PKCS#11 module: a tenant picks a connection by id and brings the token user's PIN, nothing more.
 */
export interface HsmConnection {
  readonly id: string;
  readonly library: string;
  readonly tokenLabel: string;
  readonly initParams: string | undefined;
  readonly profile: ProfileName | undefined;
  /** Projects that may use it; undefined: every project. */
  readonly projects: readonly string[] | undefined;
  readonly keyScheme: KeyStoreKeyScheme;
  readonly poolSize: number;
}

/** Opens a tenant's token as its own GrapheneHsm: its own sessions, login, profile and self-test. */
export class GrapheneKeyStoreConnector implements KeyStoreConnector {
  readonly offers: readonly ConnectionOffer[];
  readonly #connections: ReadonlyMap<string, HsmConnection>;

  /**
   * `wrap`: what tests put around each store's adapter (to count calls or inject faults); none in production.
   * `onRandomHealth`: told when a store token's random number generator fails its health tests or recovers.
   */
  constructor(
    connections: readonly HsmConnection[],
    private readonly keyCacheSize: number,
    private readonly wrap: (connectionId: string, hsm: Hsm) => Hsm = (_, hsm) => hsm,
    private readonly onRandomHealth?: (connectionId: string, event: RandomHealthEvent) => void,
  ) {
    this.#connections = new Map(connections.map((c) => [c.id, c]));
    this.offers = connections.map(({ id, projects, keyScheme }) => ({ id, projects, keyScheme }));
  }

  async connect(connectionId: string, pin: Buffer): Promise<Hsm> {
    const connection = this.#connections.get(connectionId);
    if (!connection) throw new KmsError('ConnectionNotFound', `No HSM connection with id ${connectionId} is offered.`);
    let hsm: GrapheneHsm;
    try {
      hsm = await GrapheneHsm.open({
        library: connection.library,
        tokenLabel: connection.tokenLabel,
        initParams: connection.initParams,
        profile: connection.profile,
        pin: pin.toString('utf8'),
        poolSize: connection.poolSize,
        keyCacheSize: this.keyCacheSize,
        createTokenKeysIfMissing: false,
        credentialKey: false,
        // The tenant's PIN must be what logs in: never a login this process already holds on the token.
        requireOwnLogin: true,
        // A tenant waits on Describe: fail at once rather than retry a token that is not there.
        startupRetry: { attempts: 1, delayMs: 0 },
        onRandomHealth: this.onRandomHealth && ((event) => this.onRandomHealth?.(connectionId, event)),
      });
    } catch (err) {
      const code = connectionErrorCodeOf(err);
      throw new ConnectionFailure(code, `Connection ${connectionId} failed: ${code}.`, { cause: err });
    }
    return this.wrap(connectionId, hsm);
  }
}
