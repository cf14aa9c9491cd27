// A new libvirt domain from the one a backup recorded (definition.json `domainXml`, libvirt's
// own `dumpxml --inactive`): a new name and UUID, new MACs, the restored disks as plain files,
// the disks that were not restored left out, and nothing that names a file of the original (its
// console log, its agent socket). String edits on libvirt's generated, regular XML; pure.
import { randomUUID } from 'node:crypto';
import { newMac } from './qemu-argv';

export interface LibvirtPlan {
  name: string;
  /** per target dev (the manifest's disk id): the restored image */
  disks: ReadonlyMap<string, { file: string; format: 'qcow2' | 'raw' }>;
  /** the console log file of the new domain */
  consoleLog: string;
  network: 'keep' | 'none';
}

export interface LibvirtDomain {
  xml: string;
  uuid: string;
  macs: string[];
  /** target devs of disks left out (not restored: pass-through, network) */
  dropped: string[];
}

const esc = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

export function rewriteDomainXml(xml: unknown, plan: LibvirtPlan): LibvirtDomain {
  if (typeof xml !== 'string' || !/<domain[\s>]/.test(xml)) throw new Error('domainXml: the backup holds no libvirt domain XML');
  const uuid = randomUUID();
  const macs: string[] = [];
  const dropped: string[] = [];
  let out = xml;
  if (!/<name>[^<]*<\/name>/.test(out)) throw new Error('domainXml: no <name>');
  out = out.replace(/<name>[^<]*<\/name>/, `<name>${esc(plan.name)}</name>`);
  if (/<uuid>[^<]*<\/uuid>/.test(out)) out = out.replace(/<uuid>[^<]*<\/uuid>/, `<uuid>${uuid}</uuid>`);
  else out = out.replace(/(<name>[^<]*<\/name>)/, `$1\n  <uuid>${uuid}</uuid>`);
  // per-domain identities of the original that a second domain must not share
  out = out.replace(/\s*<genid>[^<]*<\/genid>/g, '');
  out = out.replace(/\s*<seclabel\b[^>]*\/>/g, '').replace(/\s*<seclabel\b[\s\S]*?<\/seclabel>/g, '');
  out = out.replace(/<disk\b[^>]*>[\s\S]*?<\/disk>/g, (block) => {
    const dev = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(block)?.[1] ?? '';
    const device = /<disk\b[^>]*\bdevice=['"]([^'"]+)['"]/.exec(block)?.[1] ?? 'disk';
    const restored = plan.disks.get(dev);
    if (!restored) {
      if (device === 'cdrom' || device === 'floppy' || /<readonly\s*\/>/.test(block)) return block; // shared read-only media
      dropped.push(dev);
      return '';
    }
    let b = block.replace(/<disk\b[^>]*>/, (open) => open.replace(/\btype=['"][^'"]*['"]/, "type='file'"));
    b = b.replace(/\s*<source\b[^>]*\/>/, '').replace(/\s*<source\b[\s\S]*?<\/source>/, '');
    b = b.replace(/\s*<backingStore\b[^>]*\/>/g, '').replace(/\s*<backingStore\b[\s\S]*?<\/backingStore>/g, '');
    if (/<driver\b/.test(b))
      b = b.replace(
        /<driver\b[^>]*?(\/?)>/,
        (d, close: string) => setAttr(d.slice(0, d.length - (close ? 2 : 1)), 'type', restored.format) + (close ? '/>' : '>'),
      );
    else b = b.replace(/(<disk\b[^>]*>)/, `$1\n      <driver name='qemu' type='${restored.format}'/>`);
    return b.replace(/(<driver\b[^>]*>)/, `$1\n      <source file='${esc(restored.file)}'/>`);
  });
  out = out.replace(/<interface\b[^>]*>[\s\S]*?<\/interface>/g, (block) => {
    if (plan.network === 'none') return '';
    const mac = newMac();
    macs.push(mac);
    const b = block.replace(/\s*<target\b[^>]*\/>/, ''); // a tap name of the original
    return /<mac\b[^>]*\/>/.test(b)
      ? b.replace(/<mac\b[^>]*\/>/, `<mac address='${mac}'/>`)
      : b.replace(/(<interface\b[^>]*>)/, `$1\n      <mac address='${mac}'/>`);
  });
  // a channel's socket and a console's log file are the original's: libvirt makes new sockets itself
  out = out.replace(/<channel\b[^>]*>[\s\S]*?<\/channel>/g, (block) => block.replace(/\s*<source\b[^>]*\/>/, ''));
  out = out.replace(/<(serial|console)\b([^>]*)>([\s\S]*?)<\/\1>/g, (block, tag: string, attrs: string, body: string) =>
    /type=['"]file['"]/.test(attrs)
      ? `<${tag}${attrs}>${body.replace(/(<source\b[^>]*\bpath=)(['"])[^'"]*\2/, `$1'${esc(plan.consoleLog)}'`)}</${tag}>`
      : block,
  );
  out = out.replace(/<graphics\b[^>]*?(\/?)>/g, (g, close: string) => {
    const open = g.slice(0, g.length - (close ? 2 : 1)).replace(/\s+\bport=['"][^'"]*['"]/, '');
    return setAttr(open, 'autoport', 'yes') + (close ? '/>' : '>');
  });
  return { xml: out, uuid, macs, dropped };
}

function setAttr(tag: string, name: string, value: string): string {
  const re = new RegExp(`\\b${name}=(['"])[^'"]*\\1`);
  return re.test(tag) ? tag.replace(re, `${name}='${value}'`) : `${tag} ${name}='${value}'`;
}
