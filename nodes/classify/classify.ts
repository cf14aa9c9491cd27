// Classify VM: online (child VM snapshot) when every condition holds, else the fallback policy.
import type { NodeAPI } from 'node-red';
import type { ClassifiedSet, EnumeratedSet, FallbackPolicy } from '../../src/contract/types';
import { countBy, registerStageNode, type StageNodeDef } from '../shared/stage-node';

interface ClassifyDef extends StageNodeDef {
  fallback: FallbackPolicy;
}

const POLICIES: readonly string[] = ['checkpoint', 'saved-state', 'fail'];

module.exports = function register(RED: NodeAPI) {
  registerStageNode<ClassifyDef>(RED, {
    type: 'vmbackup-classify',
    input: 'enumerated',
    output: 'classified',
    checkConfig: (c) => (c.fallback && !POLICIES.includes(c.fallback) ? `fallback: "${c.fallback}" is not one of ${POLICIES.join(', ')}` : undefined),
    run: async ({ host, config }, set: EnumeratedSet) => host.classify(set, config.fallback || 'checkpoint'),
    done: (set: ClassifiedSet) => countBy(set.vms, (vm) => vm.method) || '0 VMs',
  });
};
