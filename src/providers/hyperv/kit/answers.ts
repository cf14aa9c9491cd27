// Which recorded output answers which script in the kit's dry run: the file names the provider's
// tests use (test/unit/hyperv/fixtures), so the dry run reads exactly what the tests read.
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { ScriptParams } from '../runner';

const BY_SCRIPT: Record<string, string> = {
  'enumerate.ps1': 'enumerate-host.json',
  'find-recovery-checkpoints.ps1': 'find-recovery-checkpoints.json',
  'get-state.ps1': 'get-state-running.json',
  'describe.ps1': 'describe.json',
  'snapshot.ps1': 'snapshot-recovery.json',
  'check-snapshot.ps1': 'check-snapshot-ok.json',
  'rct-changes.ps1': 'rct-changes.json',
  'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
  'save-vm.ps1': 'save-vm.json',
  'start-vm.ps1': 'start-vm.json',
};

export function answerFileFor(dir: string, script: string, params: ScriptParams): string | undefined {
  const name = script === 'reference-point.ps1' ? `reference-point-${String(params.Action)}.json` : BY_SCRIPT[script];
  const file = name ? path.join(dir, name) : undefined;
  return file && existsSync(file) ? file : undefined;
}
