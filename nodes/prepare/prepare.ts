// Prepare: quiesce online guests (freeze), save the VMs the policy takes offline.
import type { NodeAPI } from 'node-red';
import type { ClassifiedSet, PreparedSet } from '../../src/contract/types';
import { registerStageNode, type StageNodeDef } from '../shared/stage-node';

module.exports = function register(RED: NodeAPI) {
  registerStageNode<StageNodeDef>(RED, {
    type: 'vmbackup-prepare',
    input: 'classified',
    output: 'prepared',
    run: async ({ host, status }, set: ClassifiedSet) => {
      const online = set.vms.filter((vm) => vm.method === 'child-vm-snapshot').length;
      const saved = set.vms.filter((vm) => vm.method === 'saved-state').length;
      status(`freezing ${online}, saving ${saved}`);
      return host.prepare(set);
    },
    done: (set: PreparedSet) => {
      const frozen = set.vms.filter((vm) => vm.prepare.action === 'freeze').length;
      const saved = set.vms.filter((vm) => vm.prepare.action === 'save').length;
      return `frozen ${frozen}/${set.vms.length}${saved ? `, saved ${saved}` : ''}`;
    },
  });
};
