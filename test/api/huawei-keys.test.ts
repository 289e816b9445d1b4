import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const P = 'projectkeys01';
let kms: TestService;

beforeAll(async () => {
  kms = await startTestService({ KMS_CMK_QUOTA: '25' });
});
afterAll(async () => {
  await kms.destroy();
});

describe('Huawei key management', () => {
  it('when a key is created, then describe-key shows it enabled with Huawei field names and string types', async () => {
    const created = await kms.call(P, 'create-key', { key_alias: 'orders', key_description: 'orders table' });
    expect(created.status).toBe(200);
    const keyId = created.body.key_info.key_id;
    expect(keyId).toMatch(/^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$/);
    expect(created.body.key_info.domain_id).toBe(P);

    const described = await kms.call(P, 'describe-key', { key_id: keyId });
    expect(described.status).toBe(200);
    const info = described.body.key_info;
    expect(info).toMatchObject({
      key_id: keyId,
      domain_id: P,
      key_alias: 'orders',
      key_description: 'orders table',
      key_spec: 'AES_256',
      key_usage: 'ENCRYPT_DECRYPT',
      key_state: '2',
      default_key_flag: '0',
      scheduled_deletion_date: '',
      origin: 'kms',
    });
    expect(info.creation_date).toMatch(/^\d{13}$/);
    expect(Math.abs(Number(info.creation_date) - Date.now())).toBeLessThan(60_000);
  });

  it('when a key is described by alias/<name> or by alias URN, then the same key is returned', async () => {
    const keyId = await createKey(kms, P, 'by-alias');
    const byAlias = await kms.call(P, 'describe-key', { key_id: 'alias/by-alias' });
    expect(byAlias.body.key_info.key_id).toBe(keyId);
    const byUrn = await kms.call(P, 'describe-key', { key_id: `kms:local-1:${P}:alias:by-alias` });
    expect(byUrn.body.key_info.key_id).toBe(keyId);
  });

  it('when the alias is already used in the project, then create-key answers KMS.1104', async () => {
    await createKey(kms, P, 'dup');
    const again = await kms.call(P, 'create-key', { key_alias: 'dup' });
    expect(again.status).toBe(400);
    expect(again.body.error.error_code).toBe('KMS.1104');
    const prefixed = await kms.call(P, 'create-key', { key_alias: 'alias/dup' });
    expect(prefixed.body.error.error_code).toBe('KMS.1104');
  });

  it.each([
    [{ key_alias: 'bad alias!' }, 'KMS.1101'],
    [{ key_alias: 'x/default' }, 'KMS.1101'],
    [{ key_alias: 'a'.repeat(256) }, 'KMS.1101'],
    [{ key_alias: 42 }, 'KMS.1101'],
    [{}, 'KMS.0204'],
    [{ key_alias: 'ok1', key_description: 'd'.repeat(256) }, 'KMS.1103'],
    [{ key_alias: 'ok2', key_spec: 'RSA_2048' }, 'KMS.0308'],
    [{ key_alias: 'ok3', origin: 'external' }, 'KMS.0308'],
    [{ key_alias: 'ok4', unexpected: 1 }, 'KMS.0308'],
    [{ key_alias: 'ok5', sequence: 'short' }, 'KMS.0206'],
  ])('when create-key gets %j, then it answers %s', async (body, code) => {
    const res = await kms.call(P, 'create-key', body);
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe(code);
    expect(typeof res.body.error.error_msg).toBe('string');
  });

  it('when a key goes through disable, enable, schedule and cancel deletion, then each state is as Huawei documents', async () => {
    const keyId = await createKey(kms, P, 'lifecycle');
    const disabled = await kms.call(P, 'disable-key', { key_id: keyId });
    expect(disabled.body).toEqual({ key_info: { key_id: keyId, key_state: '3' } });
    expect((await kms.call(P, 'disable-key', { key_id: keyId })).body.error.error_code).toBe('KMS.1301');

    const enabled = await kms.call(P, 'enable-key', { key_id: keyId });
    expect(enabled.body).toEqual({ key_info: { key_id: keyId, key_state: '2' } });
    expect((await kms.call(P, 'enable-key', { key_id: keyId })).body.error.error_code).toBe('KMS.1201');

    const scheduled = await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' });
    expect(scheduled.body).toEqual({ key_id: keyId, key_state: '4' });
    const described = await kms.call(P, 'describe-key', { key_id: keyId });
    const deletionDate = Number(described.body.key_info.scheduled_deletion_date);
    expect(Math.abs(deletionDate - (Date.now() + 7 * 86_400_000))).toBeLessThan(60_000);
    const again = await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' });
    expect(again.body.error.error_code).toBe('KMS.1402');

    const cancelled = await kms.call(P, 'cancel-key-deletion', { key_id: keyId });
    expect(cancelled.body).toEqual({ key_id: keyId, key_state: '3' });
    expect((await kms.call(P, 'cancel-key-deletion', { key_id: keyId })).body.error.error_code).toBe('KMS.1501');
    expect((await kms.call(P, 'describe-key', { key_id: keyId })).body.key_info.scheduled_deletion_date).toBe('');
  });

  it.each([
    ['6', 'KMS.1401'],
    ['1097', 'KMS.1401'],
    ['seven', 'KMS.1401'],
  ])('when pending_days is %s, then schedule-key-deletion answers %s', async (days, code) => {
    const keyId = await createKey(kms, P, `pd-${days}`);
    const res = await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: days });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe(code);
  });

  it('when pending_days is a JSON number within range, then it is accepted like the string form', async () => {
    const keyId = await createKey(kms, P, 'pd-number');
    const res = await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: 1096 });
    expect(res.body).toEqual({ key_id: keyId, key_state: '4' });
  });

  it('when the alias and description are updated, then describe-key shows the new values and the old alias is free', async () => {
    const keyId = await createKey(kms, P, 'old-name');
    const alias = await kms.call(P, 'update-key-alias', { key_id: keyId, key_alias: 'new-name' });
    expect(alias.body).toEqual({ key_info: { key_id: keyId, key_alias: 'new-name' } });
    const desc = await kms.call(P, 'update-key-description', { key_id: keyId, key_description: 'now described' });
    expect(desc.body).toEqual({ key_info: { key_id: keyId, key_description: 'now described' } });
    const described = await kms.call(P, 'describe-key', { key_id: 'alias/new-name' });
    expect(described.body.key_info).toMatchObject({ key_alias: 'new-name', key_description: 'now described' });
    expect((await kms.call(P, 'describe-key', { key_id: 'alias/old-name' })).body.error.error_code).toBe('KMS.0207');
    await createKey(kms, P, 'old-name');
  });

  it('when a key is pending deletion, then its alias and description can no longer be changed (KMS.0210)', async () => {
    const keyId = await createKey(kms, P, 'frozen');
    await kms.call(P, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' });
    const alias = await kms.call(P, 'update-key-alias', { key_id: keyId, key_alias: 'thawed' });
    expect(alias.body.error.error_code).toBe('KMS.0210');
    const desc = await kms.call(P, 'update-key-description', { key_id: keyId, key_description: 'x' });
    expect(desc.body.error.error_code).toBe('KMS.0210');
  });

  it('when update requests are malformed, then they answer the field codes', async () => {
    const keyId = await createKey(kms, P, 'upd-bad');
    expect((await kms.call(P, 'update-key-alias', { key_id: keyId, key_alias: 'a b' })).body.error.error_code).toBe(
      'KMS.1101',
    );
    expect((await kms.call(P, 'update-key-alias', { key_id: keyId, key_alias: 'dup' })).body.error.error_code).toBe(
      'KMS.1104',
    );
    expect(
      (await kms.call(P, 'update-key-description', { key_id: keyId, key_description: 'x'.repeat(256) })).body.error
        .error_code,
    ).toBe('KMS.1103');
    expect(
      (await kms.call(P, 'update-key-description', { key_id: keyId, key_description: 'x', extra: true })).body.error
        .error_code,
    ).toBe('KMS.0308');
    expect(
      (await kms.call(P, 'update-key-alias', { key_id: 'alias/upd-bad', key_alias: 'z' })).body.error.error_code,
    ).toBe('KMS.0205');
  });

  it.each([
    ['not-a-key-id', 'KMS.0205', 400],
    ['0d0466b0-e727-4d9c-b35d-f84bb474a37f', 'KMS.0207', 404],
    ['alias/never-created', 'KMS.0207', 404],
  ])('when describe-key names %s, then it answers %s', async (keyId, code, status) => {
    const res = await kms.call(P, 'describe-key', { key_id: keyId });
    expect(res.status).toBe(status);
    expect(res.body.error.error_code).toBe(code);
  });

  it('when keys are listed page by page, then limit, marker, truncated, next_marker and total are consistent', async () => {
    const project = 'projectlist01';
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await createKey(kms, project, `list-${i}`));
    await kms.call(project, 'disable-key', { key_id: ids[1] });

    const first = await kms.call(project, 'list-keys', { limit: '2' });
    expect(first.body).toMatchObject({ keys: ids.slice(0, 2), next_marker: '2', truncated: 'true', total: 5 });
    expect(first.body.key_details).toHaveLength(2);
    expect(first.body.key_details[0].key_id).toBe(ids[0]);
    const last = await kms.call(project, 'list-keys', { limit: '2', marker: '4' });
    expect(last.body).toMatchObject({ keys: ids.slice(4), next_marker: '', truncated: 'false', total: 5 });
    const all = await kms.call(project, 'list-keys', {});
    expect(all.body.keys).toEqual(ids);

    const disabled = await kms.call(project, 'list-keys', { key_state: '3' });
    expect(disabled.body).toMatchObject({ keys: [ids[1]], total: 1 });
    const pendingImport = await kms.call(project, 'list-keys', { key_state: '5' });
    expect(pendingImport.body).toMatchObject({ keys: [], total: 0, truncated: 'false' });

    expect((await kms.call(project, 'list-keys', { key_state: '6' })).body.error.error_code).toBe('KMS.0308');
    expect((await kms.call(project, 'list-keys', { limit: '0' })).body.error.error_code).toBe('KMS.1601');
    expect((await kms.call(project, 'list-keys', { limit: 'x' })).body.error.error_code).toBe('KMS.1601');
    expect((await kms.call(project, 'list-keys', { marker: '-1' })).body.error.error_code).toBe('KMS.1602');
  });

  it('when user-instances and user-quotas are read, then they count the project keys against the quota', async () => {
    const project = 'projectquota1';
    await createKey(kms, project, 'q1');
    await createKey(kms, project, 'q2');
    const instances = await kms.call(project, 'user-instances', undefined, { method: 'GET' });
    expect(instances.body).toEqual({ instance_num: 2 });
    const quotas = await kms.call(project, 'user-quotas', undefined, { method: 'GET' });
    expect(quotas.body.quotas.resources[0]).toEqual({ type: 'CMK', used: 2, quota: 25 });
  });

  it('when the project has used its CMK quota, then create-key answers KMS.1105 and creates nothing', async () => {
    const project = 'projectfull01';
    for (let i = 0; i < 25; i++) await createKey(kms, project, `full-${i}`);
    const over = await kms.call(project, 'create-key', { key_alias: 'one-too-many' });
    expect(over.status).toBe(400);
    expect(over.body.error.error_code).toBe('KMS.1105');
    expect((await kms.call(project, 'user-instances', undefined, { method: 'GET' })).body.instance_num).toBe(25);
  });
});
