/**
 * The entry a client-supplied name selects in a lookup table (operations, actions, key specs, field codes), or
 * undefined. Only the table's own entries count: `table['constructor']` or `table['__proto__']` would otherwise
 * reach Object.prototype and hand the caller an internal object.
 */
export function ownEntry<T>(table: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(table, name) ? table[name] : undefined;
}
