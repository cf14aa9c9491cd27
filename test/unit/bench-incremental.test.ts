// The verdicts of issue 13 item 9 (bench/report-incremental.ts) from a results document: the
// incremental's target is 1 s + 1.5 x (changed fraction x the full's wall time), the bare QMP
// script's ratio is at most 1.3, the full's floor at least 0.9, the freeze window within 15 %.
import { strict as assert } from 'node:assert';
import { incrementalSummary, incrementalVerdicts } from '../../bench/report-incremental';

const backup = (kind: 'full' | 'incremental', wallMs: number, copyMs: number, fraction?: number) => ({
  kind,
  ...(fraction !== undefined ? { fraction } : {}),
  reason: kind === 'full' ? 'first-backup' : 'incremental',
  depth: kind === 'full' ? 0 : 1,
  wallMs,
  copyMs,
  stageMs: { copy: copyMs },
  bytesRead: 1,
  fileBytes: 1,
  fileAllocated: 1,
  qemuReadBytes: 1,
  phases: {},
});
const bare = (fraction: number, ms: number) => ({
  fraction,
  ms,
  parts: { createMs: 1, addMs: 1, jobMs: ms - 3, delMs: 1 },
  viaNbd: { ms, createMs: 1, serverMs: 1, addMs: 1, jobMs: 1, closeMs: 1 },
  sha256Ms: 1,
  bytesRead: 1,
  fileBytes: 1,
  fileAllocated: 1,
  qemuReadBytes: 1,
  first: 'product' as const,
});

function results(incWalls: [number, number], bareMs: [number, number], fullCopy = 10_000) {
  const round = {
    full: backup('full', 20_000, fullCopy),
    fullAlone: { convertMs: 6000, sha256Ms: 3000, bytes: 1 },
    incrementals: [backup('incremental', incWalls[0], 500, 0.01), backup('incremental', incWalls[1], 900, 0.1)],
    bare: [bare(0.01, bareMs[0]), bare(0.1, bareMs[1])],
    writes: [],
  };
  return {
    sections: {
      incremental: { virtualMiB: 4096, dataBytes: 2 ** 30, fractions: [0.01, 0.1], rounds: [round, round, round] },
      incrementalFreeze: {
        vm: 'v',
        dataDiskMiB: 4096,
        fillMiB: 1024,
        samples: [
          { kind: 'full', wireMs: 200 },
          { kind: 'incremental', wireMs: 240 },
        ],
        full: { n: 1, median: 200, p95: 200, min: 200, max: 200, mean: 200 },
        incremental: { n: 1, median: 240, p95: 240, min: 240, max: 240, mean: 240 },
      },
    },
  };
}

describe('bench: incremental verdicts (issue 13 item 9)', () => {
  it('targets 1 s + 1.5 x fraction x the full, per fraction', () => {
    // full 20 s: 1 % -> 1300 ms, 10 % -> 4000 ms
    const s = incrementalSummary(results([1299, 4001], [1000, 3077]).sections.incremental as any);
    assert.equal(Math.round(s.perFraction[0].target), 1300);
    assert.equal(Math.round(s.perFraction[1].target), 4000);
    const v = incrementalVerdicts(results([1299, 4001], [1000, 3077]));
    assert.equal(v.find((x) => x.id === '13-inc-1.0')?.met, true);
    assert.equal(v.find((x) => x.id === '13-inc-10.0')?.met, false);
  });

  it('the bare script ratio is met at 1.3 and missed above it', () => {
    const v = incrementalVerdicts(results([1300, 4000], [1000, 3000]));
    assert.equal(v.find((x) => x.id === '13-bare-1.0')?.met, true, '1300 / 1000 = 1.3');
    assert.equal(v.find((x) => x.id === '13-bare-10.0')?.met, false, '4000 / 3000 = 1.33');
  });

  it('the full floor is (convert + sha256) / copy artifacts, at least 0.9', () => {
    assert.equal(
      incrementalVerdicts(results([1, 1], [1, 1], 10_000)).find((x) => x.id === '13-full-floor')?.met,
      true,
      '9000 / 10000 = 0.9',
    );
    assert.equal(incrementalVerdicts(results([1, 1], [1, 1], 10_001)).find((x) => x.id === '13-full-floor')?.met, false);
  });

  it("the freeze window may not grow more than 15 % over the full's", () => {
    const v = incrementalVerdicts(results([1, 1], [1, 1]));
    assert.equal(v.find((x) => x.id === '13-freeze')?.met, false, '240 vs 200 ms is +20 %');
  });

  it('no section, no verdict', () => {
    assert.deepEqual(incrementalVerdicts({ sections: {} }), []);
  });
});
