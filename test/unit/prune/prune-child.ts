// A prune in a process of its own, killed (SIGKILL) right at a named step: prune-crash.test.ts runs
// it once per step. argv: <repository root> <step to die at, "name:index", or "-"> <rules as JSON>.
// Prints every step it reaches, one a line.
import { pruneVm } from '../../../src/prune';
import { HOST, VM } from './build-repo';

const [root, killAt, rules] = process.argv.slice(2);
process.env.TZ = 'UTC';
pruneVm(VM, {
  root,
  host: HOST,
  rules: JSON.parse(rules) as Record<string, number>,
  onStep: (step, d) => {
    const key = `${step}:${d.index ?? ''}`;
    process.stdout.write(`${key}\n`);
    if (key === killAt) process.kill(process.pid, 'SIGKILL');
  },
}).then(
  (r) => {
    process.stdout.write(`result ${JSON.stringify({ ok: r.ok, error: r.error })}\n`);
  },
  (err: Error) => {
    process.stdout.write(`failed ${err.message}\n`);
    process.exitCode = 1;
  },
);
