/** Connections the set-up requests (fetch's keep-alive pool) may still hold while a benchmark runs. */
const SET_UP_CONNECTIONS = 32;

/**
 * The service's connection limits for a benchmark that holds `connections` open at once. Every benchmark connection
 * comes from 127.0.0.1, one client address, so the per-client limit (128 by default) and the cap (512) must both
 * cover them; with the defaults, a run of more than about 100 connections would see some refused.
 */
export function connectionLimitsFor(connections: number): Record<string, string> {
  const needed = connections + SET_UP_CONNECTIONS;
  return {
    KMS_MAX_CONNECTIONS: String(Math.max(512, needed)),
    KMS_MAX_CONNECTIONS_PER_CLIENT: String(Math.max(128, needed)),
  };
}
