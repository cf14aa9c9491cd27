// The fault suite's result table: one row per case (case, expected, observed), printed when the
// run ends and written to docs/faults.md (between markers, so the prose around it stays).
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface Row {
  group: string;
  name: string;
  expected: string;
  observed: string;
  ok: boolean;
  ms: number;
}

const rows: Row[] = [];
const startedAt = Date.now();
/** dist/test/faults/support -> repository root */
const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const DOC = path.join(REPO_ROOT, 'docs', 'faults.md');
const PART = process.env.VMBACKUP_FAULTS_PART || 'all';
const BEGIN = `<!-- fault-table:${PART}:begin -->`;
const END = `<!-- fault-table:${PART}:end -->`;

/**
 * Run one case: `body` returns what was observed (and asserts). The row is kept whether the
 * case passes or not; a failure shows its assertion message as the observation.
 */
export async function faultCase(group: string, name: string, expected: string, body: () => Promise<string>): Promise<void> {
  const t0 = Date.now();
  let observed = '';
  let ok = false;
  try {
    observed = await body();
    ok = true;
  } catch (err) {
    observed = `FAILED: ${(err as Error).message.split('\n')[0]}${observed ? ` (${observed})` : ''}`;
    throw err;
  } finally {
    rows.push({ group, name, expected, observed, ok, ms: Date.now() - t0 });
  }
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\s+/g, ' ').trim();
}

export function markdownTable(all: readonly Row[] = rows): string {
  const lines = ['| # | group | case | expected | observed | result | s |', '| --- | --- | --- | --- | --- | --- | --- |'];
  all.forEach((r, i) => {
    lines.push(
      `| ${i + 1} | ${cell(r.group)} | ${cell(r.name)} | ${cell(r.expected)} | ${cell(r.observed)} | ${r.ok ? 'pass' : '**FAIL**'} | ${(r.ms / 1000).toFixed(1)} |`,
    );
  });
  return lines.join('\n');
}

function plainTable(all: readonly Row[]): string {
  const w = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}~` : s.padEnd(n));
  const out = [`${w('#', 3)} ${w('case', 58)} ${w('result', 6)} observed`];
  all.forEach((r, i) => {
    out.push(`${w(String(i + 1), 3)} ${w(`${r.group}: ${r.name}`, 58)} ${w(r.ok ? 'pass' : 'FAIL', 6)} ${r.observed}`);
    out.push(`${' '.repeat(4)}expected: ${r.expected}`);
  });
  return out.join('\n');
}

export function allRows(): readonly Row[] {
  return rows;
}

// Root hook: registered once, when the first fault test file imports this module.
after(function () {
  if (rows.length === 0) return;
  const passed = rows.filter((r) => r.ok).length;
  const total = ((Date.now() - startedAt) / 1000).toFixed(0);
  const summary = `${rows.length} cases, ${passed} passed, ${rows.length - passed} failed, ${total} s`;
  console.log(`\nFault-injection cases\n${plainTable(rows)}\n${summary}\n`);
  if (process.env.VMBACKUP_FAULTS_NO_DOC === '1') return;
  const table = `${BEGIN}\n_Last run: ${new Date().toISOString()}, ${summary} (part "${PART}")._\n\n${markdownTable(rows)}\n${END}`;
  let doc = '';
  try {
    doc = fs.readFileSync(DOC, 'utf8');
  } catch {
    doc = `# Fault injection\n\n${BEGIN}\n${END}\n`;
  }
  const i = doc.indexOf(BEGIN);
  const j = doc.indexOf(END);
  doc = i >= 0 && j > i ? doc.slice(0, i) + table + doc.slice(j + END.length) : `${doc}\n${table}\n`;
  fs.writeFileSync(DOC, doc);
});
