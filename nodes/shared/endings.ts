// Endings of backup sets that no stage node reports by itself: a watchdog (idleTimeout,
// sessionTimeout) or the host node closing (redeploy, node removed, Node-RED stopping). Each is
// raised as an error of one of the flow's backup nodes, so that Catch nodes get it with
// `msg.summary` (failedAt, backups, vmState) like any failed stage. A host node that closes hands
// its endings on here; the host node deployed after it (same id) raises them once the new flows
// run, or, when the host node was removed, the backup nodes that still name it do.
import type { Node } from 'node-red';
import type { SetEnding } from '../../src/pipeline/live-backup';
import { summarize } from '../../src/summary';

/** host node id -> endings of its sets that closed with it and are not reported yet */
const handedOn = new Map<string, SetEnding[]>();

export function handOn(hostId: string, endings: readonly SetEnding[]): void {
  if (endings.length) handedOn.set(hostId, [...(handedOn.get(hostId) ?? []), ...endings]);
}

export function takeHandedOn(hostId: string): SetEnding[] {
  const out = handedOn.get(hostId) ?? [];
  handedOn.delete(hostId);
  return out;
}

const BY: Record<SetEnding['by'], string> = { stage: 'failed', watchdog: 'aborted', close: 'ended by the host node closing' };

/** The message a Catch node gets for an ending: topic vm-backup/<host>/ended, the ending as payload, the summary. */
export function endingMessage(ending: SetEnding, host?: string): { text: string; msg: Record<string, unknown> } {
  const hostName = host ?? (ending.set.host as { name?: string } | undefined)?.name ?? 'host';
  const summary = summarize(ending.set, new Error(ending.why), { failedAt: ending.failedAt, left: ending.left, hostName });
  const { set: _set, ...payload } = ending;
  const text = `backup ${ending.backupId} on host ${hostName} ${BY[ending.by]} at ${ending.failedAt}: ${ending.why}; ${summary.vmState.text}`;
  return { text, msg: { topic: `vm-backup/${hostName}/ended`, payload, summary } };
}

/** Raise an ending through `node`: its status, and an error that Catch nodes get. */
export function raiseEnding(node: Node, ending: SetEnding, hostName?: string): void {
  const { text, msg } = endingMessage(ending, hostName);
  node.status({ fill: 'red', shape: 'ring', text: `set ended at ${ending.failedAt}: ${ending.why}`.slice(0, 60) });
  node.error(text, msg as never);
}
