// The host config node owns the live sessions of one hypervisor host: what is frozen, saved or
// on an overlay. Side effects go through it, so timeouts, crash recovery and cleanup have one home.
import type { Node, NodeAPI } from 'node-red';
import type { BackupHost } from '../../src/pipeline/backup-host';
import { openHost, recoveryReport, type RecoveryReport } from '../../src/host/open-host';
import type { RecoveryAction } from '../../src/recovery';
import type { SetEnding } from '../../src/pipeline/live-backup';
import { useProgramLauncher } from '../../src/util/run';
import { endingMessage, handOn, raiseEnding, takeHandedOn } from '../shared/endings';
import type { HostNodeDef, HostCredentials } from './settings';

export type { RecoveryReport };

export interface HostConfigNode extends Node<HostCredentials> {
  backupHost(): Promise<BackupHost>;
  lastRecovery: RecoveryAction[];
  /** the report of the recovery at start, once it ran and found something to do */
  recoveryReport?: RecoveryReport;
  /** stage nodes using this host register here; the flow's enumerate nodes raise the recovery report */
  addReporter(node: Node, type: string): void;
  removeReporter(node: Node): void;
  /** the host name as configured: a failure before any set exists (enumerate) is still named by its host */
  hostName: string;
}

/** The other host config nodes of the deployed flows (their ids and host names): recovery leaves their sets alone. */
function hostPeers(RED: NodeAPI, self: string): { id: string; hostName: string }[] {
  const peers: { id: string; hostName: string }[] = [];
  (RED.nodes as unknown as { eachNode?(f: (n: { id: string; type: string; hostName?: string; d?: boolean }) => void): void }).eachNode?.(
    (n) => {
      if (n.type === 'vmbackup-host' && n.id !== self && !n.d) peers.push({ id: n.id, hostName: n.hostName || 'localhost' });
    },
  );
  return peers;
}

module.exports = function register(RED: NodeAPI) {
  // qemu-img and friends are started by a small launcher process: a fork from the Node-RED
  // process itself would hold its event loop (and every other flow) ~13 ms per program
  useProgramLauncher(true);
  function VmBackupHost(this: HostConfigNode, config: HostNodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    node.lastRecovery = [];
    node.hostName = typeof config.hostName === 'string' && config.hostName ? config.hostName : 'localhost';
    let ready: Promise<BackupHost> | undefined;
    let closed = false;
    const reporters = new Map<string, { node: Node; type: string }>();
    node.addReporter = (user, type) => void reporters.set(user.id, { node: user, type });
    node.removeReporter = (user) => void reporters.delete(user.id);
    // Report once the flows are running, so that the Catch and Status nodes exist to see it.
    const flowsStarted = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 3000);
      timer.unref?.();
      const events = (RED as unknown as { events?: { once(e: string, f: () => void): void } }).events;
      events?.once('flows:started', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    /** the flow's nodes that raise for this host: those of `type` if any, else its enumerate nodes, else one */
    const raisers = (type = 'vmbackup-enumerate') => {
      const all = [...reporters.values()];
      for (const t of [type, 'vmbackup-enumerate']) {
        const chosen = all.filter((r) => r.type === t);
        if (chosen.length) return chosen.map((r) => r.node);
      }
      return all.slice(0, 1).map((r) => r.node);
    };
    /** a set ended by a watchdog, or by the host node deployed before this one closing: to Catch */
    const raiseEnded = (ending: SetEnding) => {
      if (closed) return;
      const users = raisers(`vmbackup-${ending.failedAt}`);
      if (users.length === 0) node.error(endingMessage(ending, node.hostName).text);
      for (const user of users) raiseEnding(user, ending, node.hostName);
    };
    // sets of this host node that ended when it was last redeployed: reported to the new flows
    const inherited = takeHandedOn(node.id);
    if (inherited.length) void flowsStarted.then(() => inherited.forEach(raiseEnded));
    const raise = (report: RecoveryReport) => {
      if (closed) return;
      for (const user of raisers()) {
        user.status({
          fill: report.ok ? 'yellow' : 'red',
          shape: 'ring',
          text: `recovered: ${report.actions.length} action(s)${report.ok ? '' : ', some FAILED'}`.slice(0, 60),
        });
        user.error(report.text, {
          topic: `vm-backup/${report.host}/recovery`,
          payload: report,
          summary: report.summary,
        } as never);
      }
    };

    node.backupHost = () => {
      ready ??= (async () => {
        const opened = await openHost(
          config,
          node.credentials ?? {},
          RED.settings.userDir ?? process.cwd(),
          (level, text) => (level === 'info' ? node.log(text) : node[level](text)),
          { id: node.id, peers: hostPeers(RED, node.id) },
        );
        node.lastRecovery = opened.actions;
        opened.host.onSetEnded = raiseEnded;
        // a set this node's previous instance ended on a redeploy is raised as handed on (above), once
        const fresh = opened.actions.filter((a) => !(a.kind === 'ended' && inherited.some((e) => e.backupId === a.backupId)));
        const report =
          fresh.length === opened.actions.length
            ? opened.report
            : fresh.length
              ? recoveryReport(node.hostName, opened.host.journal.file, fresh)
              : undefined;
        if (report) {
          node.recoveryReport = report;
          node[report.ok ? 'warn' : 'error'](report.text);
          void flowsStarted.then(() => raise(report));
        }
        return opened.host;
      })();
      ready.catch(() => {
        ready = undefined; // a bad setting is reported on use, and can be fixed by redeploy
      });
      return ready;
    };

    // Recover at start, not at the first backup: a guest left frozen by a crash must be thawed now.
    node.backupHost().catch((err: Error) => node.error(`not ready: ${err.message}`));

    node.on('close', (removed: boolean, done: () => void) => {
      closed = true;
      const closing = ready;
      ready = undefined;
      if (!closing) return done();
      closing
        .then(async (host) => {
          // within a few seconds whatever runs (Node-RED gives a node 15 s): a stage that does not
          // stop, or undos that take longer, are left to the set's guardian process
          const endings = await host.closeAll(removed ? 'the host node was removed' : 'flows redeployed or Node-RED stopping');
          // this process's QMP and agent connections go now: a step that did not stop loses them,
          // and the guardian (or the next host node's recovery) can reach the VMs
          await host.provider.close();
          host.journal.close();
          for (const e of endings) node.warn(endingMessage(e, node.hostName).text);
          // raised by the host node deployed next (same id), or the backup nodes that still name this one
          handOn(node.id, endings);
        })
        .catch(() => undefined)
        .finally(() => done());
    });
  }

  // @types/node-red wants a constructor of its own Node type; this one is a plain function typed by `this`
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  RED.nodes.registerType('vmbackup-host', VmBackupHost as any, {
    credentials: { password: { type: 'password' }, privateKey: { type: 'password' } },
  });
};
