// From virsh's output to the backup set's fields. Pure functions, tested on recorded output.
import { isDynamicDevice } from '../../classify/rules';
import type { Disk, EnumeratedVm } from '../../contract/types';
import { diskFrom, type DiskSource } from './disks';
import { child, children, parseXml } from './xml';

/** `virsh list --all --name`: one name a line, a blank line at the end. */
export function parseNames(out: string): string[] {
  return out
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}

/** `virsh domstate --reason`: "running (booted)", "shut off (saved)", "paused (user)". */
export function parseDomState(out: string): { state: string; reason: string } {
  const m = /^\s*([a-z ]+?)\s*(?:\(([^)]*)\))?\s*$/m.exec(out.trim());
  if (!m) throw new Error(`domstate: cannot read "${out.trim().slice(0, 80)}"`);
  return { state: m[1], reason: m[2] ?? '' };
}

/** virDomainState as `virsh domstate` names it */
const STATES = ['no state', 'running', 'idle', 'paused', 'in shutdown', 'shut off', 'crashed', 'pmsuspended'];
/** the reasons of the states whose reason anything reads (shut off: saved), as `virsh domstate --reason` names them */
const REASONS: Record<string, readonly string[]> = {
  running: [
    'unknown',
    'booted',
    'migrated',
    'restored',
    'from snapshot',
    'unpaused',
    'migration canceled',
    'save canceled',
    'event wakeup',
    'crashed',
    'post-copy',
    'post-copy failed',
  ],
  paused: [
    'unknown',
    'user',
    'migrating',
    'saving',
    'dumping',
    'I/O error',
    'watchdog',
    'from snapshot',
    'shutting down',
    'creating snapshot',
    'crashed',
    'starting up',
    'post-copy',
    'post-copy failed',
  ],
  'shut off': ['unknown', 'shutdown', 'destroyed', 'crashed', 'migrated', 'saved', 'failed', 'from snapshot', 'daemon'],
};

export interface DomainStats {
  state: string;
  reason: string;
  /** disk target -> capacity (bytes), as domblkinfo gives it */
  capacity: Map<string, number>;
}

/**
 * `virsh domstats --state --block` (every domain, one call): state and reason (as domstate
 * names them) and each disk's capacity, by domain name.
 */
export function parseDomStats(out: string): Map<string, DomainStats> {
  const all = new Map<string, DomainStats>();
  let cur: DomainStats | undefined;
  const names = new Map<string, string>();
  const capacity = new Map<string, number>();
  const finish = () => {
    if (!cur) return;
    for (const [i, cap] of capacity) {
      const name = names.get(i);
      if (name) cur.capacity.set(name, cap);
    }
    names.clear();
    capacity.clear();
  };
  for (const line of out.split('\n')) {
    const dom = /^Domain: '(.*)'\s*$/.exec(line);
    if (dom) {
      finish();
      cur = { state: '', reason: '', capacity: new Map() };
      all.set(dom[1], cur);
      continue;
    }
    const kv = /^\s+([\w.]+)=(.*)$/.exec(line);
    if (!cur || !kv) continue;
    const [, key, value] = kv;
    if (key === 'state.state') cur.state = STATES[Number(value)] ?? `state ${value}`;
    else if (key === 'state.reason') cur.reason = value;
    const blk = /^block\.(\d+)\.(name|capacity)$/.exec(key);
    if (blk?.[2] === 'name') names.set(blk[1], value);
    else if (blk?.[2] === 'capacity' && Number.isSafeInteger(Number(value))) capacity.set(blk[1], Number(value));
  }
  finish();
  for (const s of all.values()) s.reason = REASONS[s.state]?.[Number(s.reason)] ?? s.reason;
  return all;
}

/**
 * libvirt's state in the words the classification uses: "off" is a guest shut down with its disks
 * left as a shut-down machine leaves them; a saved (managedsave) guest is not off, its file
 * systems are still mounted in the saved memory.
 */
export function mapState(state: string, reason: string): string {
  switch (state) {
    case 'running':
    case 'idle':
    case 'blocked':
      return 'running';
    case 'paused':
      return 'paused';
    case 'shut off':
      return reason === 'saved' ? 'saved' : 'off';
    case 'in shutdown':
      return 'shutting-down';
    case 'crashed':
      return 'crashed';
    case 'pmsuspended':
      return 'suspended';
    default:
      return state.replace(/\s+/g, '-').slice(0, 32) || 'unknown';
  }
}

/** A virsh table (domblklist --details, domblkinfo --all): header, dashes, rows split on 2+ spaces or 1 space. */
export function parseTable(out: string): Record<string, string>[] {
  const lines = out.split('\n').filter((l) => l.trim() !== '');
  const dash = lines.findIndex((l) => /^-{3,}\s*$/.test(l.trim()));
  if (dash < 1) return [];
  const header = lines[dash - 1].trim().split(/\s+/);
  return lines.slice(dash + 1).map((line) => {
    const cells = line.trim().split(/\s+/);
    // the last column (a path) may hold spaces: it takes the rest of the line
    const row: Record<string, string> = {};
    header.forEach((h, i) => {
      row[h] = i === header.length - 1 ? cells.slice(i).join(' ') : (cells[i] ?? '');
    });
    return row;
  });
}

