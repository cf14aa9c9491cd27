// The host's wiring, free of Node-RED: where its journal is, which provider it talks to, the
// recovery run at start and the report of what recovery did. The host config node
// (nodes/host/host.ts) keeps only the Node-RED life cycle around it.
import * as path from 'node:path';
import { BackupHost } from '../pipeline/backup-host';
import type { Logger } from '../pipeline/live-backup';
import { Journal, JournalError } from '../journal/journal';
import { createProvider } from '../providers';
import { recover, type RecoveryAction } from '../recovery';
import { hostSettings, type HostConfig, type HostCredentials, type HostSettings } from './settings';

/**
 * What recovery at start did, as the payload of the message the enumerate node(s) of this host
 * raise (Catch nodes get it; topic vm-backup/<host>/recovery) when it did anything.
 */
export interface RecoveryReport {
  host: string;
  at: string;
  ok: boolean;
  journal: string;
  actions: RecoveryAction[];
  text: string;
}

export interface OpenedHost {
  host: BackupHost;
  settings: HostSettings;
  actions: RecoveryAction[];
  /** set when recovery did anything */
  report?: RecoveryReport;
}

/**
 * The journal file of a host. One small function on purpose: how a journal is found (so that it
 * survives a rename of the host) is decided here and nowhere else.
 */
export function journalPath(settings: HostSettings, userDir: string): string {
  const dir = settings.journalDir ?? path.join(userDir, 'vm-backup');
  return path.join(dir, `journal-${settings.provider.hostName}.jsonl`);
}

/**
 * Check the settings, build the provider, open the journal and run recovery. Throws, naming the
 * setting, on a bad setting or a journal that cannot be written (no backup may run without one).
 */
export async function openHost(config: HostConfig, credentials: HostCredentials, userDir: string, log: Logger = () => undefined): Promise<OpenedHost> {
  const settings = hostSettings(config, credentials);
  const provider = createProvider(settings.provider);
  const journal = new Journal(journalPath(settings, userDir));
  const hostName = settings.provider.hostName;
  const host = new BackupHost(provider, journal, { hostName, repositoryRoot: settings.repository, timeouts: settings.timeouts }, log);
  let actions: RecoveryAction[];
  try {
    actions = await recover(journal, provider, host.repository, settings.timeouts.commandMs);
  } catch (err) {
    await provider.close().catch(() => undefined);
    journal.close();
    if (err instanceof JournalError) throw new Error(`journalDir: ${err.message}`);
    throw err;
  }
  const opened: OpenedHost = { host, settings, actions };
  if (actions.length > 0) opened.report = recoveryReport(hostName, journal.file, actions);
  return opened;
}

export function recoveryReport(host: string, journal: string, actions: RecoveryAction[]): RecoveryReport {
  return {
    host,
    at: new Date().toISOString(),
    ok: actions.every((a) => a.ok),
    journal,
    actions,
    text: `recovery on host ${host} after an interrupted backup: ${actions.map(describeAction).join('; ')}`,
  };
}

export function describeAction(a: RecoveryAction): string {
  const what = {
    thaw: 'thawed',
    resume: 'resumed',
    release: 'took the point-in-time view out of',
    untrack: 'settled the change tracking of',
    discard: 'removed the unpublished partial backup of',
    'discard-unjournalled': 'removed the unjournalled partial backup',
    unpublish: 'took back (all or none) the partly published backup of',
  }[a.kind];
  return `${a.ok ? '' : 'FAILED: '}${what} ${a.vm ?? ''}${a.backupId ? ` (backup ${a.backupId})` : ''}${a.by === 'guardian' ? ' by the guardian process when Node-RED died' : ''}${a.ok ? '' : `: ${a.error}`}`.trim();
}
