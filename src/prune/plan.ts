// The prune of one VM, decided before anything is touched: which backups the retention rules keep
// and why, which go, and, chain by chain (one per disk), how every kept point stays restorable once
// the links under it are gone. A kept incremental whose parent goes is merged: everything from it
// down to its nearest kept ancestor (or its full) is committed into the lowest dropped link, which
// then takes the kept point's place (merge.ts). Pure: reads nothing, writes nothing.
import type { Manifest, ManifestFile } from '../contract/types';
import { vmChain as vmChainOf } from '../chain/policy';
import { selectRetention, type Mark, type Retention } from './retention';
import type { ScannedBackup } from './scan';

/** One disk of one kept backup whose chain below it loses links. */
export interface Merge {
  /** the kept backup and its disk file */
  backup: string;
  disk: string;
  file: string;
  /** the dropped links between it and `base`, newest first; the last one receives the commit */
  through: string[];
  /** the kept backup it will stack on, or undefined: it becomes a full */
  base?: string;
  /** the file name of the disk in the receiving link and in the base */
  intoFile: string;
  baseFile?: string;
}

export interface PlannedBackup {
  id: string;
  time: string;
  keep: boolean;
  why: string;
  protected: boolean;
}

export interface PrunePlan {
  backups: PlannedBackup[];
  keep: string[];
  remove: string[];
  merges: Merge[];
}

export class PrunePlanError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'PrunePlanError';
  }
}

const diskFiles = (m: Manifest): ManifestFile[] => m.files.filter((f) => f.kind === 'disk' && f.disk !== undefined);

/**
 * `backups`: every readable published backup of the VM. `unreadable`: ids of folders that could not
 * be read (kept whatever the rules say; a merge that would need one is refused).
 */
export function planPrune(backups: readonly ScannedBackup[], rules: Retention, unreadable: ReadonlySet<string> = new Set()): PrunePlan {
  const marks = selectRetention(
    backups.map((b) => ({ id: b.id, time: b.time, protected: b.protected })),
    rules,
  );
  const byId = new Map(backups.map((b) => [b.id, b]));
  // a protected backup is never rewritten either: its whole chain stays as it is
  for (const p of backups) {
    if (!p.protected) continue;
    for (const f of diskFiles(p.manifest)) {
      let link: ManifestFile | undefined = f;
      for (let hops = 0; link?.chain?.mode === 'incremental' && hops < 100_000; hops++) {
        const parent = byId.get(link.chain.parent!);
        if (!parent) break;
        if (marks.get(parent.id)?.keep === false) marks.set(parent.id, { keep: true, why: `needed by protected backup ${p.id}` });
        link = diskFiles(parent.manifest).find((x) => x.disk === f.disk);
      }
    }
  }
  const keeps = (id: string) => marks.get(id)?.keep === true;
  const sorted = [...backups].sort((a, b) => a.time.getTime() - b.time.getTime() || (a.id < b.id ? -1 : 1));

  const merges: Merge[] = [];
  /** dropped link -> the merge that consumes it: a link two merges would write into is a branch */
  const consumed = new Map<string, string>();
  for (const k of sorted) {
    if (!keeps(k.id)) continue;
    for (const f of diskFiles(k.manifest)) {
      if (f.chain?.mode !== 'incremental') continue;
      const through: string[] = [];
      let link: ManifestFile = f;
      let base: string | undefined;
      let baseFile: string | undefined;
      for (let hops = 0; ; hops++) {
        const parentId = link.chain!.parent!;
        if (unreadable.has(parentId) || !byId.has(parentId)) {
          // a kept point whose own parent is unreadable or missing is left as it is (verify names it)
          if (through.length === 0) break;
          throw new PrunePlanError(
            `backup ${k.id} disk ${f.disk}: its chain needs ${parentId}, which ${unreadable.has(parentId) ? 'cannot be read' : 'is missing'}; nothing is pruned until it is repaired (verify names the damage)`,
          );
        }
        const parent = byId.get(parentId)!;
        const pf = diskFiles(parent.manifest).find((x) => x.disk === f.disk);
        if (!pf) throw new PrunePlanError(`backup ${k.id} disk ${f.disk}: its parent ${parentId} lists no such disk`);
        if (keeps(parentId)) {
          if (through.length) {
            base = parentId;
            baseFile = pf.name;
          }
          break;
        }
        through.push(parentId);
        if (pf.chain?.mode !== 'incremental') break; // a dropped full: the kept point becomes a full
        if (hops > 100_000) throw new PrunePlanError(`backup ${k.id} disk ${f.disk}: its chain does not end`);
        link = pf;
      }
      if (through.length === 0) continue;
      for (const d of through) {
        const key = `${d}/${f.disk}`;
        const other = consumed.get(key);
        if (other)
          throw new PrunePlanError(
            `backups ${other} and ${k.id} both stack (disk ${f.disk}) on ${d}, which goes: a branching chain is not pruned (keep ${d}, or mark it protected)`,
          );
        consumed.set(key, k.id);
      }
      const into = byId.get(through[through.length - 1])!;
      merges.push({
        backup: k.id,
        disk: f.disk!,
        file: f.name,
        through,
        intoFile: diskFiles(into.manifest).find((x) => x.disk === f.disk)!.name,
        ...(base ? { base, baseFile } : {}),
      });
    }
  }
  const planned: PlannedBackup[] = [...sorted].reverse().map((b) => {
    const m = marks.get(b.id) as Mark;
    return { id: b.id, time: b.time.toISOString(), keep: m.keep, why: m.why, protected: b.protected };
  });
  return {
    backups: planned,
    keep: planned.filter((b) => b.keep).map((b) => b.id),
    remove: planned.filter((b) => !b.keep).map((b) => b.id),
    merges,
  };
}

