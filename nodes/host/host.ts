// The host config node owns the live sessions of one hypervisor host: what is frozen, saved or
// on an overlay. Side effects go through it, so timeouts, crash recovery and cleanup have one home.
import * as path from 'node:path';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal, JournalError } from '../../src/journal/journal';
import { createProvider } from '../../src/providers';
import { checkRoot } from '../../src/repository/paths';
import { journalPath, recover, type RecoveryAction } from '../../src/recovery';
import { isSafeName } from '../../src/util/ids';
import { useProgramLauncher } from '../../src/util/run';
import { hostSettings, type HostNodeDef, type HostCredentials } from './settings';

export interface HostConfigNode extends Node<HostCredentials> {
  backupHost(): Promise<BackupHost>;
  lastRecovery: RecoveryAction[];
  /** the report of the recovery at start, once it ran and found something to do */
  recoveryReport?: RecoveryReport;
  /** stage nodes using this host register here; the flow's enumerate nodes raise the recovery report */
  addReporter(node: Node, type: string): void;
  removeReporter(node: Node): void;
}

/**
 * What recovery at start did, as the payload of the message the enumerate node(s) of this host
 * raise with node.error (Catch nodes get it; topic vm-backup/<host>/recovery) when it did anything.
 */
export interface RecoveryReport {
  host: string;
  at: string;
  ok: boolean;
  journal: string;
  actions: RecoveryAction[];
  text: string;
}

function describeAction(a: RecoveryAction): string {
  // findings that are not undos: their error says what was found and what to do
  if (a.kind === 'skip-lines' || a.kind === 'refuse' || a.kind === 'foreign-pending' || a.kind === 'leave-staging') return `${a.ok ? '' : 'ATTENTION: '}${a.error ?? a.kind}`;
  const what = {
    thaw: 'thawed',
    resume: 'resumed',
    merge: 'merged the overlays of',
    discard: 'removed the unpublished partial backup of',
    'discard-unjournalled': 'removed the unjournalled partial backup',
    unpublish: 'took back (all or none) the partly published backup of',
  }[a.kind];
  return `${a.ok ? '' : 'FAILED: '}${what} ${a.vm ?? ''}${a.backupId ? ` (backup ${a.backupId})` : ''}${a.by === 'guardian' ? ' by the guardian process when Node-RED died' : ''}${a.journal ? ` (from journal ${a.journal})` : ''}${a.ok ? '' : `: ${a.error}`}`.trim();
}

/** A node id as a journal owner (a safe name); undefined when it cannot be one. */
function ownerId(id: string): string | undefined {
  return isSafeName(id) ? id : undefined;
}

/** The other host config nodes of the deployed flows (their ids and host names). */
function hostPeers(RED: NodeAPI, self: string): { id: string; hostName: string }[] {
  const peers: { id: string; hostName: string }[] = [];
  (RED.nodes as unknown as { eachNode?(f: (n: { id: string; type: string; hostName?: string; d?: boolean }) => void): void }).eachNode?.((n) => {
    if (n.type === 'vmbackup-host' && n.id !== self && !n.d) peers.push({ id: n.id, hostName: n.hostName || 'localhost' });
  });
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
    const raise = (report: RecoveryReport) => {
      if (closed) return;
      const all = [...reporters.values()];
      const chosen = all.filter((r) => r.type === 'vmbackup-enumerate');
      for (const { node: user } of chosen.length ? chosen : all.slice(0, 1)) {
        user.status({ fill: report.ok ? 'yellow' : 'red', shape: 'ring', text: `recovered: ${report.actions.length} action(s)${report.ok ? '' : ', some FAILED'}`.slice(0, 60) });
        user.error(report.text, { topic: `vm-backup/${report.host}/recovery`, payload: report } as never);
      }
    };

    node.backupHost = () => {
      ready ??= (async () => {
        const s = hostSettings(config, node.credentials ?? {});
        const provider = createProvider(s.provider);
        const journalDir = s.journalDir ?? path.join(RED.settings.userDir ?? process.cwd(), 'vm-backup');
        // Every line is stamped with this node's id, which a rename of the host keeps: recovery
        // finds this node's sets in the journal of its older name too (src/recovery.ts).
        const owner = ownerId(node.id);
        const peers = hostPeers(RED, node.id);
        // host nodes sharing a name share its journal: each recovers its own sets; the sets of a
        // node no longer here are recovered by one of them only (the lowest id)
        const adoptOrphans = !peers.some((p) => p.hostName === s.provider.hostName && p.id < node.id);
        const journal = new Journal(journalPath(journalDir, s.provider.hostName), { host: s.provider.hostName, ...(owner ? { owner } : {}) });
        const host = new BackupHost(provider, journal, { hostName: s.provider.hostName, repositoryRoot: s.repository, timeouts: s.timeouts },
          (level, text) => (level === 'info' ? node.log(text) : node[level](text)));
        try {
          node.lastRecovery = await recover(journal, provider, host.repository, s.timeouts.commandMs, {
            hostName: s.provider.hostName, ...(owner ? { owner } : {}), adoptOrphans, liveOwners: new Set(peers.map((p) => ownerId(p.id)).filter((id): id is string => !!id)),
          });
        } catch (err) {
          // no backup may run without a journal it can write: refuse, naming the setting
          if (err instanceof JournalError) throw new Error(`journalDir: ${err.message}`);
          throw err;
        }
        if (node.lastRecovery.length > 0) {
          const failed = node.lastRecovery.filter((a) => !a.ok);
          const report: RecoveryReport = {
            host: s.provider.hostName,
            at: new Date().toISOString(),
            ok: failed.length === 0,
            journal: journal.file,
            actions: node.lastRecovery,
            text: `recovery on host ${s.provider.hostName} after an interrupted backup: ${node.lastRecovery.map(describeAction).join('; ')}`,
          };
          node.recoveryReport = report;
          node[failed.length ? 'error' : 'warn'](report.text);
          void flowsStarted.then(() => raise(report));
        }
        return host;
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
          await host.closeAll(removed ? 'host node removed' : 'flows redeployed or Node-RED stopping');
          await host.provider.close();
          host.journal.close();
        })
        .catch(() => undefined)
        .finally(() => done());
    });
  }

  RED.nodes.registerType('vmbackup-host', VmBackupHost as any, {
    credentials: { password: { type: 'password' }, privateKey: { type: 'password' } },
  });
};

export { checkRoot, isSafeName, DEFAULT_TIMEOUTS };
