// powershell.exe writes its own errors (execution policy, a script that does not parse, a missing
// module: everything before our script's JSON line) in the console's OEM code page, not UTF-8.
// Decoded here: UTF-8 when the bytes are valid UTF-8 (pwsh, or ASCII text), else the host's OEM
// code page (enumerate.ps1 reports it: TextInfo.OEMCodePage), else Latin-1 so nothing is lost.

// The upper halves of code pages 437 (US) and 850 (Western Europe), the OEM code pages of most
// English and Western European Windows installations; WHATWG TextDecoder has neither.
const CP437 =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';
const CP850 =
  'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u00ad±‗¾¶§÷¸°¨·¹³²■\u00a0';
const TABLES: Record<number, string> = { 437: CP437, 850: CP850 };

/** OEM code pages WHATWG TextDecoder knows, by their labels. */
const LABELS: Record<number, string> = {
  866: 'ibm866',
  874: 'windows-874',
  932: 'shift_jis',
  936: 'gbk',
  949: 'euc-kr',
  950: 'big5',
  65001: 'utf-8',
};

export function decodeOem(bytes: Buffer, codePage: number): string | undefined {
  const table = TABLES[codePage];
  if (table) return Array.from(bytes, (b) => (b < 0x80 ? String.fromCharCode(b) : table[b - 0x80]!)).join('');
  const label = LABELS[codePage];
  if (!label) return undefined;
  try {
    return new TextDecoder(label).decode(bytes);
  } catch {
    return undefined;
  }
}

/** stderr bytes as text: UTF-8 if they are valid UTF-8, else the OEM code page, else Latin-1. */
export function decodeStderr(bytes: Buffer, oemCodePage?: number): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const text = oemCodePage !== undefined ? decodeOem(bytes, oemCodePage) : undefined;
    return text ?? bytes.toString('latin1');
  }
}
