// Post-snapshot: saved VMs return to their previous state; online VMs are at their consistency point.
import type { NodeAPI } from 'node-red';
import type { PostSnapshotSet, SnapshottedSet } from '../../src/contract/types';
import { countBy, registerStageNode, type StageNodeDef } from '../shared/stage-node';

module.exports = function register(RED: NodeAPI) {
  registerStageNode<StageNodeDef>(RED, {
    type: 'vmbackup-post-snapshot',
    input: 'snapshotted',
    output: 'post-snapshot',
    run: async ({ host, status }, set: SnapshottedSet) => {
      status('returning VMs to their state');
      return host.postSnapshot(set);
    },
    done: (set: PostSnapshotSet) => countBy(set.vms, (vm) => vm.postSnapshot.returnedTo) || '0 VMs',
  });
};
