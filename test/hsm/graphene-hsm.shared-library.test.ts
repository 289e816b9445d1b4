import pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { CmkVersionRef } from '../../src/core/ports.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import {
  addSoftHsmToken,
  createTestToken,
  type NssTestToken,
  removeTestToken,
  type TestToken,
} from '../support/softhsm.js';
import { newVersion, objectsLabelled, openHsm, rejectionOf } from './hsm-fixtures.js';

/**
 * Several tokens of one PKCS#11 library in one process (a tenant's key store may be another token of the library
 * the default HSM uses): one instance per token, the library shared. Tokens A, B and C are in one SoftHSM token
 * directory (one SOFTHSM2_CONF), made before the library is first initialised (SoftHSM lists them only then).
 */

/** CK_STATE of a logged-in read-write session. */
const CKS_RW_USER_FUNCTIONS = 3;
const aad = Buffer.from('ctx');

let tokenA: TestToken;
let tokenB: TestToken;
let tokenC: TestToken;
/** Every adapter a test opened; afterEach closes those still open. */
let opened: GrapheneHsm[] = [];

beforeAll(() => {
  tokenA = createTestToken();
  tokenB = addSoftHsmToken(tokenA);
  tokenC = addSoftHsmToken(tokenA);
});

afterAll(() => {
  if (tokenA) removeTestToken(tokenA.dir);
});

afterEach(async () => {
  for (const hsm of opened) await hsm.close();
  opened = [];
});

/** Opens the token's adapter with its own root key, as the core would: one root label per token. */
async function open(token: TestToken | NssTestToken): Promise<GrapheneHsm> {
  const hsm = await openHsm(token);
  opened.push(hsm);
  await hsm.ensureRootKey(rootLabelOf(token));
  return hsm;
}

function rootLabelOf(token: TestToken | NssTestToken): string {
  return `root-of-${token.tokenLabel}`;
}

