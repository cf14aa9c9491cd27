// Recovery at start: replay the journal and finish every side effect a crash left in place,
// then remove unpublished partial backups. Reports what it did.
//
// It trusts nothing it reads: every journal line is checked (bad ones are skipped and reported),
// it acts only on sets its own host node started (found by the node's id, which survives a
// rename of the host, in its own journal and in any older journal of that node), only on paths
// it computes itself under its own repository folder, and never on another host's or another
// Node-RED's live work in a shared repository.
import * as fsSync from 'node:fs';
import { Journal, type JournalEntry, type SkippedLine } from '../journal/journal';
import { adoptedBy, isStagingShaped, pendingUndos, type PendingUndo } from '../ledger/pending';
import { undo as undoEffect } from '../ledger/undo';
import { takeBackPartialPublish } from '../ledger/unpublish';
import type { HostProvider } from '../providers/provider';
import { removeStaging, type ArtifactRepository } from '../repository/repository';
import { ownerGone, readOwner } from '../repository/staging-owner';
import * as path from 'node:path';

export interface RecoveryAction {
  kind:
    | PendingUndo['kind']
    | 'discard-unjournalled'
    | 'unpublish'
    /** something an earlier crash left that the provider found and removed at start (Hyper-V checkpoints) */
    | 'leftover'
    /** journal lines that are not journal entries: skipped, never acted on */
    | 'skip-lines'
    /** a journalled path that is not the one this host computes: not touched */
    | 'refuse'
    /** pending work in a journal that no host node here owns: reported, not touched */
    | 'foreign-pending'
    /** a staging directory no journal names whose writer may still be at work: left in place */
    | 'leave-staging'
    /** a set whose guardian process took over its undos at its ending: what it did, or that it still runs */
    | 'guardian'
    /** a set its host node ended on closing (Node-RED stopped): undone then, reported now */
    | 'ended';
  backupId?: string;
  vm?: string;
  ok: boolean;
  error?: string;
  /** what was found and done, in words (leftover) */
  detail?: string;
  /** "guardian": done by the guardian process right after Node-RED died, reported now */
  by?: 'guardian';
  at?: string;
  /** the journal file the action comes from, when it is not this host's own */
  journal?: string;
  /** a path the action concerns (staging directories) */
  path?: string;
  /** the stage the set was in when it was cut (its last "step" line), for the report */
  step?: string;
  /** the VMs whose backup of the set stays published (every VM of the set was renamed before the cut) */
  published?: string[];
}

export interface RecoverOptions {
  /** the host's name now (its repository folder) */
  hostName?: string;
  /** the host config node's id: sets stamped with it are this node's, whatever its name was */
  owner?: string;
  /** ids of the other host nodes running in this process: their sets are theirs to recover */
  liveOwners?: ReadonlySet<string>;
  /**
   * Recover the sets of this journal file stamped by no node, or by one that no longer runs (a
   * host node deleted and made again under the same name). Default true; false for all but one
   * of the host nodes sharing a name, so that no set is recovered twice at once.
   */
  adoptOrphans?: boolean;
  /** how long to wait for a guardian process still at work on a set of this node (a redeploy's old set) */
  guardianWaitMs?: number;
}

/** A redeploy's old set may still be in its guardian's hands: wait this long for it by default. */
export const GUARDIAN_WAIT_MS = 20_000;

const JOURNAL_NAME = /^journal-([A-Za-z0-9][A-Za-z0-9._-]{0,63})\.jsonl$/;

/** The journal of a host: one file per host name in the journal directory. */
export function journalPath(journalDir: string, hostName: string): string {
  return path.join(journalDir, `journal-${hostName}.jsonl`);
}

interface SetInfo {
  backupId: string;
  entries: JournalEntry[];
  owner?: string;
  host?: string;
}

function setsOf(entries: readonly JournalEntry[]): Map<string, SetInfo> {
  const sets = new Map<string, SetInfo>();
  for (const e of entries) {
    let s = sets.get(e.backupId);
    if (!s) sets.set(e.backupId, (s = { backupId: e.backupId, entries: [] }));
    s.entries.push(e);
    // the set's intents are written by its host node (stamped); undo lines by a guardian may not be
    s.owner ??= e.owner;
    s.host ??= e.host;
  }
  return sets;
}

function describeSkipped(file: string, skipped: readonly SkippedLine[]): RecoveryAction {
  const list = skipped
    .slice(0, 5)
    .map((s) => `line ${s.line}: ${s.why}`)
    .join('; ');
  return {
    kind: 'skip-lines',
    ok: false,
    journal: file,
    error: `${skipped.length} journal line(s) skipped, not journal entries (${list}${skipped.length > 5 ? '; ...' : ''})`,
  };
}

