// The conformance kit's steps, run through a PowerShellRunner. The steps are the JSON table
// inside scripts/kit/vmb-kit.ps1 (what a Hyper-V admin runs on a real host); this is its twin on
// the maintainers' side, used for the kit's dry run (DryRunner below: nothing is executed; each
// script is answered from recorded outputs) and, with a real runner, from a Node-RED machine.
// What the twin shares with the PowerShell kit: the step table, its order, its rules (read-only
// unless a test VM and AllowChanges; downtime steps only with AllowDowntime; after a failure only
// the `always` steps) and the output names. What it does not share: the PowerShell code that
// resolves the templates and starts powershell.exe; that runs only on a host.
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { HyperVError } from '../errors';
import { interpretRun, isScriptName, type PowerShellRunner, type ScriptParams } from '../runner';

export interface KitStep {
  id: string;
  script: string;
  args: Record<string, string | number | boolean>;
  forEach?: string;
  changes?: boolean;
  downtime?: boolean;
  always?: boolean;
  cleanup?: 'snapshot';
}

/** The step table of vmb-kit.ps1 (the JSON here-string $KitSteps). */
export function readKitSteps(ps1: string): KitStep[] {
  const m = /\$KitSteps = @'\r?\n([\s\S]*?)\r?\n'@/.exec(ps1);
  if (!m) throw new Error('vmb-kit.ps1: no $KitSteps table');
  const steps = JSON.parse(m[1]!) as KitStep[];
  for (const s of steps) if (!isScriptName(s.script)) throw new Error(`vmb-kit.ps1: step ${s.id} runs ${s.script}, not a shipped script`);
  return steps;
}

export function kitScriptPath(scriptsDir: string): string {
  return path.join(scriptsDir, 'kit', 'vmb-kit.ps1');
}

/** Every value at a.b.c, a.b[].c (each element of b). */
export function kitValues(obj: unknown, ref: string): unknown[] {
  let values: unknown[] = [obj];
  for (const part of ref.split('.')) {
    const each = part.endsWith('[]');
    const name = part.replace(/\[\]$/, '');
    const next: unknown[] = [];
    for (const v of values) {
      if (v === null || typeof v !== 'object') continue;
      const x = (v as Record<string, unknown>)[name];
      if (x === undefined) continue;
      if (each && Array.isArray(x)) next.push(...x);
      else next.push(x);
    }
    values = next;
  }
  return values;
}

/** The value at ref; a trailing | joins every value with | */
export function kitValue(obj: unknown, ref: string): unknown {
  return ref.endsWith('|') ? kitValues(obj, ref.slice(0, -1)).map(String).join('|') : kitValues(obj, ref)[0];
}

export interface KitOptions {
  runner: PowerShellRunner;
  steps: KitStep[];
  /** a test VM by name: the steps that change it run (AllowChanges) */
  testVm?: string;
  allowDowntime?: boolean;
  /** where each step's answer is written as <step>.json; absent: nothing written */
  outDir?: string;
  /** the backup ids of the kit's records; default from the time */
  stamp?: string;
  log?: (line: string) => void;
}

export interface KitRun {
  id: string;
  script: string;
  args: ScriptParams;
  ok: boolean;
  error?: string;
}

