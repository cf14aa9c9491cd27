// The conformance kit's dry run, here, without a Hyper-V host (docs/hyperv.md, "Conformance kit"):
//   node dist/src/providers/hyperv/kit/cli.js --answers <folder of recorded outputs>
//        [--test-vm <name>] [--allow-downtime] [--out <folder>]
// prints every step vmb-kit.ps1 runs on a host with the same options, in order, with its exact
// arguments, and answers each from the recorded outputs (test/unit/hyperv/fixtures: the shape a
// host writes), writing what the kit would write. Nothing is executed.
import * as path from 'node:path';
import { readFileSync } from 'node:fs';
import { defaultScriptsDir } from '../runner';
import { DryRunner, kitScriptPath, readKitSteps, runKit } from './kit';
import { answerFileFor } from './answers';

async function main(argv: string[]): Promise<number> {
  const opt = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const answers = opt('--answers');
  if (!answers) {
    process.stderr.write('usage: cli.js --answers <folder> [--test-vm <name>] [--allow-downtime] [--out <folder>]\n');
    return 2;
  }
  const steps = readKitSteps(readFileSync(kitScriptPath(defaultScriptsDir()), 'utf8'));
  const runner = new DryRunner((script, params) => answerFileFor(path.resolve(answers), script, params));
  const testVm = opt('--test-vm');
  const out = opt('--out');
  const runs = await runKit({
    runner,
    steps,
    ...(testVm ? { testVm } : {}),
    allowDowntime: argv.includes('--allow-downtime'),
    ...(out ? { outDir: path.resolve(out) } : {}),
    log: (l) => process.stdout.write(`${l}\n`),
  });
  const failed = runs.filter((r) => !r.ok);
  process.stdout.write(
    `${runs.length} steps, ${failed.length} failed${out ? `; written to ${out}` : ''} (dry run: nothing was executed)\n`,
  );
  return failed.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  },
);