export async function recover(
  journal: Journal,
  provider: HostProvider,
  repo: ArtifactRepository,
  commandMs: number,
  o: RecoverOptions = {},
): Promise<RecoveryAction[]> {
  const hostName = o.hostName ?? journal.stamp.host;
  const owner = o.owner ?? journal.stamp.owner;
  const actions: RecoveryAction[] = [];
  // sets whose guardian took them over at their ending and still runs are its own until it is done
  const adopted = await waitForGuardians(journal, o.guardianWaitMs ?? GUARDIAN_WAIT_MS);
  const own = journal.readChecked();
  if (own.skipped.length) actions.push(describeSkipped(journal.file, own.skipped));

  // The other journals of the directory: a set this node wrote under an older host name is in one.
  const others: { file: string; entries: JournalEntry[] }[] = [];
  for (const file of otherJournals(journal.file)) {
    let read;
    try {
      read = new Journal(file).readChecked();
    } catch (err) {
      actions.push({ kind: 'foreign-pending', ok: false, journal: file, error: `cannot be read: ${(err as Error).message}` });
      continue;
    }
    others.push({ file, entries: read.entries });
    if (read.skipped.length && read.entries.some((e) => owner !== undefined && e.owner === owner))
      actions.push(describeSkipped(file, read.skipped));
  }

  const liveOwner = (id: string | undefined) => id !== undefined && id !== owner && (o.liveOwners?.has(id) ?? false);
  // Which sets are this node's: stamped with its id, or (in its own file) unstamped or stamped by a
  // host node that no longer runs here (deleted and made again under the same name).
  const mine: { file: string; set: SetInfo; host: string | undefined }[] = [];
  const journalled = new Set<string>(); // every staging directory some journal here names
  for (const set of setsOf(own.entries).values()) {
    for (const e of set.entries) if (e.op === 'staging' && e.data?.dir) journalled.add(e.data.dir);
    if (liveOwner(set.owner)) continue;
    if (set.owner !== owner && o.adoptOrphans === false) continue;
    mine.push({ file: journal.file, set, host: set.host ?? hostName });
  }
  for (const other of others) {
    const nameInFile = JOURNAL_NAME.exec(path.basename(other.file))?.[1];
    for (const set of setsOf(other.entries).values()) {
      if (owner !== undefined && set.owner === owner) {
        mine.push({ file: other.file, set, host: set.host ?? nameInFile });
        continue;
      }
      for (const e of set.entries) if (e.op === 'staging' && e.data?.dir) journalled.add(e.data.dir);
      if (liveOwner(set.owner)) continue;
      const pending = pendingUndos(set.entries);
      if (pending.length === 0) continue;
      // not ours, not a host node running here: someone must hear of it, nothing is touched
      actions.push({
        kind: 'foreign-pending',
        ok: false,
        backupId: set.backupId,
        journal: other.file,
        error:
          `journal ${other.file} has pending work of host "${set.host ?? nameInFile ?? '?'}" that no host node here owns ` +
          `(${pending.map((u) => `${u.kind} ${u.vm}`).join(', ')}): if that host was renamed or deleted, undo it by hand or set it back`,
      });
    }
  }
  for (const m of mine) for (const e of m.set.entries) if (e.op === 'staging' && e.data?.dir) journalled.add(e.data.dir);

  const resolved = new Map<string, Set<string>>(); // file -> backupIds whose lines can go
  const resolve = (file: string, backupId: string) => {
    if (!resolved.has(file)) resolved.set(file, new Set());
    resolved.get(file)!.add(backupId);
  };
  // what the guardian undid after Node-RED died: already done, but the user must hear of it
  for (const { file, set } of mine) {
    for (const e of set.entries) {
      if (
        e.data?.by === 'guardian' &&
        !e.data?.nothingToDo &&
        e.phase === 'done' &&
        e.vm &&
        (e.op === 'thaw' || e.op === 'resume' || e.op === 'release' || e.op === 'untrack' || e.op === 'discard')
      ) {
        actions.push({
          kind: e.op,
          backupId: e.backupId,
          vm: e.vm,
          ok: true,
          by: 'guardian',
          at: e.t,
          ...stepOf(set.entries),
          ...(file !== journal.file ? { journal: file } : {}),
        });
      }
    }
  }
  for (const { file, set, host } of mine) {
    const from = file !== journal.file ? { journal: file } : {};
    const guardian = file === journal.file ? adopted.get(set.backupId) : undefined;
    if (guardian) {
      actions.push({
        kind: 'guardian',
        backupId: set.backupId,
        ok: guardian.finished,
        detail: guardian.finished
          ? `the set's guardian process (pid ${guardian.pid}) finished the undos it took over when the set ended`
          : `the set's guardian process (pid ${guardian.pid}) is still undoing what the set left (${pendingUndos(set.entries)
              .map((u) => `${u.kind} ${u.vm}`)
              .join(', ')}); left to it`,
      });
      if (!guardian.finished) continue;
    }
    const stagingOf = (vm: string) => (host !== undefined ? repo.stagingDir(host, vm, set.backupId) : undefined);
    const atStep = stepOf(set.entries);
    let failed = false;
    for (const e of set.entries) {
      // a staging line naming what cannot be this set's staging directory is never acted on: say so
      if (e.op === 'staging' && e.phase === 'intent' && e.vm && e.data?.dir && !isStagingShaped(e.data.dir, e.vm, set.backupId)) {
        actions.push({
          kind: 'refuse',
          backupId: set.backupId,
          vm: e.vm,
          ok: false,
          path: e.data.dir,
          error: `journalled staging directory ${e.data.dir} is not a staging directory of backup ${set.backupId}; not touched`,
          ...from,
        });
      }
    }
    // A crash between two VMs' publish renames leaves a set partly published: take it back (all or
    // none). A set whose every VM was renamed is complete and verified: it stays.
    const takenBack = await takeBackPartialPublish(set.entries, stagingOf, (p) => repo.resolvesInside(p));
    for (const action of takenBack) {
      actions.push({ ...action, ...atStep, ...from });
      failed ||= !action.ok;
    }
    const published = publishedOf(set.entries, takenBack.length > 0);
    const closed = set.entries.find((e) => e.op === 'end' && e.data?.unreported);
    if (closed) {
      actions.push({
        kind: 'ended',
        backupId: set.backupId,
        ok: true,
        ...(closed.data?.step ? { step: closed.data.step } : {}),
        at: closed.t,
        detail: `backup ${set.backupId} was ended at ${closed.data?.step ?? '?'} when its host node closed (${closed.data?.error ?? '?'}); everything it had done was undone then`,
        ...published,
        ...from,
      });
    }
    for (const undo of pendingUndos(set.entries)) {
      const action: RecoveryAction = { kind: undo.kind, backupId: undo.backupId, vm: undo.vm, ok: true, ...atStep, ...published, ...from };
      if (undo.kind === 'discard') {
        // only the directory this host computes for the set, never the journalled one as given
        const refusal = await checkStaging(repo, undo.dir, stagingOf(undo.vm));
        if (refusal) {
          actions.push({ kind: 'refuse', backupId: undo.backupId, vm: undo.vm, ok: false, path: undo.dir, error: refusal, ...from });
          continue;
        }
      }
      try {
        if ((await undoEffect(provider, undo, { commandMs })) === 'nothing-to-do') continue;
      } catch (err) {
        action.ok = false;
        action.error = (err as Error).message;
        // keep the set's journal lines that still need undoing, for the next start
        failed = true;
      }
      actions.push(action);
    }
    if (!failed) resolve(file, set.backupId);
  }

  // Staging directories no journal names (journal lost, or another Node-RED's): only under this
  // host's own folder, and only when their owner record proves the writer is gone.
  if (hostName !== undefined) {
    for (const dir of await repo.listStaging(hostName)) {
      if (journalled.has(dir)) continue;
      if (!(await repo.resolvesInside(dir))) {
        actions.push({ kind: 'refuse', ok: false, path: dir, error: `${dir} leads out of the repository (a symbolic link): not touched` });
        continue;
      }
      const gone = ownerGone(await readOwner(dir));
      if (!gone.gone) {
        // another Node-RED's live backup must not hear of us; a leftover we cannot prove must be told
        if (!/still running|this very process/.test(gone.why)) {
          actions.push({
            kind: 'leave-staging',
            ok: false,
            path: dir,
            error: `${dir} left in place: ${gone.why}; remove it by hand when no backup of host ${hostName} runs`,
          });
        }
        continue;
      }
      // a repository that cannot be written now (read-only, gone) must not stop the thaws above
      const error = await removeStaging(dir).then(
        () => undefined,
        (err: Error) => err.message,
      );
      actions.push({ kind: 'discard-unjournalled', ok: error === undefined, vm: dir, path: dir, ...(error ? { error } : {}) });
    }
  }

  // Drop the lines of every set finished now; the rest (failed undos, other nodes' sets) stays.
  const ownDone = resolved.get(journal.file) ?? new Set<string>();
  // Rewritten only when something goes: another host node's live lines stay exactly where they
  // are. Either way a journal that cannot be written stops here (JournalError): no backup may
  // start without one; the undos above are done already.
  if (ownDone.size > 0 || own.skipped.length > 0) journal.dropSets((e) => ownDone.has(e.backupId));
  else journal.ensureWritable();
  for (const [file, done] of resolved) {
    if (file === journal.file) continue;
    const other = new Journal(file);
    try {
      other.dropSets((e) => done.has(e.backupId));
      // an old journal of this node with nothing left in it goes (a host node using that name now reopens its own)
      if (fsSync.statSync(file).size === 0) fsSync.rmSync(file, { force: true });
    } catch (err) {
      actions.push({
        kind: 'foreign-pending',
        ok: false,
        journal: file,
        error: `recovered, but its lines could not be removed: ${(err as Error).message}`,
      });
    } finally {
      other.close();
    }
  }
  return actions;
}

