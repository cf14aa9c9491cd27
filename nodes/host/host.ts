// The host config node owns the live sessions of one hypervisor host: what is frozen, saved or
// on an overlay. Side effects go through it, so timeouts, crash recovery and cleanup have one home.
import * as path from 'node:path';
import type { Node, NodeAPI, NodeDef } from 'node-red';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal } from '../../src/journal/journal';
import { createProvider } from '../../src/providers';
import { checkRoot } from '../../src/repository/paths';
import { recover, type RecoveryAction } from '../../src/recovery';
import { isSafeName } from '../../src/util/ids';
import { hostSettings, type HostNodeDef, type HostCredentials } from './settings';

export interface HostConfigNode extends Node<HostCredentials> {
  backupHost(): Promise<BackupHost>;
  lastRecovery: RecoveryAction[];
}

module.exports = function register(RED: NodeAPI) {
  function VmBackupHost(this: HostConfigNode, config: HostNodeDef) {
    RED.nodes.createNode(this, config);
    const node = this;
    node.lastRecovery = [];
    let ready: Promise<BackupHost> | undefined;

    node.backupHost = () => {
      ready ??= (async () => {
        const s = hostSettings(config, node.credentials ?? {});
        const provider = createProvider(s.provider);
        const journalDir = s.journalDir ?? path.join(RED.settings.userDir ?? process.cwd(), 'vm-backup');
        const journal = new Journal(path.join(journalDir, `journal-${s.provider.hostName}.jsonl`));
        const host = new BackupHost(provider, journal, { hostName: s.provider.hostName, repositoryRoot: s.repository, timeouts: s.timeouts },
          (level, text) => (level === 'info' ? node.log(text) : node[level](text)));
        node.lastRecovery = await recover(journal, provider, host.repository, s.timeouts.commandMs);
        if (node.lastRecovery.length > 0) {
          const failed = node.lastRecovery.filter((a) => !a.ok);
          node[failed.length ? 'error' : 'warn'](`recovery: ${node.lastRecovery.map((a) => `${a.kind} ${a.vm ?? ''}${a.ok ? '' : ` FAILED: ${a.error}`}`).join('; ')}`);
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
