/**
 * The functions with the most self time in a V8 .cpuprofile (from `node --cpu-prof`), grouped by function and file.
 *
 *   node --import tsx bench/cpuprofile-top.ts FILE.cpuprofile [N]
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, n = '25'] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: cpuprofile-top.ts FILE.cpuprofile [N]\n');
  process.exit(64);
}
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const self = new Map<string, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  total += dt;
  const frame = byId.get(id)?.callFrame;
  if (!frame) return;
  const where = frame.url.replace(/^file:\/\/.*?\/node_modules\//, '').replace(/^file:\/\/.*?\/(src|bench)\//, '$1/');
  const name = `${frame.functionName || '(anonymous)'}  ${where}${where ? `:${frame.lineNumber + 1}` : ''}`;
  self.set(name, (self.get(name) ?? 0) + dt);
});
const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(n));
process.stdout.write(`total ${(total / 1e6).toFixed(2)} s sampled\n| self % | self ms | function |\n|---:|---:|---|\n`);
for (const [name, us] of top) {
  process.stdout.write(`| ${((100 * us) / total).toFixed(1)} | ${(us / 1000).toFixed(0)} | \`${name}\` |\n`);
}
