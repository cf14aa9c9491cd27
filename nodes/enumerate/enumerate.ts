// Enumerate writers: every VM on the host as a component, with its disks, agent and guest facts.
import type { NodeAPI } from 'node-red';
import type { EnumeratedSet } from '../../src/contract/types';
import { countBy, registerStageNode, type StageNodeDef } from '../shared/stage-node';

module.exports = function register(RED: NodeAPI) {
  registerStageNode<StageNodeDef>(RED, {
    type: 'vmbackup-enumerate',
    output: 'enumerated',
    run: async ({ host, status }) => {
      status('enumerating');
      return host.enumerate();
    },
    done: (set: EnumeratedSet) => `${set.vms.length} VMs${set.vms.length ? `: ${countBy(set.vms, (vm) => vm.state)}` : ''}`,
  });
};
