// Classification: each VM gets the online method when every rule holds, else the fallback policy.
import type { ClassifiedVm, Consistency, EnumeratedVm, FallbackPolicy, Method } from '../contract/types';
import { exclusionText } from './exclusion-text';
import { ONLINE_RULES } from './rules';

/**
 * States in which the guest OS is not running and left its disks as a shut-down machine does.
 * A paused, saved or panicked guest is not "off": its file systems are still mounted.
 */
const OFF_STATES = new Set(['shutdown', 'prelaunch', 'off']);

export class ClassificationRefused extends Error {
  constructor(readonly vms: ClassifiedVm[]) {
    super(
      `fallback policy is "fail" and ${vms.length} VM(s) cannot be backed up online: ` +
        vms
          .map(
            (vm) =>
              `${vm.id} (${vm.reasons
                .filter((r) => !r.ok)
                .map((r) => r.rule)
                .join(', ')})`,
          )
          .join('; '),
    );
    this.name = 'ClassificationRefused';
  }
}

export function classifyVm(vm: EnumeratedVm, fallback: FallbackPolicy): ClassifiedVm {
  const reasons = ONLINE_RULES.map((rule) => rule(vm));
  const warnings = [...(vm.warnings ?? [])];
  for (const d of vm.disks) if (!d.included) warnings.push(exclusionText(d));
  let method: Method;
  let consistency: Consistency;
  if (OFF_STATES.has(vm.state)) {
    method = 'offline';
    consistency = 'offline';
  } else if (reasons.every((r) => r.ok)) {
    method = 'child-vm-snapshot';
    consistency = 'application';
  } else if (fallback === 'saved-state' && vm.state !== 'running') {
    // QEMU 7.2: after `migrate` a VM that was not running stays in postmigrate with its images
    // inactive, and only `cont` (running the guest) reactivates them. So a paused VM is not saved:
    // its disks do not change while its vCPUs are stopped, and a checkpoint leaves it exactly as it was.
    method = 'checkpoint';
    consistency = 'crash';
    warnings.push(
      `saved-state not used: the VM is ${vm.state}, not running; its disks do not change while its vCPUs are stopped, so it gets a checkpoint and stays ${vm.state}`,
    );
  } else if (fallback === 'saved-state' && vm.savedStateRefused) {
    // never a method the hypervisor refuses for this VM (it would fail every night)
    method = 'checkpoint';
    consistency = 'crash';
    warnings.push(`saved-state not used: ${vm.savedStateRefused}; it gets a checkpoint instead`);
  } else if (fallback === 'saved-state') {
    method = 'saved-state';
    // A saved VM's disks hold what the guest wrote before its vCPUs stopped; together with the
    // saved memory the VM resumes exactly, but the disks alone are crash-consistent.
    consistency = 'crash';
  } else {
    method = 'checkpoint';
    consistency = 'crash';
  }
  return { ...vm, method, consistency, reasons, warnings };
}

/** Classify every VM; with policy "fail", refuse the whole set if any VM would need a fallback. */
export function classifyAll(vms: readonly EnumeratedVm[], fallback: FallbackPolicy): ClassifiedVm[] {
  const classified = vms.map((vm) => classifyVm(vm, fallback));
  if (fallback === 'fail') {
    const refused = classified.filter((vm) => vm.method === 'checkpoint');
    if (refused.length > 0) throw new ClassificationRefused(refused);
  }
  return classified;
}
