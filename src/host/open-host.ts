// The host's wiring, free of Node-RED: where its journal is, which provider it talks to, the
// recovery run at start and the report of what recovery did. The host config node
// (nodes/host/host.ts) keeps only the Node-RED life cycle around it.
import * as path from 'node:path';
import { BackupHost } from '../pipeline/backup-host';
import type { Logger } from '../pipeline/live-backup';
import { Journal, JournalError } from '../journal/journal';
import { createProvider, type ProviderConfig } from '../providers';
import type { HostProvider } from '../providers/provider';
import { journalPath as journalFile, recover, type RecoveryAction } from '../recovery';
import { summarize, type BackupSummary } from '../summary';
import { isSafeName } from '../util/ids';
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
  /**
   * As a failed stage's: when recovery finished a set that Node-RED left in flight (stopped,
   * crashed, killed), that ending's (failedAt: the stage it was cut in); else failedAt "start".
   */
  summary: BackupSummary;
}

export interface OpenedHost {
  host: BackupHost;
  settings: HostSettings;
  actions: RecoveryAction[];
  /** set when recovery did anything */
  report?: RecoveryReport;
}

/**
 * The journal file of a host. Every line is stamped with the host node's id, which a rename of
 * the host keeps: recovery finds this node's sets in the journal of an older name too.
 */
export function journalPath(settings: HostSettings, userDir: string): string {
  return journalFile(settings.journalDir ?? path.join(userDir, 'vm-backup'), settings.provider.hostName);
}

/** Who this host node is among the host nodes deployed beside it (for recovery's ownership). */
export interface HostIdentity {
  /** the host config node's id */
  id: string;
  /** the other host config nodes deployed now */
  peers: { id: string; hostName: string }[];
}

/**
 * Check the settings, build the provider, open the journal and run recovery. Throws, naming the
 * setting, on a bad setting or a journal that cannot be written (no backup may run without one).
 * `makeProvider` is the provider registry; a unit test passes one that adds a fake transport.
 */
export async function openHost(
  config: HostConfig,
  credentials: HostCredentials,
  userDir: string,
  log: Logger = () => undefined,
  identity?: HostIdentity,
  makeProvider: (config: ProviderConfig) => HostProvider = createProvider,
): Promise<OpenedHost> {
  const settings = hostSettings(config, credentials);
  const provider = makeProvider(settings.provider);
  const hostName = settings.provider.hostName;
  const owner = identity && isSafeName(identity.id) ? identity.id : undefined;
  const peers = identity?.peers ?? [];
  // host nodes sharing a name share its journal: each recovers its own sets; the sets of a node
  // no longer here are recovered by one of them only (the lowest id)
  const adoptOrphans = !peers.some((p) => p.hostName === hostName && owner !== undefined && p.id < owner);
  const journal = new Journal(journalPath(settings, userDir), { host: hostName, ...(owner ? { owner } : {}) });
  const host = new BackupHost(
    provider,
    journal,
    { hostName, repositoryRoot: settings.repository, timeouts: settings.timeouts, exclude: settings.exclude },
    log,
  );
  let actions: RecoveryAction[];
  try {
    actions = await recover(journal, provider, host.repository, settings.timeouts.commandMs, {
      hostName,
      ...(owner ? { owner } : {}),
      adoptOrphans,
      liveOwners: new Set(peers.map((p) => p.id).filter((id) => isSafeName(id))),
    });
    if (provider.removeLeftovers) {
      // what a crash left that no journal names any more (Hyper-V: vmbackup-* checkpoints)
      for (const line of await provider.removeLeftovers().catch((err: Error) => [`FAILED to look for leftovers: ${err.message}`])) {
        actions.push({
          kind: 'leftover',
          ok: !line.startsWith('FAILED'),
          ...(line.startsWith('FAILED') ? { error: line } : { detail: line }),
        });
      }
    }
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
  const text = `recovery on host ${host} after an interrupted backup: ${actions.map(describeAction).join('; ')}`;
  return {
    host,
    at: new Date().toISOString(),
    ok: actions.every((a) => a.ok),
    journal,
    actions,
    text,
    // a report about no set (leftovers found, journal lines skipped) still has a summary for alert flows
    summary: interruptedSummary(host, actions) ?? summarize(undefined, new Error(text), { failedAt: 'start', left: [], hostName: host }),
  };
}

/** The ending of the (first) set recovery found in flight, summarised like a failed stage's. */
function interruptedSummary(host: string, actions: readonly RecoveryAction[]): BackupSummary | undefined {
  const backupId = actions.find((a) => a.backupId && a.step)?.backupId ?? actions.find((a) => a.backupId)?.backupId;
  if (!backupId) return undefined;
  const mine = actions.filter((a) => a.backupId === backupId);
  const failedAt = mine.find((a) => a.step)?.step ?? 'unknown';
  const published = mine.find((a) => a.published)?.published ?? [];
  const vms = [...new Set(mine.map((a) => a.vm).filter((v): v is string => v !== undefined))].map((id) => ({ id }));
  const ended = mine.find((a) => a.kind === 'ended');
  const error = Object.assign(
    new Error(
      ended
        ? (ended.detail ?? `backup ${backupId} was ended when its host node closed`)
        : `Node-RED stopped while backup ${backupId} was at ${failedAt}; recovery at start finished what it left`,
    ),
    { published: published.map((vm) => ({ vm, path: vm })) },
  );
  const left = actions.filter((a) => !a.ok).map(describeAction);
  return summarize({ backupId, host: { name: host }, stage: failedAt, vms }, error, { failedAt, left, hostName: host });
}

export function describeAction(a: RecoveryAction): string {
  // findings that are not undos: their error says what was found and what to do
  if (a.kind === 'skip-lines' || a.kind === 'refuse' || a.kind === 'foreign-pending' || a.kind === 'leave-staging')
    return `${a.ok ? '' : 'ATTENTION: '}${a.error ?? a.kind}`;
  if (a.kind === 'leftover' || a.kind === 'guardian' || a.kind === 'ended')
    return `${a.ok ? '' : 'ATTENTION: '}${a.detail ?? a.error ?? a.kind}`;
  const what = {
    thaw: 'thawed',
    resume: 'resumed',
    release: 'took the point-in-time view out of',
    untrack: 'settled the change tracking of',
    discard: 'removed the unpublished partial backup of',
    'discard-unjournalled': 'removed the unjournalled partial backup',
    unpublish: 'took back (all or none) the partly published backup of',
  }[a.kind];
  return `${a.ok ? '' : 'FAILED: '}${what} ${a.vm ?? ''}${a.backupId ? ` (backup ${a.backupId})` : ''}${a.by === 'guardian' ? ' by the guardian process when Node-RED died' : ''}${a.journal ? ` (from journal ${a.journal})` : ''}${a.ok ? '' : `: ${a.error}`}`.trim();
}
