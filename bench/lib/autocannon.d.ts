/** The part of autocannon 8's programmatic API the benchmarks use (the package ships no types). */
declare module 'autocannon' {
  interface AutocannonRequest {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    setupRequest?: (request: AutocannonRequest, context: Record<string, unknown>) => AutocannonRequest;
  }
  interface AutocannonOptions {
    url: string;
    connections?: number;
    duration?: number;
    pipelining?: number;
    timeout?: number;
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    requests?: AutocannonRequest[];
    /** Requests per second across all connections, at most. */
    overallRate?: number;
    /** Resolve with the raw result of this run, to be merged with others' by `aggregateResult`. */
    skipAggregateResult?: boolean;
  }
  interface Histogram {
    average: number;
    mean: number;
    stddev: number;
    min: number;
    max: number;
    total: number;
    p50: number;
    p90: number;
    p99: number;
    p99_9: number;
  }
  interface AutocannonResult {
    requests: Histogram;
    latency: Histogram;
    throughput: Histogram;
    errors: number;
    timeouts: number;
    non2xx: number;
    duration: number;
    statusCodeStats: Record<string, { count: number }>;
  }
  /** What a run with `skipAggregateResult` resolves with: counters, and histograms still encoded. */
  interface AutocannonRawResult {
    totalCompletedRequests: number;
    errors: number;
    timeouts: number;
    non2xx: number;
    /** Seconds. */
    duration: number;
    statusCodeStats: Record<string, { count: number }>;
  }
  /**
   * Merges raw results: the latency histogram is that of all their requests, but `requests` (per-second samples) is
   * left empty, so a rate must be computed from the raw results' counts and durations.
   */
  function aggregateResult(results: AutocannonRawResult[], options: AutocannonOptions): AutocannonResult;
  function autocannon(options: AutocannonOptions & { skipAggregateResult: true }): Promise<AutocannonRawResult>;
  function autocannon(options: AutocannonOptions): Promise<AutocannonResult>;
  namespace autocannon {
    export { aggregateResult };
  }
  export default autocannon;
  export type { AutocannonOptions, AutocannonRawResult, AutocannonRequest, AutocannonResult };
}
