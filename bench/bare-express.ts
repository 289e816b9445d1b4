/**
 * The baseline: a bare Express 5 JSON route, with `BARE_WORKERS` node:cluster workers (1 = no cluster).
 *
 *   BARE_PORT=8090 BARE_WORKERS=2 node --import tsx bench/bare-express.ts
 *
 * Logs `{"msg":"listening",...}` on stderr per serving process, as the service does.
 */
import cluster from 'node:cluster';
import express from 'express';

const port = Number(process.env.BARE_PORT ?? 0);
const workers = Number(process.env.BARE_WORKERS ?? 1);

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  const stop = () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGTERM');
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} else {
  const app = express();
  app.use(express.json());
  app.post('/v1.0/:project_id/kms/:action', (req, res) => {
    res.json({ ok: true, action: req.params.action, fields: Object.keys(req.body ?? {}).length });
  });
  const server = app.listen(port, '127.0.0.1', () => {
    const address = server.address();
    const actual = typeof address === 'object' && address ? address.port : port;
    process.stderr.write(
      `${JSON.stringify({ msg: 'listening', url: `http://127.0.0.1:${actual}`, pid: process.pid })}\n`,
    );
  });
  server.keepAliveTimeout = 65_000;
  process.once('SIGTERM', () => process.exit(0));
  process.once('SIGINT', () => process.exit(0));
}
