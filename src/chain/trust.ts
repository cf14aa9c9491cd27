// Whether a chain can be stacked on tonight, without reading it: from the top link down to its full,
// each link's manifest and place in the chain (links.ts parentLink, no qemu-img), its identity
// now against the one recorded when it was published (identity.ts: a stat and its header cluster,
// whose backing string and virtual size must be the manifest's), and its last verify (a link the
// last verify found damaged is never stacked on). The cost is per link, not per byte of the chain.
// A link published before identities were recorded makes the answer "unknown": the caller then
// checks the old way (the whole file hashed, qemu-img over the chain).
import * as path from 'node:path';
import { currentRecord, manifestSha } from '../verify/record';
import { identityChange, identityOf, readIdentity } from './identity';
import { isEarlier, MAX_CHAIN_DEPTH, notEarlier, parentLink, type ChainLink, type LinkProblem } from './links';

export type TrustResult = { links: ChainLink[] } | { problem: LinkProblem; links: ChainLink[] } | { unknown: string; links: ChainLink[] };

async function linkProblem(link: ChainLink): Promise<{ problem?: string; unknown?: string; verifyFailed?: string }> {
  const sha = await manifestSha(link.dir);
  const record = await currentRecord(link.dir, sha);
  // a failed verify of a link fails every link above it too: the walk goes on, to name the lowest
  const first = record && !record.intact ? record.problems[0] : undefined;
  const verifyFailed =
    record && !record.intact
      ? `its last verify (${record.verifiedAt}) found backup ${link.backupId} damaged${first ? `: ${path.basename(first.file)}: ${first.problem}` : ''}`
      : undefined;
  const own = await identityProblem(link, sha);
  return verifyFailed ? { ...own, verifyFailed } : own;
}

async function identityProblem(link: ChainLink, sha: string | undefined): Promise<{ problem?: string; unknown?: string }> {
  const identity = await readIdentity(link.dir);
  const then = identity?.manifestSha256 === sha ? identity?.files.find((f) => f.name === link.entry.name) : undefined;
  if (!then) return { unknown: `backup ${link.backupId} has no identity record of its ${link.entry.name}` };
  const now = await identityOf(link.dir, link.entry.name, link.entry.format);
  const change = identityChange(then, now);
  if (change) return { problem: `${link.entry.name} of backup ${link.backupId}: ${change}` };
  if (now.size !== link.entry.bytes) return { problem: `${link.entry.name} is ${now.size} bytes, its manifest says ${link.entry.bytes}` };
  const q = now.qcow2;
  if (!q) return { problem: `${link.entry.name} of backup ${link.backupId} is not a qcow2 image` };
  if (link.entry.virtualSize !== undefined && link.entry.virtualSize > 0 && q.virtualSize !== link.entry.virtualSize)
    return { problem: `${link.entry.name}: virtual size ${q.virtualSize} bytes, its manifest says ${link.entry.virtualSize}` };
  const chain = link.entry.chain;
  if (!chain || chain.mode === 'full') {
    if (q.backing)
      return { problem: `${link.entry.name} of backup ${link.backupId} has a backing file (${q.backing}); a full must stand alone` };
  } else if (q.backing !== chain.backing || q.backingFormat !== 'qcow2') {
    return {
      problem: `${link.entry.name} of backup ${link.backupId}: its backing file is "${q.backing ?? 'none'}" (${q.backingFormat ?? 'no format'}), its manifest says "${chain.backing}" (qcow2)`,
    };
  }
  return {};
}

/** `top`: the candidate parent's link. */
export async function trustChain(top: ChainLink, vmDir: string): Promise<TrustResult> {
  const links: ChainLink[] = [top];
  const seen = new Set<string>([top.backupId]);
  let unknown: string | undefined;
  let failed: LinkProblem | undefined;
  for (let link = top; ;) {
    const p = await linkProblem(link);
    if (p.verifyFailed) failed = { file: link.file, problem: p.verifyFailed, reason: 'parent-invalid' };
    if (p.problem) return { problem: { file: link.file, problem: p.problem, reason: 'parent-invalid' }, links };
    unknown ??= p.unknown;
    if (!link.entry.chain || link.entry.chain.mode === 'full') break;
    const next = await parentLink(link, vmDir);
    if ('problem' in next) return { problem: failed ?? next.problem, links };
    // a parent is always an earlier backup (links.ts walkChain says why); with `seen`, no loop
    if (seen.has(next.link.backupId) || !isEarlier(next.link, link) || links.length > MAX_CHAIN_DEPTH)
      return { problem: notEarlier(link, next.link), links };
    seen.add(next.link.backupId);
    links.push(next.link);
    link = next.link;
  }
  if (failed) return { problem: failed, links };
  return unknown ? { unknown, links } : { links };
}
