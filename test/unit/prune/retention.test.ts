// Retention rules, against Proxmox's own cases (proxmox-backup tests/prune.rs: test_prune_simple,
// test_prune_simple2, test_prune_hourly, test_prune_protected; the same code drives its prune
// simulator) and the documented behaviour: local time, ISO weeks, rules in order, a period already
// holding a kept backup skipped, no rule keeps all, bad rules refused naming the field.
import * as assert from 'node:assert/strict';
import { isoWeek, parseRetention, RetentionError, selectRetention, type Retention } from '../../../src/prune/retention';

interface Item {
  id: string;
  time: Date;
  protected?: boolean;
}
const item = (iso: string, prot = false): Item => ({ id: iso, time: new Date(iso), ...(prot ? { protected: true } : {}) });

function removed(list: Item[], rules: Retention): string[] {
  const marks = selectRetention(list, rules);
  return list.filter((i) => !marks.get(i.id)!.keep).map((i) => i.id);
}
function kept(list: Item[], rules: Retention): string[] {
  const marks = selectRetention(list, rules);
  return list.filter((i) => marks.get(i.id)!.keep).map((i) => i.id);
}

describe('retention (Proxmox semantics)', () => {
  let tz: string | undefined;
  before(() => {
    tz = process.env.TZ;
    process.env.TZ = 'UTC'; // Proxmox's cases are written in UTC
  });
  after(() => {
    if (tz === undefined) delete process.env.TZ;
    else process.env.TZ = tz;
  });

  describe('test_prune_simple', () => {
    const list = ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z', '2019-12-04T12:59:15Z'].map((t) => item(t));
    const [d2, d3, d4a] = list.map((i) => i.id);
    const cases: [Retention, string[]][] = [
      [{ keepLast: 4 }, []],
      [{ keepLast: 3 }, [d2]],
      [{ keepLast: 2 }, [d2, d3]],
      [{ keepLast: 1 }, [d2, d3, d4a]],
      [{ keepLast: 2, keepDaily: 2 }, []],
      [{ keepDaily: 3 }, [d4a]],
      [{ keepDaily: 2 }, [d2, d4a]],
      [{ keepWeekly: 5 }, [d2, d3, d4a]],
      [{ keepDaily: 1, keepWeekly: 5 }, [d2, d3, d4a]],
      [{ keepMonthly: 6 }, [d2, d3, d4a]],
      [{ keepYearly: 7 }, [d2, d3, d4a]],
      [{ keepWeekly: 5, keepMonthly: 6, keepYearly: 7 }, [d2, d3, d4a]],
    ];
    for (const [rules, expect] of cases)
      it(`${JSON.stringify(rules)} removes ${expect.length}`, () => assert.deepEqual(removed(list, rules), expect));
  });

  describe('test_prune_simple2', () => {
    const list = [
      '2018-11-15T11:59:15Z',
      '2019-11-15T11:59:15Z',
      '2019-11-21T11:59:15Z',
      '2019-11-22T11:59:15Z',
      '2019-11-29T11:59:15Z',
      '2019-12-01T11:59:15Z',
      '2019-12-02T11:59:15Z',
      '2019-12-03T11:59:15Z',
      '2019-12-04T11:59:15Z',
    ].map((t) => item(t));
    const cases: [Retention, string[]][] = [
      [{ keepDaily: 1 }, ['2019-12-04T11:59:15Z']],
      [{ keepLast: 1, keepDaily: 1 }, ['2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
      [{ keepDaily: 1, keepWeekly: 1 }, ['2019-12-01T11:59:15Z', '2019-12-04T11:59:15Z']],
      // 11-29 is the week's second backup the weekly rule saw: removed then, so monthly keeps 11-22
      [{ keepDaily: 1, keepWeekly: 1, keepMonthly: 1 }, ['2019-11-22T11:59:15Z', '2019-12-01T11:59:15Z', '2019-12-04T11:59:15Z']],
      [{ keepMonthly: 1, keepYearly: 1 }, ['2018-11-15T11:59:15Z', '2019-12-04T11:59:15Z']],
    ];
    for (const [rules, expect] of cases)
      it(`${JSON.stringify(rules)} keeps ${expect.length}`, () => assert.deepEqual(kept(list, rules), expect));
  });

  describe('test_prune_hourly', () => {
    const list = [
      '2019-11-15T09:39:15Z',
      '2019-11-15T10:49:15Z',
      '2019-11-15T10:59:15Z',
      '2019-11-15T11:39:15Z',
      '2019-11-15T11:49:15Z',
      '2019-11-15T11:59:15Z',
    ].map((t) => item(t));
    it('keep-hourly 3 removes the older ones of each hour', () =>
      assert.deepEqual(removed(list, { keepHourly: 3 }), ['2019-11-15T10:49:15Z', '2019-11-15T11:39:15Z', '2019-11-15T11:49:15Z']));
    it('keep-hourly 2 keeps the newest of the two newest hours', () =>
      assert.deepEqual(kept(list, { keepHourly: 2 }), ['2019-11-15T10:59:15Z', '2019-11-15T11:59:15Z']));
  });

  describe('test_prune_protected', () => {
    const list = [
      item('2019-11-15T09:39:15Z', true),
      item('2019-11-15T10:39:15Z'),
      item('2019-11-15T10:49:15Z'),
      item('2019-11-15T10:59:15Z', true),
    ];
    it('keep-last 1: protected ones are kept and count for no rule', () =>
      assert.deepEqual(removed(list, { keepLast: 1 }), ['2019-11-15T10:39:15Z']));
    it('keep-hourly 1: the same', () => assert.deepEqual(removed(list, { keepHourly: 1 }), ['2019-11-15T10:39:15Z']));
  });

  it('no rule set: nothing is removed', () => {
    const list = ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z'].map((t) => item(t));
    assert.deepEqual(removed(list, {}), []);
  });

  it('the input order does not matter (sorted newest first inside)', () => {
    const list = ['2019-12-04T11:59:15Z', '2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z'].map((t) => item(t));
    assert.deepEqual(kept(list, { keepLast: 1 }), ['2019-12-04T11:59:15Z']);
  });

  it('"keep 7 daily, 4 weekly, 6 monthly" over a year of nightly backups keeps 17 and the right ones', () => {
    const list: Item[] = [];
    for (let d = 0; d < 365; d++) list.push(item(new Date(Date.UTC(2026, 0, 1, 1, 30) + d * 86_400_000).toISOString()));
    const keep = kept(list, { keepDaily: 7, keepWeekly: 4, keepMonthly: 6 });
    // daily: Dec 25-31; Dec 28 (Monday) to 31 lie in ISO week 2026-W53
    const days = keep.map((k) => k.slice(0, 10));
    assert.equal(days.length, 17);
    assert.deepEqual(days.slice(-7), ['2026-12-25', '2026-12-26', '2026-12-27', '2026-12-28', '2026-12-29', '2026-12-30', '2026-12-31']);
    // weeks already kept: W52 (Dec 21-27, kept 27) and W53 (Dec 28-31): weekly takes W51, W50, W49, W48's Sundays
    assert.deepEqual(days.slice(-11, -7), ['2026-11-29', '2026-12-06', '2026-12-13', '2026-12-20']);
    // months already kept: December, November (Nov 29): monthly takes Oct 31 ... Jun 30 (6 months)
    assert.deepEqual(days.slice(0, 6), ['2026-05-31', '2026-06-30', '2026-07-31', '2026-08-31', '2026-09-30', '2026-10-31']);
  });

  it("ISO weeks: the years' edges", () => {
    assert.deepEqual(isoWeek(new Date(2026, 11, 31)), [2026, 53]);
    assert.deepEqual(isoWeek(new Date(2027, 0, 3)), [2026, 53]);
    assert.deepEqual(isoWeek(new Date(2027, 0, 4)), [2027, 1]);
    assert.deepEqual(isoWeek(new Date(2024, 11, 30)), [2025, 1]);
    assert.deepEqual(isoWeek(new Date(2021, 0, 3)), [2020, 53]);
  });

  it('periods are in local time: the same backups split by day differently in another zone', () => {
    // 23:30 and 00:30 UTC on two dates: one local day in UTC+2 (Europe/Berlin in summer)
    const list = [item('2026-07-01T23:30:00Z'), item('2026-07-02T00:30:00Z')];
    assert.deepEqual(kept(list, { keepDaily: 2 }).length, 2);
    process.env.TZ = 'Europe/Berlin';
    try {
      // 01:30 and 02:30 on July 2 in Berlin: one day, its newest kept
      assert.deepEqual(kept(list, { keepDaily: 2 }), ['2026-07-02T00:30:00Z']);
      // a DST change: 2026-03-29 has 23 hours in Berlin; backups at local 00:30 and 23:30 are one day
      const dst = [item('2026-03-28T23:30:00Z'), item('2026-03-29T21:30:00Z')];
      assert.equal(kept(dst, { keepDaily: 5 }).length, 1);
    } finally {
      process.env.TZ = 'UTC';
    }
  });

  describe('bad rules are refused naming the field', () => {
    const bad: [Record<string, unknown>, string][] = [
      [{ keepDaily: 0 }, 'keepDaily'],
      [{ keepWeekly: -1 }, 'keepWeekly'],
      [{ keepLast: 1.5 }, 'keepLast'],
      [{ keepMonthly: 'six' }, 'keepMonthly'],
      [{ keepYearly: 10_000_000 }, 'keepYearly'],
      [{ keepHourly: {} }, 'keepHourly'],
    ];
    for (const [config, field] of bad)
      it(`${JSON.stringify(config)}`, () =>
        assert.throws(
          () => parseRetention(config),
          (err: unknown) => err instanceof RetentionError && err.field === field && err.message.startsWith(`${field}:`),
        ));
    it('empty strings and absent fields are "not used"; digits as strings are numbers', () =>
      assert.deepEqual(parseRetention({ keepLast: '', keepDaily: '7', keepWeekly: 4 }), { keepDaily: 7, keepWeekly: 4 }));
  });
});
