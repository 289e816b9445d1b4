import { KEY_ID_PATTERN, type KeyRef } from '../core/keys.js';

/**
 * A KeyId as the signed dialects take it: a key id, an alias name (`alias/...`), or an ARN of either,
 * `<arn prefix>:<region>:<account>:key/<id>` or `…:alias/<name>`, where `arn` captures region, account, kind and
 * name in that order. An ARN is followed only if `accepts(region, account)`: one of another project names nothing
 * the caller can see. Undefined when the KeyId names nothing.
 */
export function keyRefOf(
  keyId: string,
  arn: RegExp,
  accepts: (region: string, account: string) => boolean,
): KeyRef | undefined {
  if (KEY_ID_PATTERN.test(keyId)) return { kind: 'id', id: keyId };
  if (keyId.startsWith('alias/') && keyId.length > 'alias/'.length) return { kind: 'alias', alias: keyId };
  const parts = arn.exec(keyId);
  if (!parts || !accepts(parts[1] as string, parts[2] as string)) return undefined;
  const name = parts[4] as string;
  if (parts[3] === 'key' && KEY_ID_PATTERN.test(name)) return { kind: 'id', id: name };
  if (parts[3] === 'alias') return { kind: 'alias', alias: `alias/${name}` };
  return undefined;
}
