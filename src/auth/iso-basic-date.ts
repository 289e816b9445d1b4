/**
 * The ISO 8601 "basic format" UTC time both signed dialects date their requests with: `YYYYMMDDTHHMMSSZ`, e.g.
 * 20261202T054553Z (AWS SigV4's X-Amz-Date, Huawei's X-Sdk-Date).
 */
const ISO_BASIC = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;

/** Milliseconds since the epoch, or NaN when `value` is not a real time in that format. */
export function parseIsoBasicDate(value: string): number {
  const m = ISO_BASIC.exec(value);
  if (!m) return Number.NaN;
  const [, y, mo, d, h, mi, s] = m.map(Number) as [number, number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, s);
  return isoBasicDate(ms) === value ? ms : Number.NaN; // refuses 20150230T…, which Date.UTC would roll over
}

export function isoBasicDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}