/**
 * The manifests of the kept backups once the merges are done: a merged disk gets its new file's
 * size and sha256 and its new place in the chain (a full with reason `merged`, or an incremental on
 * its new parent), every kept disk above it its new depth, and the manifest a `merges` entry
 * saying what went into it. Only manifests that change are returned.
 */
export function manifestsAfter(
  backups: readonly ScannedBackup[],
  plan: PrunePlan,
  merged: ReadonlyMap<string, { bytes: number; sha256: string }>,
  at: string,
): Map<string, Manifest> {
  const keep = new Set(plan.keep);
  const mergeOf = new Map(plan.merges.map((m) => [`${m.backup}/${m.disk}`, m]));
  const depth = new Map<string, number>();
  const out = new Map<string, Manifest>();
  const sorted = [...backups].filter((b) => keep.has(b.id)).sort((a, b) => a.time.getTime() - b.time.getTime() || (a.id < b.id ? -1 : 1));
  for (const b of sorted) {
    let changed = false;
    const mergedHere: string[] = [];
    const files = b.manifest.files.map((f): ManifestFile => {
      if (f.kind !== 'disk' || f.disk === undefined || !f.chain) return f;
      const key = `${b.id}/${f.disk}`;
      const m = mergeOf.get(key);
      let chain = f.chain;
      let file = f;
      if (m) {
        const result = merged.get(key);
        if (!result) throw new PrunePlanError(`merge of ${key} has no result`);
        mergedHere.push(...m.through.filter((t) => !mergedHere.includes(t)));
        const detail = `${chain.detail}; ${m.through.join(', ')} merged into it by a prune at ${at}`.slice(-1024);
        chain = m.base
          ? { ...chain, detail, parent: m.base, backing: `../${m.base}/${m.baseFile}` }
          : (() => {
              const { parent: _p, backing: _b, bytesChanged: _c, ...rest } = chain;
              return { ...rest, mode: 'full' as const, reason: 'merged' as const, detail, depth: 0 };
            })();
        file = { ...f, bytes: result.bytes, sha256: result.sha256 };
      }
      const d = chain.mode === 'incremental' ? (depth.get(`${chain.parent}/${f.disk}`) ?? chain.depth - 1) + 1 : 0;
      depth.set(key, d);
      if (!m && d === f.chain.depth) return f;
      changed = true;
      return { ...file, chain: { ...chain, depth: d } as ManifestFile['chain'] };
    });
    if (!changed) continue;
    const { chain: _old, ...rest } = b.manifest;
    const vm = vmChainOf(files);
    const manifest: Manifest = {
      ...rest,
      files,
      ...(files.some((f) => f.chain) ? { chain: vm } : {}),
      totalBytes: files.reduce((n, f) => n + f.bytes, 0),
      // also when only its depth changed (the merge was further down): a child planned before the
      // prune carries the old depth, and this says why that is right (chain/links.ts parentLink)
      merges: [...(b.manifest.merges ?? []), { at, backups: mergedHere }],
    };
    out.set(b.id, manifest);
  }
  return out;
}
