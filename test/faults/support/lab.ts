// The fault suite's own lab: two real TCG guests with qemu-ga and a workload (lab/lab-vms.ts),
// in a lab directory of their own so that the suite can kill them without disturbing anyone
// else's lab. Started once per mocha run; stopped at the end if this run started it.
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { labStatus, startLab, stopLab } from '../../../lab/lab-vms';
import { clearHookLog, installFaultHook, waitAgent } from './guest';
import type { VmRef } from './world';

/** dist/test/faults/support -> the checkout this suite runs from */
const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..');
/**
 * One lab per checkout (copies of the repository, e.g. for A/B benchmarks, must not kill and
 * re-hook each other's guests); two runs from the same checkout at once are not supported.
 */
export const FAULT_LAB =
  process.env.VMBACKUP_FAULTS_LAB_DIR ??
  path.join(os.tmpdir(), `vmb-faults-lab-${createHash('sha256').update(REPO_ROOT).digest('hex').slice(0, 8)}`);
export const LAB_VMS = ['fa-one', 'fa-two'] as const;
const SPECS = LAB_VMS.map((name) => ({ name, agent: true }));

let starting: Promise<void> | undefined;
let startedHere = false;

export const labRun = path.join(FAULT_LAB, 'run');
export const labImages = path.join(FAULT_LAB, 'images');
export const labRefs: VmRef[] = LAB_VMS.map((id) => ({ id, qmp: path.join(labRun, `${id}.qmp`), qga: path.join(labRun, `${id}.qga`) }));
export const qgaOf = (id: string) => path.join(labRun, `${id}.qga`);
export const dataImage = (id: string) => path.join(labImages, `${id}-data.qcow2`);

/** Start (or find running) the lab VMs, with the fault-capable freeze hook in each guest. */
export function ensureLab(): Promise<void> {
  starting ??= (async () => {
    const running = labStatus(FAULT_LAB)
      .vms.filter((v) => v.alive)
      .map((v) => v.name);
    startedHere = LAB_VMS.some((vm) => !running.includes(vm));
    await startLab({ labDir: FAULT_LAB, vms: SPECS, install: false, log: (m) => process.env.VMBACKUP_FAULTS_VERBOSE && console.log(m) });
    for (const vm of LAB_VMS) await prepareGuest(vm);
  })();
  starting.catch(() => (starting = undefined));
  return starting;
}

/** Start again a lab VM whose QEMU was killed, and make it ready for faults. */
export async function restartLabVm(vm: string): Promise<void> {
  await startLab({ labDir: FAULT_LAB, vms: SPECS.filter((s) => s.name === vm), install: false });
  await prepareGuest(vm);
}

async function prepareGuest(vm: string): Promise<void> {
  await waitAgent(qgaOf(vm));
  await installFaultHook(qgaOf(vm));
  await clearHookLog(qgaOf(vm));
}

after(async function () {
  this.timeout(120_000);
  if (startedHere && !process.env.VMBACKUP_KEEP_LAB) await stopLab(FAULT_LAB, { graceful: false });
});
