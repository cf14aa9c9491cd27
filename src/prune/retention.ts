// Which backups a retention policy keeps: Proxmox's semantics (vzdump's prune-backups and Backup
// Server's prune, pbs-datastore prune.rs), followed exactly. Rules run in the order keep-last,
// -hourly, -daily, -weekly (ISO 8601 weeks, Monday first), -monthly, -yearly over the backups
// sorted newest first. Each rule keeps the newest backup of each period (in local time) until it
// has kept N periods; a period that already holds a backup kept by an earlier rule is skipped
// (the rule looks further back instead); an older backup of a period the same rule already kept
// is marked for removal then and there, so a later rule never keeps it. Periods without backups
// do not count. Protected backups are never removed and count for no rule. With no rule set,
// nothing is removed. (restic ORs its rules; borg, like Proxmox, applies them in order.)

export const RULES = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const;
export type RuleName = (typeof RULES)[number];
export type Retention = Partial<Record<RuleName, number>>;

/** The rule names as Proxmox spells them (keep-last ...), for reports. */
export const RULE_LABEL: Record<RuleName, string> = {
  keepLast: 'keep-last',
  keepHourly: 'keep-hourly',
  keepDaily: 'keep-daily',
  keepWeekly: 'keep-weekly',
  keepMonthly: 'keep-monthly',
  keepYearly: 'keep-yearly',
};

/** more periods than this is a typo (Proxmox allows any positive count; 100 years of hourly is 876,600) */
export const MAX_KEEP = 1_000_000;

export class RetentionError extends Error {
  constructor(
    readonly field: RuleName,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = 'RetentionError';
  }
}

/**
 * A node's or command's settings as rules: each empty/absent (the rule is not used) or a whole
 * number from 1 to MAX_KEEP (a number or a string of digits). 0 is refused: in Proxmox a 0 means
 * "not set" in one place and "remove all" in another; here leaving the field empty says it.
 */
export function parseRetention(config: Partial<Record<RuleName, unknown>>): Retention {
  const out: Retention = {};
  for (const rule of RULES) {
    const v = config[rule];
    if (v === undefined || v === null || (typeof v === 'string' && v.trim() === '')) continue;
    const text = typeof v === 'number' ? String(v) : typeof v === 'string' ? v.trim() : undefined;
    const n = text !== undefined && /^[0-9]{1,7}$/.test(text) ? Number(text) : NaN;
    if (!(n >= 1 && n <= MAX_KEEP))
      throw new RetentionError(
        rule,
        `${JSON.stringify(v)?.slice(0, 40)} must be empty (rule not used) or a whole number from 1 to ${MAX_KEEP}`,
      );
    out[rule] = n;
  }
  return out;
}

/** True when at least one rule is set: without one, nothing is removed. */
export function keepsSomething(r: Retention): boolean {
  return RULES.some((k) => (r[k] ?? 0) > 0);
}

export function describeRetention(r: Retention): string {
  const parts = RULES.filter((k) => r[k]).map((k) => `${RULE_LABEL[k]} ${r[k]}`);
  return parts.length ? parts.join(', ') : 'no rule (keep all)';
}

/** ISO 8601 week of a local calendar date: [week-numbering year, week]. */
export function isoWeek(d: Date): [number, number] {
  // the Thursday of this date's week decides the year; weeks start on Monday
  const day = (d.getDay() + 6) % 7; // Monday 0 ... Sunday 6
  const thursday = new Date(d.getFullYear(), d.getMonth(), d.getDate() - day + 3);
  const year = thursday.getFullYear();
  const jan4 = new Date(year, 0, 4);
  const jan4Day = (jan4.getDay() + 6) % 7;
  const week1Monday = new Date(year, 0, 4 - jan4Day);
  // whole days between local midnights (a DST change makes one day 23 or 25 hours)
  const days = Math.round((thursday.getTime() - week1Monday.getTime()) / 86_400_000);
  return [year, Math.floor(days / 7) + 1];
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** The period a backup falls in, per rule, in local time. keep-last: every backup is its own. */
export function periodOf(rule: RuleName, t: Date, id: string): string {
  switch (rule) {
    case 'keepLast':
      return id;
    case 'keepHourly':
      return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T${pad(t.getHours())}`;
    case 'keepDaily':
      return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}`;
    case 'keepWeekly': {
      const [y, w] = isoWeek(t);
      return `${y}-W${pad(w)}`;
    }
    case 'keepMonthly':
      return `${t.getFullYear()}-${pad(t.getMonth() + 1)}`;
    case 'keepYearly':
      return String(t.getFullYear());
  }
}

export interface RetentionItem {
  id: string;
  time: Date;
  protected?: boolean;
}

export type Mark = { keep: true; why: string; rule?: RuleName; period?: string } | { keep: false; why: string };

/**
 * Marks for every item (by id). Sorted newest first here (by time, then id, as Proxmox does by its
 * backup time); the input order does not matter.
 */
export function selectRetention(items: readonly RetentionItem[], rules: Retention): Map<string, Mark> {
  const list = [...items].sort((a, b) => b.time.getTime() - a.time.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  const marks = new Map<string, Mark>();
  if (!keepsSomething(rules)) {
    for (const it of list) marks.set(it.id, { keep: true, why: it.protected ? 'protected' : 'no retention rule set: everything is kept' });
    return marks;
  }
  for (const rule of RULES) {
    const count = rules[rule];
    if (!count) continue;
    // periods that hold a backup some earlier rule kept: this rule skips them
    const already = new Set<string>();
    for (const it of list) {
      const m = marks.get(it.id);
      if (m?.keep && !it.protected) already.add(periodOf(rule, it.time, it.id));
    }
    const kept = new Set<string>();
    for (const it of list) {
      if (marks.has(it.id)) continue;
      if (it.protected) {
        marks.set(it.id, { keep: true, why: 'protected' });
        continue;
      }
      const period = periodOf(rule, it.time, it.id);
      if (already.has(period)) continue;
      if (!kept.has(period)) {
        if (kept.size >= count) break;
        kept.add(period);
        marks.set(it.id, {
          keep: true,
          why: rule === 'keepLast' ? `${RULE_LABEL[rule]} ${count}` : `${RULE_LABEL[rule]} ${count}: newest of ${period}`,
          rule,
          period,
        });
      } else {
        marks.set(it.id, { keep: false, why: `${RULE_LABEL[rule]}: ${period} already keeps a newer backup` });
      }
    }
  }
  for (const it of list) {
    if (marks.has(it.id)) continue;
    marks.set(it.id, it.protected ? { keep: true, why: 'protected' } : { keep: false, why: 'kept by no rule' });
  }
  return marks;
}
