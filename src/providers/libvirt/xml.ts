// A small reader for the XML libvirt writes (dumpxml, backup-dumpxml): elements, attributes and
// text, nothing more. libvirt's output is generated and regular; a parser library would be a
// new dependency for the handful of elements the provider reads (disks, channels).

export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

export function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (m, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10));
    return ENTITIES[e] ?? m;
  });
}

export function encodeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Parse one XML document; throws naming the offset on anything it cannot read. */
export function parseXml(xml: string): XmlElement {
  const root: XmlElement = { name: '#document', attrs: {}, children: [], text: '' };
  const stack: XmlElement[] = [root];
  const tag =
    /<(\/?)([A-Za-z_][\w.:-]*)((?:\s+[\w.:-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<!\[CDATA\[([\s\S]*?)\]\]>|<!DOCTYPE[^>]*>/g;
  let last = 0;
  for (let m = tag.exec(xml); m; m = tag.exec(xml)) {
    const top = stack[stack.length - 1];
    const between = xml.slice(last, m.index);
    if (between.includes('<')) throw new Error(`XML: cannot read the markup at offset ${last + between.indexOf('<')}`);
    top.text += decodeEntities(between);
    last = tag.lastIndex;
    if (m[5] !== undefined) {
      top.text += m[5];
      continue;
    }
    if (!m[2]) continue; // comment, declaration, doctype
    if (m[1]) {
      if (top.name !== m[2] || stack.length === 1) throw new Error(`XML: </${m[2]}> at offset ${m.index} closes <${top.name}>`);
      stack.pop();
      continue;
    }
    const el: XmlElement = { name: m[2], attrs: {}, children: [], text: '' };
    for (const a of m[3].matchAll(/([\w.:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) el.attrs[a[1]] = decodeEntities(a[2] ?? a[3] ?? '');
    top.children.push(el);
    if (!m[4]) stack.push(el);
  }
  const rest = xml.slice(last);
  if (rest.includes('<')) throw new Error(`XML: cannot read the markup at offset ${last + rest.indexOf('<')}`);
  if (stack.length !== 1) throw new Error(`XML: <${stack[stack.length - 1].name}> is not closed`);
  const elements = root.children;
  if (elements.length !== 1) throw new Error(`XML: ${elements.length} root elements, expected 1`);
  return elements[0];
}

export function child(el: XmlElement | undefined, name: string): XmlElement | undefined {
  return el?.children.find((c) => c.name === name);
}

export function children(el: XmlElement | undefined, name: string): XmlElement[] {
  return el?.children.filter((c) => c.name === name) ?? [];
}
