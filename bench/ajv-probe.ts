// Preloaded into the benchmark's Node-RED process (node -r dist/bench/ajv-probe.js red.js ...):
// wraps the package's assertStage / assertManifest so that every ajv check the nodes make in a
// real run is timed where it happens. On SIGUSR2 the records go to $BENCH_AJV_OUT and are reset.
// Nothing else changes: the wrapped functions are the package's own, called with the same arguments.
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

interface Call { fn: string; stage: string; what: string; vms: number; ms: number; first: boolean }

const out = process.env.BENCH_AJV_OUT;
const modulePath = process.env.BENCH_VALIDATE_MODULE ?? path.resolve(__dirname, '../src/contract/validate.js');

if (out) {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const mod = require(modulePath) as Record<string, (...args: unknown[]) => unknown>;
  const calls: Call[] = [];
  const seen = new Set<string>();
  const wrap = (name: 'assertStage' | 'assertManifest') => {
    const original = mod[name];
    mod[name] = function wrapped(...args: unknown[]) {
      const t0 = performance.now();
      try {
        return original.apply(this, args);
      } finally {
        const ms = performance.now() - t0;
        const stage = name === 'assertStage' ? String(args[0]) : 'manifest';
        const doc = (name === 'assertStage' ? args[1] : args[0]) as { vms?: unknown[] } | undefined;
        calls.push({ fn: name, stage, what: name === 'assertStage' ? String(args[2] ?? 'msg.payload') : 'manifest.json', vms: Array.isArray(doc?.vms) ? doc!.vms!.length : 1, ms, first: !seen.has(stage) });
        seen.add(stage);
      }
    };
  };
  wrap('assertStage');
  wrap('assertManifest');
  process.on('SIGUSR2', () => {
    writeFileSync(out, JSON.stringify(calls));
    calls.length = 0;
  });
}