/** The other journal files beside `own` (journal-<name>.jsonl), by name; none when the directory is unreadable. */
function otherJournals(own: string): string[] {
  let names: string[];
  try {
    names = fsSync.readdirSync(path.dirname(own));
  } catch {
    return [];
  }
  return names
    .filter((n) => JOURNAL_NAME.test(n) && n !== path.basename(own))
    .sort()
    .map((n) => path.join(path.dirname(own), n));
}

/**
 * Why a journalled staging directory must not be removed (undefined: it may). It must be exactly
 * the one the repository computes for that host, VM and set, and still lie inside the repository
 * once links are resolved.
 */
async function checkStaging(repo: ArtifactRepository, journalled: string, computed: string | undefined): Promise<string | undefined> {
  if (computed === undefined)
    return `journalled staging directory ${journalled}: the set's host is not known, so its directory cannot be computed; not touched`;
  if (path.resolve(journalled) !== computed)
    return `journalled staging directory ${journalled} is not this set's (${computed}); not touched`;
  if (!(await repo.resolvesInside(computed))) return `${computed} leads out of the repository (a symbolic link): not touched`;
  return undefined;
}

/** The stage a set was in when it was cut: its last "step" line. */
function stepOf(entries: readonly JournalEntry[]): { step?: string } {
  const step = entries.filter((e) => e.op === 'step').pop()?.data?.step;
  return step ? { step } : {};
}

