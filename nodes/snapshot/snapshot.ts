// Snapshot: one atomic snapshot per VM over all its disks, then thaw the guest at once.
import type { NodeAPI } from 'node-red';
import type { PreparedSet, SnapshottedSet } from '../../src/contract/types';
import { registerStageNode, type StageNodeDef } from '../shared/stage-node';

module.exports = function register(RED: NodeAPI) {
  registerStageNode<StageNodeDef>(RED, {
    type: 'vmbackup-snapshot',
    input: 'prepared',
    output: 'snapshotted',
    run: async ({ host, status }, set: PreparedSet) => {
      status(`snapshotting ${set.vms.length} VMs`);
      return host.snapshot(set);
    },
    done: (set: SnapshottedSet) => {
      const frozen = set.vms.map((vm) => vm.snapshot.frozenMs).filter((ms): ms is number => ms !== undefined);
      const disks = set.vms.reduce((n, vm) => n + vm.snapshot.view.disks.length, 0);
      return `${disks} disks of ${set.vms.length} VMs${frozen.length ? `, frozen max ${Math.round(Math.max(...frozen))} ms` : ''}`;
    },
  });
};