/** Run the kit's steps (see vmb-kit.ps1 for their meaning). Resolves with every step run, in order. */
export async function runKit(o: KitOptions): Promise<KitRun[]> {
  const stamp =
    o.stamp ??
    new Date()
      .toISOString()
      .replace(/[-:]/g, '')
      .replace(/\.\d+Z$/, 'Z');
  const ctx: Record<string, unknown> = { R1: `vmbackup-${stamp}-kit001`, R2: `vmbackup-${stamp}-kit002`, R3: `vmbackup-${stamp}-kit003` };
  const outputs: Record<string, unknown> = {};
  const runs: KitRun[] = [];
  /** the snapshot steps run so far: their step id and snapshot name */
  const snapshots: { step: string; name: string }[] = [];
  let failed = false;
  let test: { id: string } | undefined;
  if (o.outDir) await fs.mkdir(o.outDir, { recursive: true });

  const resolve = (text: string, vars: Record<string, unknown>): string =>
    text.replace(/\{([^{}]+)\}/g, (_, ref: string) => {
      if (ref in vars) return String(vars[ref]);
      const head = ref.split('.')[0]!.replace(/\[\]$/, '');
      const from = head in vars ? vars[head] : outputs[head];
      if (from === undefined) throw new HyperVError('invalid-argument', `kit: {${ref}} is not known yet`);
      return String(kitValue(from, ref.slice(head.length + 1)));
    });

  const run = async (step: KitStep, vars: Record<string, unknown>) => {
    const id = resolve(step.id, vars).replace(/[^A-Za-z0-9._-]/g, '_');
    const args: ScriptParams = {};
    for (const [k, v] of Object.entries(step.args)) args[k] = typeof v === 'string' ? resolve(v, vars) : v;
    o.log?.(`${id.padEnd(34)} ${step.script.padEnd(30)} ${JSON.stringify(args)}${step.changes ? '   (changes the test VM)' : ''}`);
    const entry: KitRun = { id, script: step.script, args, ok: false };
    runs.push(entry);
    try {
      const result = await o.runner.run(step.script as never, args);
      outputs[id] = result;
      entry.ok = true;
      if (o.outDir) await fs.writeFile(path.join(o.outDir, `${id}.json`), JSON.stringify({ result, warnings: [] }) + '\n');
    } catch (err) {
      entry.error = (err as Error).message;
      throw err;
    }
  };

  for (const step of o.steps) {
    if (step.changes && !o.testVm) continue;
    if (step.downtime && !o.allowDowntime) continue;
    if (failed && !step.always) continue;
    try {
      if (step.forEach === 'vm') {
        const vms = ((outputs.enumerate as { Vms?: { VM?: { Id?: string; Name?: string } }[] } | undefined)?.Vms ?? []).map(
          (v) => v.VM ?? {},
        );
        for (const vm of vms) await run(step, { vm: { id: vm.Id, name: vm.Name } });
      } else if (step.forEach) {
        const head = step.forEach.split('.')[0]!;
        const items = kitValues(outputs[head], step.forEach.slice(head.length + 1));
        for (const [i, item] of items.entries()) await run(step, { item, 'item.index': i, ...ctx, test });
      } else {
        if (step.changes && !test) {
          const found = ((outputs.enumerate as { Vms?: { VM?: { Id?: string; Name?: string } }[] } | undefined)?.Vms ?? []).filter(
            (v) => v.VM?.Name === o.testVm,
          );
          if (found.length !== 1)
            throw new HyperVError('invalid-argument', `test VM '${o.testVm}': ${found.length} VMs of that name on this host`);
          test = { id: String(found[0]!.VM!.Id) };
        }
        if (step.cleanup === 'snapshot') snapshots.push({ step: step.id, name: resolve(String(step.args.SnapshotName), ctx) });
        await run(step, { ...ctx, test });
      }
    } catch (err) {
      failed = true;
      o.log?.(`WARNING: ${(err as Error).message}`);
      if (test) {
        // by Id when the snapshot's step answered (see vmb-kit.ps1), else by name
        for (const s of snapshots) {
          const id = kitValue(outputs[s.step], 'Checkpoint.Id');
          const args: ScriptParams = id
            ? { VmId: test.id, CheckpointId: String(id), AllowRecoveryType: true, WaitSeconds: 120 }
            : { VmId: test.id, SnapshotName: s.name, WaitSeconds: 120 };
          await run({ id: `cleanup-${s.name}`, script: 'remove-checkpoint.ps1', args: args as KitStep['args'] }, {}).catch(() => undefined);
        }
        snapshots.length = 0;
      }
    }
  }
  if (o.outDir) await fs.writeFile(path.join(o.outDir, 'steps.json'), JSON.stringify(runs, null, 2) + '\n');
  return runs;
}

/**
 * A runner that runs nothing: each script is answered from recorded outputs (`answers`: script,
 * or script + Action, -> a file holding one envelope line), read through the provider's own
 * envelope reader. Every call is recorded.
 */
export class DryRunner implements PowerShellRunner {
  readonly mode = 'dry-run';
  readonly calls: { script: string; params: ScriptParams }[] = [];
  constructor(private readonly answers: (script: string, params: ScriptParams) => string | undefined) {}

  async run(script: string, params: ScriptParams): Promise<unknown> {
    this.calls.push({ script, params });
    const file = this.answers(script, params);
    if (!file) throw new HyperVError('spawn', `${script}: the dry run has no recorded answer for it`);
    // a recorded envelope may be pretty-printed; PowerShell writes it as one line
    const envelope = JSON.parse(readFileSync(file, 'utf8')) as { error?: unknown };
    return interpretRun(script, { stdout: `${JSON.stringify(envelope)}\n`, stderr: '', exitCode: envelope.error ? 1 : 0 });
  }
  fetchFile(): Promise<{ bytes: number }> {
    return Promise.reject(new HyperVError('spawn', 'the dry run copies no file'));
  }
  openFile(): never {
    throw new HyperVError('spawn', 'the dry run reads no file');
  }
  async close(): Promise<void> {}
}
