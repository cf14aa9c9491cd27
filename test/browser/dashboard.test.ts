// The example "Dashboard of the backups" in a real browser: Node-RED with this package and
// @flowfuse/node-red-dashboard (a devDependency only: the package does not depend on it), the
// example deployed over a repository of real qcow2 backups of two VMs (one backed up last night,
// one not for three days, one backup of it found damaged by verify), headless Chromium on the
// page: a table per VM with the right rows, the size and duration charts, the notification for
// the VM without a recent backup. Writes docs/dashboard.png.
//
// Env: CHROMIUM (default /usr/bin/chromium); VMBACKUP_DASHBOARD_SCREENSHOT (default
// docs/dashboard.png; "0" for none).
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { CHROMIUM_ARGS, NodeRed, REPO_ROOT, readExample, removeDir, sleep } from '../e2e/harness';
import { buildRepo } from '../unit/prune/build-repo';
import { runVerifyJob } from '../../src/verify';

interface Page {
  goto(url: string, o?: { timeout?: number }): Promise<unknown>;
  waitForFunction(fn: string, arg?: unknown, o?: { timeout?: number }): Promise<unknown>;
  evaluate<T>(fn: string): Promise<T>;
  screenshot(o: { path: string; fullPage?: boolean }): Promise<unknown>;
  on(event: 'pageerror', cb: (e: Error) => void): void;
  setDefaultTimeout(ms: number): void;
}
interface BrowserContext {
  pages(): Page[];
  newPage(): Promise<Page>;
  close(): Promise<void>;
}
interface Chromium {
  launchPersistentContext(userDataDir: string, o: Record<string, unknown>): Promise<BrowserContext>;
}

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.VMBACKUP_DASHBOARD_SCREENSHOT ?? path.join(REPO_ROOT, 'docs', 'dashboard.png');
const DASHBOARD = path.join(REPO_ROOT, 'node_modules', '@flowfuse', 'node-red-dashboard');

