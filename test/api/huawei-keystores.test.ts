import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { huaweiKeystoreClient, sdkRequest, send } from '../support/huawei-sdk.js';
import {
  callCount,
  type KeyStoreTestService,
  RESTRICTED_PROJECT,
  startKeyStoreTestService,
  type TenantConnection,
} from '../support/key-stores.js';
import { createKey, type HuaweiResponse, huaweiErrorBody, type TestService } from '../support/test-service.js';

const P = 'hwkeystores-p';
const OTHER = 'hwkeystores-other';
const CA_CERT =
  '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUb3duZXItY2EtZm9yLXRlc3Rz\n-----END CERTIFICATE-----\n';

let env: KeyStoreTestService;
let kms: TestService;

beforeAll(async () => {
  env = await startKeyStoreTestService();
  kms = env.kms;
});
afterAll(async () => {
  await env?.destroy();
});

/** `/v1.0/{project}/keystores{suffix}` with a token of the project (the kms.call helper covers /kms/ paths only). */
async function keystores(
  projectId: string,
  method: string,
  suffix = '',
  body?: unknown,
  options: { token?: string } = {},
): Promise<HuaweiResponse> {
  const res = await fetch(`${kms.url}/v1.0/${projectId}/keystores${suffix}`, {
    method,
    headers: { 'content-type': 'application/json', 'x-auth-token': options.token ?? (await kms.tokenFor(projectId)) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: text.length > 0 ? JSON.parse(text) : undefined, headers: res.headers };
}

function createBody(alias: string, connection: TenantConnection, extra: Record<string, unknown> = {}) {
  return {
    keystore_alias: alias,
    hsm_cluster_id: connection.id,
    hsm_ca_cert: CA_CERT,
    hsm_user_pin: connection.pin,
    ...extra,
  };
}

async function createKeystore(projectId: string, alias: string, connection: TenantConnection): Promise<string> {
  const res = await keystores(projectId, 'POST', '', createBody(alias, connection));
  if (res.status !== 200) throw new Error(`create keystore failed: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.keystore.keystore_id as string;
}

function expectError(res: HuaweiResponse, status: number, code: string, message: string): void {
  expect({ status: res.status, body: res.body }).toEqual({ status, body: huaweiErrorBody(code, message) });
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest();

/** encrypt-datakey then decrypt-datakey of a fresh DEK under the key; returns the decrypt answer. */
async function roundTripDataKey(projectId: string, keyId: string): Promise<{ sealed: HuaweiResponse; dek: Buffer }> {
  const dek = randomBytes(32);
  const sealed = await kms.call(projectId, 'encrypt-datakey', {
    key_id: keyId,
    plain_text: Buffer.concat([dek, sha256(dek)]).toString('hex'),
    datakey_plain_length: '32',
  });
  return { sealed, dek };
}

async function decryptDataKey(projectId: string, keyId: string, cipherText: string): Promise<HuaweiResponse> {
  return kms.call(projectId, 'decrypt-datakey', {
    key_id: keyId,
    cipher_text: cipherText,
    datakey_cipher_length: '32',
  });
}

/**
 * A keystore's whole life on one connection: create, show, enable, a key in it used for data keys, described with
 * its keystore_id, disable (its keys refused, default keys still served), and deletion refused while it has keys.
 */
async function keystoreLifecycle(connection: TenantConnection, alias: string): Promise<void> {
  const created = await keystores(P, 'POST', '', createBody(alias, connection, { keystore_type: 'DHSM' }));
  expect(created.status).toBe(200);
  const id = created.body.keystore.keystore_id;
  expect(created.body).toEqual({ keystore: { keystore_id: id, domain_id: P } });
  expect(id).toMatch(/^cks-[0-9a-f]{17}$/);
  expect(JSON.stringify(created.body)).not.toContain(connection.pin);

  const shown = await keystores(P, 'GET', `/${id}`);
  expect(shown.status).toBe(200);
  expect(shown.body).toEqual({
    keystore: {
      keystore_id: id,
      domain_id: P,
      keystore_alias: alias,
      keystore_type: 'DHSM',
      hsm_cluster_id: connection.id,
      cluster_id: connection.id,
      create_time: expect.stringMatching(/^\d{13}$/),
    },
  });
  expect(Math.abs(Number(shown.body.keystore.create_time) - Date.now())).toBeLessThan(60_000);

  // A key cannot be made in it before it is enabled.
  expectError(
    await kms.call(P, 'create-key', { key_alias: `${alias}-early`, keystore_id: id }),
    400,
    'KMS.0340',
    `The keystore ${id} is not enabled: enable it first.`,
  );

  const enabled = await keystores(P, 'POST', `/${id}/enable`);
  expect(enabled).toMatchObject({ status: 200, body: { keystore: { keystore_id: id, keystore_state: 'ENABLED' } } });
  // Enabling an enabled keystore changes nothing.
  expect((await keystores(P, 'POST', `/${id}/enable`, {})).body.keystore.keystore_state).toBe('ENABLED');

  const generatedBefore =
    callCount(env.calls, connection.id, 'createKeyVersion') + callCount(env.calls, connection.id, 'generateRandom');
  const keyRes = await kms.call(P, 'create-key', { key_alias: `${alias}-key`, keystore_id: id });
  expect(keyRes.status).toBe(200);
  const keyId = keyRes.body.key_info.key_id;
  // The key was made on the keystore's token, not on the default HSM.
  expect(
    callCount(env.calls, connection.id, 'createKeyVersion') + callCount(env.calls, connection.id, 'generateRandom'),
  ).toBeGreaterThan(generatedBefore);

  const { sealed, dek } = await roundTripDataKey(P, keyId);
  expect(sealed.status).toBe(200);
  const opened = await decryptDataKey(P, keyId, sealed.body.cipher_text);
  expect(opened.status).toBe(200);
  expect(opened.body.data_key).toBe(dek.toString('hex').toUpperCase());

  const described = await kms.call(P, 'describe-key', { key_id: keyId });
  expect(described.body.key_info).toMatchObject({ key_id: keyId, keystore_id: id, key_state: '2' });
  const listed = await kms.call(P, 'list-keys', {});
  const details = listed.body.key_details as Array<{ key_id: string; keystore_id: string }>;
  expect(details.find((k) => k.key_id === keyId)?.keystore_id).toBe(id);

  const defaultKey = await createKey(kms, P, `${alias}-default`);
  expect((await kms.call(P, 'describe-key', { key_id: defaultKey })).body.key_info.keystore_id).toBe('0');

  const disabled = await keystores(P, 'POST', `/${id}/disable`);
  expect(disabled).toMatchObject({ status: 200, body: { keystore: { keystore_id: id, keystore_state: 'DISABLED' } } });
  expectError(
    await decryptDataKey(P, keyId, sealed.body.cipher_text),
    400,
    'KMS.0340',
    `${keyId} is unavailable because its custom key store ${id} is not connected.`,
  );
  expect((await roundTripDataKey(P, keyId)).sealed.body.error.error_code).toBe('KMS.0340');
  // Keys of the default key store are served as before.
  const defaultTrip = await roundTripDataKey(P, defaultKey);
  expect(defaultTrip.sealed.status).toBe(200);
  expect((await decryptDataKey(P, defaultKey, defaultTrip.sealed.body.cipher_text)).status).toBe(200);

  expectError(
    await keystores(P, 'POST', `/${id}/disable`),
    400,
    'KMS.0308',
    `The keystore ${id} is DISABLED. It is already disabled.`,
  );
  expectError(
    await keystores(P, 'DELETE', `/${id}`),
    400,
    'KMS.0308',
    `Custom key store ${id} still contains KMS keys. Schedule their deletion and wait until they are deleted.`,
  );
  expect((await keystores(P, 'GET', `/${id}`)).status).toBe(200);
}

describe('Huawei dedicated keystores', () => {
  let wrappedId: string;

  it('when a keystore on a wrapped-scheme connection goes through its life, then each step answers as Huawei documents', async () => {
    await keystoreLifecycle(env.softhsmWrapped, 'wrapped-store');
    wrappedId = (await kms.running.services.keyStores.getByName(P, 'wrapped-store')).id;
  });

  it('when a keystore is enabled, then deleting it is refused until it is disabled', async () => {
    const id = await createKeystore(P, 'delete-me', env.softhsm);
    expect((await keystores(P, 'POST', `/${id}/enable`)).body.keystore.keystore_state).toBe('ENABLED');
    expectError(
      await keystores(P, 'DELETE', `/${id}`),
      400,
      'KMS.0308',
      `The keystore ${id} is ENABLED. Disable the keystore before deleting it.`,
    );
    expect((await keystores(P, 'POST', `/${id}/disable`)).status).toBe(200);
    const deleted = await keystores(P, 'DELETE', `/${id}`);
    expect(deleted.status).toBe(200);
    expect(deleted.body).toBeUndefined();
    expectError(await keystores(P, 'GET', `/${id}`), 404, 'KMS.0207', `Custom key store ${id} does not exist.`);
  });

  it('when the PIN is wrong, then enable answers why, and the keystore can be disabled and deleted', async () => {
    const id = await createKeystore(P, 'wrong-pin', { ...env.softhsm, pin: 'not-the-pin-1' });
    const refused = await keystores(P, 'POST', `/${id}/enable`);
    const record = await kms.running.services.keyStores.get(P, id);
    expect(record.connectionState).toBe('FAILED');
    // The HSM layer names the reason (INVALID_CREDENTIALS once it classifies login failures); the answer carries it.
    expect(refused.status).toBe(400);
    expect(refused.body.error.error_code).toBe('KMS.0308');
    expect(refused.body.error.error_msg).toMatch(
      new RegExp(`^The keystore ${id} could not be enabled: .*\\(${record.connectionErrorCode}\\)`),
    );
    expect(JSON.stringify(refused.body)).not.toContain('not-the-pin-1');
    // Enabling again tries again (Huawei has no failed state to clear first), and fails the same way.
    expect((await keystores(P, 'POST', `/${id}/enable`)).body.error.error_code).toBe('KMS.0308');
    expect((await keystores(P, 'POST', `/${id}/disable`)).body.keystore.keystore_state).toBe('DISABLED');
    expect((await keystores(P, 'DELETE', `/${id}`)).status).toBe(200);
  });

  it('when keystores are listed, then limit and offset page through them with the total', async () => {
    const a = await createKeystore(P, 'page-a', env.softhsm);
    const b = await createKeystore(P, 'page-b', env.nss);
    const all = await keystores(P, 'GET');
    expect(all.status).toBe(200);
    expect(all.body.total).toBe(3);
    const ids = (all.body.keystores as Array<{ keystore_id: string }>).map((k) => k.keystore_id);
    expect(ids.sort()).toEqual([a, b, wrappedId].sort());
    const first = await keystores(P, 'GET', '?limit=2');
    const rest = await keystores(P, 'GET', '?limit=2&offset=2');
    expect(first.body.total).toBe(3);
    expect(first.body.keystores).toHaveLength(2);
    expect(rest.body.keystores).toHaveLength(1);
    const paged = [...first.body.keystores, ...rest.body.keystores].map((k: { keystore_id: string }) => k.keystore_id);
    expect(paged.sort()).toEqual(ids.sort());
    expect(first.body.keystores[0]).toEqual(all.body.keystores[0]);

    expectError(await keystores(P, 'GET', '?limit=0'), 400, 'KMS.1601', 'Invalid limit.');
    expectError(await keystores(P, 'GET', '?limit=x'), 400, 'KMS.1601', 'Invalid limit.');
    expectError(await keystores(P, 'GET', '?offset=-1'), 400, 'KMS.1603', 'Invalid offset.');
    expectError(
      await keystores(P, 'GET', '?marker=1'),
      400,
      'KMS.0201',
      "Invalid request URL: unknown query parameter 'marker'.",
    );
    for (const id of [a, b]) expect((await keystores(P, 'DELETE', `/${id}`)).status).toBe(200);
  });

  it('when the alias is taken or the cluster already has a keystore, then create refuses it', async () => {
    const id = await createKeystore(P, 'taken', env.softhsm);
    expectError(
      await keystores(P, 'POST', '', createBody('taken', env.nss)),
      400,
      'KMS.0308',
      "A custom key store named 'taken' already exists.",
    );
    expectError(
      await keystores(P, 'POST', '', createBody('second-on-cluster', env.softhsm)),
      400,
      'KMS.0308',
      `The connection ${env.softhsm.id} is already used by a custom key store.`,
    );
    expect((await keystores(P, 'DELETE', `/${id}`)).status).toBe(200);
  });

  it('when hsm_cluster_id is unknown or offered only to another project, then create answers KMS.0308', async () => {
    for (const cluster of ['cluster-doesnotexistx', env.restricted.id]) {
      expectError(
        await keystores(P, 'POST', '', createBody('nowhere', { ...env.softhsm, id: cluster })),
        400,
        'KMS.0308',
        `No HSM connection with id ${cluster} is offered to this project.`,
      );
    }
    // The project it is offered to may use it.
    const id = await createKeystore(RESTRICTED_PROJECT, 'restricted', env.restricted);
    expect((await keystores(RESTRICTED_PROJECT, 'DELETE', `/${id}`)).status).toBe(200);
  });

  it.each([
    [
      'no hsm_user_pin',
      { hsm_user_pin: undefined },
      'KMS.0204',
      'Parameters missing in the request message: hsm_user_pin.',
    ],
    [
      'no hsm_ca_cert',
      { hsm_ca_cert: undefined },
      'KMS.0204',
      'Parameters missing in the request message: hsm_ca_cert.',
    ],
    [
      'an alias with a space',
      { keystore_alias: 'bad alias!' },
      'KMS.0308',
      'Invalid parameter: keystore_alias must match ^[a-zA-Z0-9:/_-]{1,255}$.',
    ],
    [
      'a 5-character PIN',
      { hsm_user_pin: 'short' },
      'KMS.0308',
      'Invalid parameter: hsm_user_pin must be 7 to 32 characters.',
    ],
    ['a numeric PIN', { hsm_user_pin: 7654321 }, 'KMS.0308', 'Invalid parameter: hsm_user_pin.'],
    [
      'a malformed hsm_cluster_id',
      { hsm_cluster_id: 'no such cluster' },
      'KMS.0308',
      'Invalid parameter: hsm_cluster_id.',
    ],
    [
      'a cluster_id unlike hsm_cluster_id',
      { cluster_id: 'cluster-someotherone' },
      'KMS.0308',
      'Invalid parameter: cluster_id must equal hsm_cluster_id for a DHSM keystore.',
    ],
    [
      'an hsm_ca_cert that is no PEM certificate',
      { hsm_ca_cert: 'not a certificate' },
      'KMS.0308',
      'Invalid parameter: hsm_ca_cert must be a PEM certificate of at most 5000 characters.',
    ],
    [
      'keystore_type CDMS',
      { keystore_type: 'CDMS' },
      'KMS.0308',
      'Invalid parameter: keystore_type CDMS (CDMS) is not offered; a keystore here is a dedicated HSM cluster (DHSM).',
    ],
    [
      'keystore_type 0 (DEFAULT)',
      { keystore_type: '0' },
      'KMS.0308',
      'Invalid parameter: keystore_type 0 (DEFAULT) is not offered; a keystore here is a dedicated HSM cluster (DHSM).',
    ],
    [
      'an unknown keystore_type',
      { keystore_type: 'HSM' },
      'KMS.0308',
      'Invalid parameter: keystore_type must be DHSM.',
    ],
    [
      'a field Huawei does not have',
      { keystore_password: 'whatever12' },
      'KMS.0308',
      "Invalid parameter: unknown field 'keystore_password'.",
    ],
  ])(
    'when create gets %s, then it is refused with its KMS code, without naming the PIN',
    async (_what, change, code, message) => {
      const res = await keystores(P, 'POST', '', createBody('refused', env.softhsm, change));
      expectError(res, 400, code, message);
      expect(JSON.stringify(res.body)).not.toContain(env.softhsm.pin);
    },
  );

  it('when keystore_type is 1 and cluster_id equals hsm_cluster_id, then create accepts them as DHSM', async () => {
    const res = await keystores(
      P,
      'POST',
      '',
      createBody('numeric-type', env.softhsm, { keystore_type: '1', cluster_id: env.softhsm.id }),
    );
    expect(res.status).toBe(200);
    const id = res.body.keystore.keystore_id;
    expect((await keystores(P, 'GET', `/${id}`)).body.keystore.keystore_type).toBe('DHSM');
    expect((await keystores(P, 'DELETE', `/${id}`)).status).toBe(200);
  });

  it('when another project names the keystore, then it cannot see, change or use it', async () => {
    const notFound = `Custom key store ${wrappedId} does not exist.`;
    expectError(await keystores(OTHER, 'GET', `/${wrappedId}`), 404, 'KMS.0207', notFound);
    expectError(await keystores(OTHER, 'POST', `/${wrappedId}/enable`), 404, 'KMS.0207', notFound);
    expectError(await keystores(OTHER, 'DELETE', `/${wrappedId}`), 404, 'KMS.0207', notFound);
    expectError(
      await kms.call(OTHER, 'create-key', { key_alias: 'theirs', keystore_id: wrappedId }),
      404,
      'KMS.0207',
      notFound,
    );
    expect((await keystores(OTHER, 'GET')).body).toEqual({ total: 0, keystores: [] });
    // A token of one project does not open another project's path.
    expect((await keystores(P, 'GET', '', undefined, { token: await kms.tokenFor(OTHER) })).body.error.error_code).toBe(
      'KMS.0321',
    );
  });

  it('when a keystore is made through the core (as the AWS dialect does), then it is the same Huawei keystore', async () => {
    const pin = Buffer.from(env.nss.pin, 'utf8');
    const store = await kms.running.services.keyStores.create({
      projectId: P,
      name: 'made by core',
      connectionId: env.nss.id,
      trustAnchorCertificate: CA_CERT,
      pin,
    });
    const shown = await keystores(P, 'GET', `/${store.id}`);
    expect(shown.body.keystore).toMatchObject({
      keystore_id: store.id,
      keystore_alias: 'made by core',
      hsm_cluster_id: env.nss.id,
      create_time: String(store.createdAt),
    });
    expect((await keystores(P, 'GET')).body.keystores.map((k: { keystore_id: string }) => k.keystore_id)).toContain(
      store.id,
    );
    expect((await keystores(P, 'POST', `/${store.id}/enable`)).body.keystore.keystore_state).toBe('ENABLED');
    expect((await kms.running.services.keyStores.get(P, store.id)).connectionState).toBe('CONNECTED');
    expect((await keystores(P, 'POST', `/${store.id}/disable`)).body.keystore.keystore_state).toBe('DISABLED');
    expect((await keystores(P, 'DELETE', `/${store.id}`)).status).toBe(200);
  });

  it('when a keystore path is signed with an access key, then it is served as with a token', async () => {
    const credentials = { ...(await kms.running.credentials.create(P)), projectId: P };
    const listed = await send(
      sdkRequest('python', { url: `${kms.url}/v1.0/${P}/keystores?limit=5&offset=0`, method: 'GET', credentials }),
    );
    expect(listed.status).toBe(200);
    expect(listed.body.keystores.map((k: { keystore_id: string }) => k.keystore_id)).toContain(wrappedId);
    const shown = await send(
      sdkRequest('go', { url: `${kms.url}/v1.0/${P}/keystores/${wrappedId}`, method: 'GET', credentials }),
    );
    expect(shown.body.keystore.keystore_id).toBe(wrappedId);
    // Signed for one project, sent to another's path.
    const foreign = await send(
      sdkRequest('python', { url: `${kms.url}/v1.0/${OTHER}/keystores`, method: 'GET', credentials }),
    );
    expect(foreign.status).toBe(403);
  });

  it("when Huawei's own Node SDK client creates, lists, enables, disables and deletes a keystore, then each call succeeds", async () => {
    const call = huaweiKeystoreClient(kms.url, { ...(await kms.running.credentials.create(P)), projectId: P });
    const created = await call('POST', '', { body: createBody('by-node-sdk', env.softhsm) });
    const id = created.keystore.keystore_id;
    expect(created.keystore.domain_id).toBe(P);
    const listed = await call('GET', '', { query: { limit: '10', offset: '0' } });
    expect(listed.keystores.map((k: { keystore_id: string }) => k.keystore_id)).toContain(id);
    expect((await call('GET', `/${id}`)).keystore.keystore_alias).toBe('by-node-sdk');
    expect((await call('POST', `/${id}/enable`)).keystore.keystore_state).toBe('ENABLED');
    expect((await call('POST', `/${id}/disable`)).keystore.keystore_state).toBe('DISABLED');
    await call('DELETE', `/${id}`);
    await expect(call('GET', `/${id}`)).rejects.toMatchObject({ httpStatusCode: 404, errorCode: 'KMS.0207' });
  });

  it('when a keystore path gets no credentials, the wrong method or a stray body field, then it is refused', async () => {
    const anonymous = await fetch(`${kms.url}/v1.0/${P}/keystores`);
    expect(anonymous.status).toBe(403);
    const wrongMethod = await keystores(P, 'PUT', `/${wrappedId}`);
    expectError(wrongMethod, 405, 'KMS.0215', 'Request method not supported.');
    expect(wrongMethod.headers.get('allow')).toBe('GET, DELETE');
    expectError(
      await keystores(P, 'POST', `/${wrappedId}/enable`, { force: true }),
      400,
      'KMS.0308',
      "Invalid parameter: unknown field 'force'.",
    );
    expectError(
      await keystores(P, 'GET', `/${wrappedId}?verbose=1`),
      400,
      'KMS.0201',
      'Invalid request URL: this path takes no query parameters.',
    );
    expectError(await keystores(P, 'GET', '/not_an*id'), 400, 'KMS.0308', 'Invalid parameter: keystore_id.');
    expectError(await keystores(P, 'GET', '/x/y/z'), 400, 'KMS.0201', 'Invalid request URL.');
  });

  it('when create-key names keystore 0, a CDMS cluster or an unknown keystore, then only 0 and known keystores are accepted', async () => {
    const byDefault = await kms.call(P, 'create-key', { key_alias: 'in-default', keystore_id: '0' });
    expect(
      (await kms.call(P, 'describe-key', { key_id: byDefault.body.key_info.key_id })).body.key_info.keystore_id,
    ).toBe('0');
    expectError(
      await kms.call(P, 'create-key', { key_alias: 'in-cdms', keystore_id: '2' }),
      400,
      'KMS.0308',
      'Invalid parameter: keystore_id 2 names a CDMS cluster, which is not offered; use 0 (the default key store) or the keystore_id of a dedicated keystore.',
    );
    expectError(
      await kms.call(P, 'create-key', { key_alias: 'in-nowhere', keystore_id: 'cks-00000000000000000' }),
      404,
      'KMS.0207',
      'Custom key store cks-00000000000000000 does not exist.',
    );
    expect((await kms.call(P, 'describe-key', { key_id: 'alias/in-nowhere' })).status).toBe(404);
  });
});

// The token-object scheme's HSM code lands separately: these run once it has (docs/custom-key-stores.md).
describe('Huawei dedicated keystores on token-object stores', () => {
  it('when a keystore on SoftHSM keeps keys as token objects, then it goes through the same life', async () => {
    await keystoreLifecycle(env.softhsm, 'softhsm-objects');
  });

  it('when a keystore on NSS softokn keeps keys as token objects, then it goes through the same life', async () => {
    await keystoreLifecycle(env.nss, 'nss-objects');
  });
});