/** `virsh guestinfo`: "key : value" lines. */
export function parseKeyValues(out: string): Record<string, string> {
  const kv: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^\s*([^:]+?)\s*:\s?(.*)$/.exec(line);
    if (m && m[1]) kv[m[1]] = m[2].trim();
  }
  return kv;
}

/** Guest OS and file systems from `virsh guestinfo --os --filesystem`. */
export function guestFrom(kv: Record<string, string>): EnumeratedVm['guest'] {
  const os: NonNullable<EnumeratedVm['guest']['os']> = {};
  if (kv['os.id']) os.id = kv['os.id'].slice(0, 64);
  const name = kv['os.pretty-name'] ?? kv['os.name'];
  if (name) os.name = name.slice(0, 256);
  const version = kv['os.version'] ?? kv['os.version-id'];
  if (version) os.version = version.slice(0, 256);
  if (kv['os.kernel-release']) os.kernel = kv['os.kernel-release'].slice(0, 256);
  const filesystems: EnumeratedVm['guest']['filesystems'] = [];
  const count = Number(kv['fs.count'] ?? 0);
  for (let i = 0; i < count && i < 256; i++) {
    const p = `fs.${i}.`;
    const device = kv[`${p}name`] ?? '';
    const disks: string[] = [];
    for (let j = 0; j < Number(kv[`${p}disk.count`] ?? 0) && j < 64; j++) {
      const d = kv[`${p}disk.${j}.alias`] ?? kv[`${p}disk.${j}.device`] ?? kv[`${p}disk.${j}.serial`];
      if (d) disks.push(d.slice(0, 256));
    }
    filesystems.push({
      mountpoint: (kv[`${p}mountpoint`] ?? '').slice(0, 4096),
      type: (kv[`${p}fstype`] ?? '').slice(0, 64),
      device: device.slice(0, 256),
      disks,
      dynamic: isDynamicDevice(device),
    });
  }
  return { filesystems, ...(Object.keys(os).length ? { os } : {}) };
}

export interface DomainDefinition {
  name: string;
  uuid: string;
  /** a virtio channel named org.qemu.guest_agent.0 is defined */
  agentChannel: boolean;
  disks: Disk[];
  /** per disk id: libvirt's kind of source and how an offline copy reads it (disks.ts) */
  sources: Map<string, DiskSource>;
}

/** A domain's name, UUID, agent channel and disks (with what each is: disks.ts) from its XML. */
export function definitionFrom(xml: string): DomainDefinition {
  const dom = parseXml(xml);
  if (dom.name !== 'domain') throw new Error(`dumpxml: root element is <${dom.name}>, not <domain>`);
  const devices = child(dom, 'devices');
  const parsed = children(devices, 'disk').map(diskFrom);
  const agentChannel = children(devices, 'channel').some((c) => child(c, 'target')?.attrs.name === 'org.qemu.guest_agent.0');
  return {
    name: child(dom, 'name')?.text.trim() ?? '',
    uuid: child(dom, 'uuid')?.text.trim() ?? '',
    agentChannel,
    disks: parsed.map((p) => p.disk),
    sources: new Map(parsed.map((p) => [p.disk.id, p.source])),
  };
}

/** `virsh domjobinfo`: "Job type: None" when no job runs. */
export function parseJobInfo(out: string): { type: string; operation?: string } {
  const kv = parseKeyValues(out);
  return { type: kv['Job type'] ?? 'None', ...(kv.Operation ? { operation: kv.Operation } : {}) };
}

export interface BackupJobDescription {
  mode: string;
  socket?: string;
  disks: { name: string; backup: boolean; exportName?: string; scratch?: string }[];
}

/** `virsh backup-dumpxml`: the running backup job's description. */
export function parseBackupXml(xml: string): BackupJobDescription {
  const root = parseXml(xml);
  if (root.name !== 'domainbackup') throw new Error(`backup-dumpxml: root element is <${root.name}>, not <domainbackup>`);
  const server = child(root, 'server');
  return {
    mode: root.attrs.mode ?? 'push',
    ...(server?.attrs.socket ? { socket: server.attrs.socket } : {}),
    disks: children(child(root, 'disks'), 'disk').map((d) => ({
      name: d.attrs.name ?? '',
      backup: d.attrs.backup !== 'no',
      ...(d.attrs.exportname ? { exportName: d.attrs.exportname } : {}),
      ...(child(d, 'scratch')?.attrs.file ? { scratch: child(d, 'scratch')!.attrs.file } : {}),
    })),
  };
}
