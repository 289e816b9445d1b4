import type { KeyRecord, KeyState } from '../../core/keys.js';
import { ownEntry } from '../own-entry.js';

/** Huawei's key_state codes (kms-apis.md §1.2). */
export const KEY_STATE_CODES = {
  PendingCreation: '1',
  Enabled: '2',
  Disabled: '3',
  PendingDeletion: '4',
} as const satisfies Record<KeyState, string>;

const STATE_BY_CODE: Readonly<Record<string, KeyState>> = {
  '2': 'Enabled',
  '3': 'Disabled',
  '4': 'PendingDeletion',
};

/** The core state a list-keys key_state filter selects; codes 1 and 5 select no key this service holds. */
export function stateForCode(code: string): KeyState | 'none' {
  return ownEntry(STATE_BY_CODE, code) ?? 'none';
}

/** describe-key's key_info. Dates are milliseconds as strings, as in Huawei's example. */
export function keyInfo(key: KeyRecord, realm: string) {
  return {
    key_id: key.id,
    domain_id: key.projectId,
    key_alias: key.alias,
    realm,
    key_description: key.description,
    key_spec: key.keySpec,
    key_usage: key.keyUsage,
    creation_date: String(key.createdAt),
    scheduled_deletion_date: key.deletionDate === null ? '' : String(key.deletionDate),
    key_state: KEY_STATE_CODES[key.state],
    default_key_flag: '0',
    key_type: '1',
    expiration_time: '',
    origin: key.origin,
    // A string here, as the SDK's KeyDetails has it (get-key-rotation-status answers a boolean).
    key_rotation_enabled: String(key.rotationPeriodDays !== null),
    // "0" is Huawei's default key store; a key made in a dedicated keystore names it.
    keystore_id: key.keyStoreId ?? '0',
    // Every key is in the default enterprise project (create-key refuses any other).
    sys_enterprise_project_id: '0',
  };
}