/** Makes a version under the token's root and checks that a plaintext goes round through the token. */
async function expectRoundTrip(
  hsm: GrapheneHsm,
  token: TestToken | NssTestToken,
  keyId: string,
): Promise<CmkVersionRef> {
  const key = await newVersion(hsm, keyId, 1, rootLabelOf(token));
  const sealed = await hsm.encrypt(key, Buffer.from(`secret of ${keyId}`), aad);
  expect((await hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe(`secret of ${keyId}`);
  return key;
}

/** The adapter's anchor session: open and logged in on the adapter's own token (a re-login would replace it). */
function loggedInAnchor(hsm: GrapheneHsm): Buffer {
  const { anchorSession } = hsm.forTesting();
  expect(anchorSession).toBeDefined();
  expectOwnSession(hsm, anchorSession as Buffer);
  return anchorSession as Buffer;
}

/** The session is open, logged in, and on the adapter's own token's slot. */
function expectOwnSession(hsm: GrapheneHsm, session: Buffer): void {
  const { lib, slot } = hsm.forTesting();
  const info = lib.C_GetSessionInfo(session);
  expect(info.state).toBe(CKS_RW_USER_FUNCTIONS);
  expect(info.slotID.toString('hex')).toBe(slot.toString('hex'));
}

/** Every session the adapter holds right now: its anchor and its idle pool sessions, each on its own token. */
function sessionsOf(hsm: GrapheneHsm): string[] {
  const { anchorSession, idleSessions } = hsm.forTesting();
  const sessions = [...(anchorSession === undefined ? [] : [anchorSession]), ...idleSessions];
  for (const session of sessions) expectOwnSession(hsm, session);
  return sessions.map((session) => session.toString('hex'));
}

/** Handles of the token objects with this CKA_ID that the adapter's token holds (C_FindObjects on its anchor). */
function objectsWithId(hsm: GrapheneHsm, id: Buffer): Buffer[] {
  const { lib, anchorSession } = hsm.forTesting();
  lib.C_FindObjectsInit(anchorSession as Buffer, [{ type: pkcs11js.CKA_ID, value: id }]);
  try {
    return lib.C_FindObjects(anchorSession as Buffer, 10);
  } finally {
    lib.C_FindObjectsFinal(anchorSession as Buffer);
  }
}

function hexes(handles: readonly Buffer[]): string[] {
  return handles.map((handle) => handle.toString('hex'));
}

/** The handles of the adapter's sessions and version keys. */
function heldBy(hsm: GrapheneHsm): string[] {
  return [...sessionsOf(hsm), ...hexes([...hsm.forTesting().versionKeys.values()])];
}

describe('two tokens of one library in one process', () => {
  let hsmA: GrapheneHsm;
  let hsmB: GrapheneHsm;

  beforeEach(async () => {
    hsmA = await open(tokenA);
    hsmB = await open(tokenB);
  });

  it('when both are opened, then each passes the self-test and makes, keeps and uses keys on its own token only', async () => {
    expect(hsmA.profile.name).toBe('softhsm2');
    expect(hsmB.profile.name).toBe('softhsm2');
    const idA = await hsmA.ensureRootKey(rootLabelOf(tokenA));
    const idB = await hsmB.ensureRootKey(rootLabelOf(tokenB));
    expect(idA.equals(idB)).toBe(false);

    const keyA = await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000001');
    await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000001');

    expect(objectsWithId(hsmA, idA)).toHaveLength(1);
    expect(objectsWithId(hsmB, idB)).toHaveLength(1);
    expect(objectsWithId(hsmA, idB)).toHaveLength(0);
    expect(objectsWithId(hsmB, idA)).toHaveLength(0);
    expect(objectsLabelled(hsmB, rootLabelOf(tokenA))).toHaveLength(0);
    expect(objectsLabelled(hsmA, rootLabelOf(tokenB))).toHaveLength(0);

    // A version of A's token cannot be opened through B: its root is not there.
    const sealed = await hsmA.encrypt(keyA, Buffer.from('only on A'), aad);
    const err = await rejectionOf(hsmB.decrypt(keyA, sealed.iv, sealed.ciphertextWithTag, aad));
    expect(err).toBeInstanceOf(KmsError);
    expect((err as KmsError).message).toBe(
      `Root key "${rootLabelOf(tokenA)}": no object with this label on token "${tokenB.tokenLabel}".`,
    );
  });

  it('when one is closed, then the other stays logged in on its sessions and its next encrypt succeeds', async () => {
    const keyB = await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000002');
    const anchorB = loggedInAnchor(hsmB);

    await hsmA.close();

    expect(loggedInAnchor(hsmB).equals(anchorB)).toBe(true);
    const sealed = await hsmB.encrypt(keyB, Buffer.from('after the close'), aad);
    expect((await hsmB.decrypt(keyB, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe('after the close');
    expect(loggedInAnchor(hsmB).equals(anchorB)).toBe(true);
  });

  it('when a third token is opened after one was closed, then it works and the one still open is undisturbed', async () => {
    const anchorB = loggedInAnchor(hsmB);
    await hsmA.close();

    const hsmC = await open(tokenC);
    await expectRoundTrip(hsmC, tokenC, 'cccccccc-0000-0000-0000-000000000001');
    await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000003');
    expect(loggedInAnchor(hsmB).equals(anchorB)).toBe(true);
  });

  it('when a token of another library (NSS softokn) is opened alongside, then all three work and closing it disturbs neither', async () => {
    const nss = createTestToken('nss');
    try {
      const anchorA = loggedInAnchor(hsmA);
      const hsmN = await open(nss);
      expect(hsmN.profile.name).toBe('nss');
      await expectRoundTrip(hsmN, nss, 'dddddddd-0000-0000-0000-000000000001');
      await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000003');
      await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000004');

      await hsmN.close();
      await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000004');
      expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
    } finally {
      removeTestToken(nss.dir);
    }
  });

  it("when the second token's PIN is wrong, then its open fails with the PIN message and the first is untouched", async () => {
    await hsmB.close();
    const anchorA = loggedInAnchor(hsmA);

    const err = await rejectionOf(openHsm(tokenB, { pin: 'not-the-pin' }));

    expect(err).toMatchObject({
      code: 'InternalError',
      message: `Login to token "${tokenB.tokenLabel}" failed: the PIN is incorrect.`,
    });
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
    await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000005');
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
  });

  it('when a token of the library is missing, then its open fails and the library is not initialised again under the others', async () => {
    const anchorA = loggedInAnchor(hsmA);

    const err = await rejectionOf(openHsm(tokenC, { tokenLabel: 'no-such-token' }));

    expect(err).toMatchObject({ code: 'HsmUnavailable' });
    expect((err as Error).message).toMatch(/^No PKCS#11 token labelled "no-such-token" in /);
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
    await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000009');
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
  });

  it('when the library is finalized behind both, then both initialise it again once and recover on their next call', async () => {
    const keyA = await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000006');
    const keyB = await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000006');
    const sealedA = await hsmA.encrypt(keyA, Buffer.from('A before'), aad);
    const sealedB = await hsmB.encrypt(keyB, Buffer.from('B before'), aad);

    hsmA.forTesting().lib.C_Finalize();

    expect((await hsmA.decrypt(keyA, sealedA.iv, sealedA.ciphertextWithTag, aad)).toString()).toBe('A before');
    const anchorA = loggedInAnchor(hsmA);
    expect((await hsmB.decrypt(keyB, sealedB.iv, sealedB.ciphertextWithTag, aad)).toString()).toBe('B before');
    // B's recovery neither took nor closed A's new sessions, nor initialised the library under A a second time.
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
    await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000007');
    await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000007');
    expect(loggedInAnchor(hsmA).equals(anchorA)).toBe(true);
    const sessionsA = sessionsOf(hsmA);
    for (const session of sessionsOf(hsmB)) expect(sessionsA).not.toContain(session);
  }, 10_000);

  it("when one has initialised the library again, then closing the other, which still holds handles from before, neither closes the first's sessions nor destroys its keys", async () => {
    await expectRoundTrip(hsmA, tokenA, 'aaaaaaaa-0000-0000-0000-000000000008');
    const keyB = await expectRoundTrip(hsmB, tokenB, 'bbbbbbbb-0000-0000-0000-000000000008');
    const staleA = hexes([hsmA.forTesting().anchorSession as Buffer, ...hsmA.forTesting().versionKeys.values()]);
    hsmB.forTesting().lib.C_Finalize();
    // B recovers with new sessions and objects, whose handles SoftHSM numbers afresh; B makes versions until the
    // handles A still holds (its anchor, the library's first session, and its version keys) name B's.
    await hsmB.encrypt(keyB, Buffer.from('recovered'), aad);
    for (let version = 2; version < 40 && !staleA.every((h) => heldBy(hsmB).includes(h)); version++) {
      await newVersion(hsmB, keyB.keyId, version, rootLabelOf(tokenB));
    }
    expect(heldBy(hsmB)).toEqual(expect.arrayContaining(staleA));
    const sessionsB = sessionsOf(hsmB);
    const versionKeysB = [...hsmB.forTesting().versionKeys.values()];

    await hsmA.close();

    expect(sessionsOf(hsmB)).toEqual(sessionsB);
    const { lib, anchorSession } = hsmB.forTesting();
    for (const handle of versionKeysB) {
      expect(lib.C_GetAttributeValue(anchorSession as Buffer, handle, [{ type: pkcs11js.CKA_CLASS }])).toHaveLength(1);
    }
    await hsmB.encrypt(keyB, Buffer.from('still'), aad);
    expect(sessionsOf(hsmB)).toEqual(sessionsB);
  });
});

describe('library parameters', () => {
  it('when a library is opened with other parameters than it was initialised with in this process, then it is refused', async () => {
    const first = createTestToken('nss');
    const second = createTestToken('nss');
    try {
      const hsm = await open(first);
      const err = await rejectionOf(openHsm(second));
      expect(err).toMatchObject({
        code: 'InternalError',
        message:
          `The PKCS#11 library ${second.library} is already initialised in this process with other library ` +
          'parameters: a library is initialised once per process, so all its tokens must be configured with the ' +
          'same parameters.',
      });
      expect((err as Error).message).not.toContain(second.dir);
      await expectRoundTrip(hsm, first, 'eeeeeeee-0000-0000-0000-000000000001');
      await hsm.close();
      // Once the library is free again, it opens with the other database.
      await expectRoundTrip(await open(second), second, 'eeeeeeee-0000-0000-0000-000000000002');
    } finally {
      for (const hsm of opened.splice(0)) await hsm.close();
      removeTestToken(first.dir);
      removeTestToken(second.dir);
    }
  });
});