describe('dashboard example in headless Chromium', function () {
  this.timeout(240_000);
  let dir = '';
  let nr: NodeRed | undefined;
  let context: BrowserContext | undefined;
  let page: Page;
  const pageErrors: string[] = [];

  before(async function () {
    this.timeout(300_000);
    let chromium: Chromium;
    try {
      chromium = (require('playwright-core') as { chromium: Chromium }).chromium;
    } catch {
      console.log('      skipped: playwright-core is not installed');
      return this.skip();
    }
    if (!fs.existsSync(CHROMIUM) || !fs.existsSync(DASHBOARD) || spawnSync('qemu-img', ['--version']).status !== 0) {
      console.log(`      skipped: needs ${CHROMIUM}, ${DASHBOARD} (npm ci) and qemu-img`);
      return this.skip();
    }
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmbackup-dashboard-'));
    // the repository: vm-web backed up every night until last night, vm-db not for three days
    const day = 86_400_000;
    const lastNight = new Date(Date.now() - 12 * 3600_000);
    const nights = (n: number, last: Date) => Array.from({ length: n }, (_, i) => new Date(last.getTime() - (n - 1 - i) * day));
    const disk = { id: 'drive-virtio0', fullAt: (i: number) => i % 7 === 0 };
    const web = buildRepo(path.join(dir, 'a'), nights(10, lastNight), [disk], { vm: 'vm-web', consistency: 'application' });
    const db = buildRepo(path.join(dir, 'b'), nights(8, new Date(lastNight.getTime() - 3 * day)), [disk], { vm: 'vm-db' });
    const root = web.root;
    fs.renameSync(db.vmDir, path.join(root, 'lab', 'vm-db'));
    // one damaged backup of vm-db, found by a verify (the table says FAILED)
    fs.appendFileSync(path.join(root, 'lab', 'vm-db', db.ids[7], 'definition.json'), ' ');
    await runVerifyJob(path.join(root, 'lab', 'vm-db'), { proof: 'none' });

    // Node-RED with this package and Dashboard 2, both as installed modules of the user dir
    const userDir = path.join(dir, 'user');
    fs.mkdirSync(path.join(userDir, 'node_modules', '@vm-backup'), { recursive: true });
    fs.mkdirSync(path.join(userDir, 'node_modules', '@flowfuse'), { recursive: true });
    fs.symlinkSync(REPO_ROOT, path.join(userDir, 'node_modules', '@vm-backup', 'node-red-vm-backup'));
    fs.symlinkSync(DASHBOARD, path.join(userDir, 'node_modules', '@flowfuse', 'node-red-dashboard'));
    fs.writeFileSync(path.join(userDir, 'package.json'), JSON.stringify({ name: 'dashboard-test', version: '0.0.1', private: true }));
    nr = await NodeRed.start(userDir);
    const flow = readExample('Dashboard of the backups');
    for (const host of flow.filter((n) => n.type === 'vmbackup-host'))
      Object.assign(host, { hostName: 'lab', socketDir: path.join(dir, 'run'), repository: root, journalDir: path.join(dir, 'journal') });
    fs.mkdirSync(path.join(dir, 'run'));
    await nr.deploy(flow);

    context = await chromium.launchPersistentContext(path.join(dir, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1400, height: 1100 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(60_000);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    // the inject fires once a second after the deploy; the page replays the table's last message on
    // load; a notification goes to the pages open when it is sent: the inject again, once the page is up
    await sleep(2500);
    await page.goto(`${nr.base}/dashboard/backups`, { timeout: 60_000 });
    await page.waitForFunction(`document.querySelectorAll('.vmb-vm').length === 2`, undefined, { timeout: 60_000 });
    await nr.inject(flow.find((n) => n.type === 'inject')!.id);
  });

  after(async () => {
    await context?.close().catch(() => undefined);
    await nr?.stop();
    if (!process.env.VMBACKUP_E2E_KEEP) removeDir(dir);
  });

  it('a table per VM: its newest backups with method, consistency, size, chain, duration and last verify', async () => {
    await page.waitForFunction(`document.querySelectorAll('.vmb-vm').length === 2`, undefined, { timeout: 60_000 });
    const tables = await page.evaluate<{ vm: string; head: string; rows: string[][] }[]>(
      `[...document.querySelectorAll('.vmb-vm')].map((v) => ({
        vm: v.querySelector('.vmb-head b').textContent.trim(),
        head: v.querySelector('.vmb-head').textContent.replace(/\\s+/g, ' ').trim(),
        rows: [...v.querySelectorAll('tbody tr')].map((r) => [...r.querySelectorAll('td')].map((c) => c.textContent.trim())),
      }))`,
    );
    const db = tables.find((t) => t.vm === 'vm-db')!;
    const web = tables.find((t) => t.vm === 'vm-web')!;
    assert.equal(web.rows.length, 10);
    assert.equal(db.rows.length, 8);
    assert.match(web.head, /last backup \d+(\.\d)? h ago/);
    assert.match(db.head, /no backup for \d+(\.\d)? h/);
    assert.match(db.head, /1 damaged/);
    // newest first: vm-web's last night, an incremental at depth 2 (fulls every 7 nights), application-consistent
    assert.deepEqual(web.rows[0].slice(1, 3), ['checkpoint', 'application']);
    assert.equal(web.rows[0][4], 'incremental, depth 2');
    assert.equal(web.rows[2][4], 'full');
    assert.match(web.rows[0][5], /^\d+\.\d s$/);
    assert.equal(web.rows[0][6], 'never');
    assert.match(db.rows[0][6], /^FAILED /);
    assert.match(db.rows[1][6], /^OK /);
  });

  it("the size and duration of each backup per night are charted: both VMs' series drawn", async () => {
    await page.waitForFunction(`document.querySelectorAll('canvas').length >= 2`, undefined, { timeout: 60_000 });
    // the series' colours (the example's first two: vm-db blue, vm-web red) must be painted in each chart
    await page.waitForFunction(
      `[...document.querySelectorAll('canvas')].slice(0, 2).every((c) => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0, red = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] < 40 && d[i + 1] > 120 && d[i + 1] < 180 && d[i + 2] > 220) blue++;
          if (d[i] > 220 && d[i + 1] < 40 && d[i + 2] < 40) red++;
        }
        return blue > 200 && red > 200;
      })`,
      undefined,
      { timeout: 30_000 },
    );
  });

  it('a notification names the VM without a recent backup', async () => {
    await page.waitForFunction(`/NO BACKUP of vm-db/.test(document.body.innerText)`, undefined, { timeout: 60_000 });
    const text = await page.evaluate<string>('document.body.innerText');
    assert.match(text, /DAMAGED: vm-db/);
    assert.doesNotMatch(text, /NO BACKUP of vm-web/);
    if (SCREENSHOT !== '0') await page.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.deepEqual(pageErrors, []);
  });
});
