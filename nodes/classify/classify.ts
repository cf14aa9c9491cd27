// Classify VM: online (child VM snapshot) when every condition holds, else the fallback policy.
import type { NodeAPI } from 'node-red';
import type { ClassifiedSet, EnumeratedSet, FallbackPolicy, UnreachablePolicy } from '../../src/contract/types';
import { countBy, registerStageNode, type StageNodeDef } from '../shared/stage-node';

interface ClassifyDef extends StageNodeDef {
  fallback: FallbackPolicy;
  /** a VM defined on the host but unreachable: fail the set (default) or report it and go on */
  unreachable?: UnreachablePolicy | '';
}

const POLICIES: readonly string[] = ['checkpoint', 'saved-state', 'fail'];
const UNREACHABLE: readonly string[] = ['fail', 'report'];

module.exports = function register(RED: NodeAPI) {
  registerStageNode<ClassifyDef>(RED, {
    type: 'vmbackup-classify',
    input: 'enumerated',
    output: 'classified',
    checkConfig: (c) => {
      if (c.fallback && !POLICIES.includes(c.fallback)) return `fallback: "${c.fallback}" is not one of ${POLICIES.join(', ')}`;
      if (c.unreachable && !UNREACHABLE.includes(c.unreachable))
        return `unreachable: "${c.unreachable}" is not one of ${UNREACHABLE.join(', ')}`;
      return undefined;
    },
    run: async ({ host, config }, set: EnumeratedSet) => host.classify(set, config.fallback || 'checkpoint', config.unreachable || 'fail'),
    done: (set: ClassifiedSet) =>
      `${countBy(set.vms, (vm) => vm.method) || '0 VMs'}${set.skipped?.length ? `, ${set.skipped.length} unreachable` : ''}`,
  });
};