/** The VMs whose publish is done and not taken back (all of them, or the set is taken back whole). */
function publishedOf(entries: readonly JournalEntry[], takenBack: boolean): { published?: string[] } {
  if (takenBack) return {};
  const vms = new Set<string>();
  for (const e of entries) {
    if (e.op === 'publish' && e.phase === 'done' && e.vm) vms.add(e.vm);
    if (e.op === 'unpublish' && e.phase === 'done' && e.vm) vms.delete(e.vm);
  }
  return vms.size ? { published: [...vms] } : {};
}

/**
 * The sets of this journal that a guardian process adopted and that it still works on: waited for
 * up to `withinMs` (polling the journal for their "end"). Returns each such set's guardian and
 * whether it finished.
 */
async function waitForGuardians(journal: Journal, withinMs: number): Promise<Map<string, { pid: number; finished: boolean }>> {
  const out = new Map<string, { pid: number; finished: boolean }>();
  let entries: JournalEntry[];
  try {
    entries = journal.read();
  } catch {
    return out; // reported by the reading below
  }
  for (const id of new Set(entries.filter((e) => e.op === 'adopt').map((e) => e.backupId))) {
    const pid = adoptedBy(entries, id, (p) => guardianRuns(p, id));
    if (pid !== undefined) out.set(id, { pid, finished: false });
  }
  const deadline = Date.now() + withinMs;
  while (out.size > 0 && [...out.values()].some((g) => !g.finished) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    const now = journal.read();
    for (const [id, g] of out) if (!g.finished && adoptedBy(now, id, (p) => guardianRuns(p, id)) === undefined) g.finished = true;
  }
  return out;
}

/** A guardian process of set `backupId` runs as `pid` (its argument vector names the set). */
function guardianRuns(pid: number, backupId: string): boolean {
  try {
    const argv = fsSync.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.endsWith(`${path.sep}guardian.js`)) && argv.some((a) => a.includes(`"backupId":"${backupId}"`));
  } catch {
    return false;
  }
}
