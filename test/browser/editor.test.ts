// The editor in a real browser: headless Chromium (/usr/bin/chromium, never downloaded) driven by
// playwright-core, against the package installed from its tarball into a fresh Node-RED.
//
//   npm run build && npx mocha --timeout 300000 'dist/test/browser/**/*.test.js'
//
// Env: CHROMIUM (default /usr/bin/chromium); VMBACKUP_SCREENSHOT (default docs/editor.png in the
// repository; "0" to not write it); VMBACKUP_E2E_KEEP=1 keeps the scratch dir for a post-mortem.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CHROMIUM_ARGS,
  MODULE,
  NodeRed,
  REPO_ROOT,
  packAndInstall,
  readExample,
  removeDir,
  sleep,
  type FlowNode,
  type Installed,
} from '../e2e/harness';

// playwright-core is loaded at run time so that the repository compiles without it; only the
// few calls used here are typed.
interface Locator {
  click(o?: { timeout?: number }): Promise<void>;
  dblclick(o?: { timeout?: number }): Promise<void>;
  hover(o?: { position?: { x: number; y: number } }): Promise<void>;
  fill(v: string): Promise<void>;
  press(key: string): Promise<void>;
  selectOption(v: string): Promise<unknown>;
  textContent(): Promise<string | null>;
  isVisible(): Promise<boolean>;
  count(): Promise<number>;
  first(): Locator;
  waitFor(o?: { state?: 'visible' | 'hidden' | 'attached' | 'detached'; timeout?: number }): Promise<void>;
  allTextContents(): Promise<string[]>;
  locator(selector: string, o?: { hasText?: string | RegExp }): Locator;
  getAttribute(name: string): Promise<string | null>;
  inputValue(): Promise<string>;
}
interface Page {
  goto(url: string, o?: { timeout?: number }): Promise<unknown>;
  locator(selector: string, o?: { hasText?: string | RegExp }): Locator;
  waitForFunction(fn: string, arg?: unknown, o?: { timeout?: number }): Promise<unknown>;
  evaluate<T>(fn: string): Promise<T>;
  screenshot(o: { path: string; fullPage?: boolean }): Promise<unknown>;
  on(event: 'pageerror', cb: (e: Error) => void): void;
  on(event: 'console', cb: (m: { type(): string; text(): string }) => void): void;
  keyboard: { press(key: string): Promise<void> };
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

function loadChromium(): Chromium | string {
  const candidates = ['playwright-core', ...(process.env.PLAYWRIGHT_CORE_DIR ? [process.env.PLAYWRIGHT_CORE_DIR] : [])];
  for (const c of candidates) {
    try {
      return (require(c) as { chromium: Chromium }).chromium;
    } catch {
      // next
    }
  }
  return 'playwright-core is not installed (npm install --save-dev playwright-core, or set PLAYWRIGHT_CORE_DIR)';
}

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.VMBACKUP_SCREENSHOT ?? path.join(REPO_ROOT, 'docs', 'editor.png');

describe('editor in headless Chromium', function () {
  // The browser test's own timeouts: slower than the API tests on a 2-core machine.
  this.timeout(180_000);
  this.slow(30_000);
  let installed: Installed | undefined;
  let nr: NodeRed | undefined;
  let context: BrowserContext | undefined;
  let page: Page;
  const pageErrors: string[] = [];
  let scratch = '';

  before(async function () {
    this.timeout(600_000);
    const chromium = loadChromium();
    if (typeof chromium === 'string') {
      console.log(`      skipped: ${chromium}`);
      this.skip();
    }
    if (!fs.existsSync(CHROMIUM)) {
      console.log(`      skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);
      this.skip();
    }
    installed = await packAndInstall();
    scratch = path.join(installed.dir, 'scratch');
    fs.mkdirSync(path.join(scratch, 'run'), { recursive: true });
    nr = await NodeRed.start(installed.userDir);
    context = await chromium.launchPersistentContext(path.join(installed.dir, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 2000, height: 1000 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(30_000);
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error' && /vmbackup|vm-backup/i.test(m.text())) pageErrors.push(m.text());
    });
    await page.goto(nr.base + '/');
    await page.waitForFunction(
      `window.RED && RED.nodes && RED.nodes.getType('vmbackup-copy') && document.querySelector('#red-ui-palette-container-VM_backup')`,
      undefined,
      { timeout: 60_000 },
    );
  });

  after(async function () {
    this.timeout(60_000);
    await context?.close().catch(() => undefined);
    await nr?.stop();
    removeDir(installed?.dir);
  });

  afterEach(async function () {
    if (this.currentTest?.state === 'failed' && page && installed) {
      const shot = path.join(installed.dir, `failed-${(this.currentTest.title ?? 'test').replace(/[^a-z0-9]+/gi, '-')}.png`);
      await page.screenshot({ path: shot }).catch(() => undefined);
      console.log(`      screenshot of the failure: ${shot} (set VMBACKUP_E2E_KEEP=1 to keep it)`);
    }
  });

  /** Import flow JSON through Menu > Import > (clipboard), as a user pasting it does. */
  async function importByPaste(flow: FlowNode[]): Promise<void> {
    await page.locator('#red-ui-header-button-sidemenu').click();
    await page.locator('#menu-item-import').click();
    const text = page.locator('#red-ui-clipboard-dialog-import-text');
    await text.fill(JSON.stringify(flow));
    await text.press('End'); // the dialog validates on keyup, as after typing or pasting
    await page.waitForFunction(`!$('#red-ui-clipboard-dialog-ok').button('option', 'disabled')`);
    await page.locator('#red-ui-clipboard-dialog-ok').click();
    await page.locator('#red-ui-clipboard-dialog-import-text').waitFor({ state: 'hidden' });
  }

  /** Show a flow tab by clicking it, as a user does after an import adds a tab. */
  async function showTab(label: string): Promise<string> {
    await page.locator('#red-ui-workspace-tabs .red-ui-tab', { hasText: label }).first().click();
    await page.waitForFunction(`RED.nodes.workspace(RED.workspaces.active())?.label === ${JSON.stringify(label)}`);
    return page.evaluate<string>(`RED.workspaces.active()`);
  }

  async function nodeIdOf(type: string, z?: string): Promise<string> {
    const id = await page.evaluate<string | undefined>(
      `(() => { let id; RED.nodes.eachNode((n) => { if (!id && n.type === ${JSON.stringify(type)} && (${JSON.stringify(z ?? null)} === null || n.z === ${JSON.stringify(z ?? null)})) id = n.id; }); return id; })()`,
    );
    assert.ok(id, `a ${type} node in the workspace`);
    return id;
  }

  async function deploy(): Promise<void> {
    const before = await nr!.json<{ rev: string }>('/flows', { 'Node-RED-API-Version': 'v2' });
    await page.locator('#red-ui-header-button-deploy').click();
    for (let i = 0; i < 120; i++) {
      const now = await nr!.json<{ rev: string }>('/flows', { 'Node-RED-API-Version': 'v2' });
      if (now.rev !== before.rev) {
        await page.waitForFunction(`$('#red-ui-header-button-deploy').hasClass('disabled')`);
        return;
      }
      await sleep(250);
    }
    throw new Error('deploy did not change the flows revision');
  }

  it('lists the pipeline, repository and restore nodes in the "VM backup" palette category, with their icons', async function () {
    const category = page.locator('#red-ui-palette-container-VM_backup');
    await category.waitFor();
    const header = await page
      .locator('#red-ui-palette-header-VM_backup, #red-ui-palette-VM_backup .red-ui-palette-header')
      .first()
      .textContent();
    assert.match(header ?? '', /VM backup/);
    const labels = (await category.locator('.red-ui-palette-label').allTextContents()).map((t) => t.replace(/\s+/g, ''));
    assert.deepEqual(labels, [
      'enumerate',
      'classify',
      'prepare',
      'snapshot',
      'post-snapshot',
      'copy',
      'prune',
      'verify',
      'history',
      'restore',
      'boottest',
      'filerestore',
    ]);
    const icons = await page.evaluate<string[]>(
      `Array.from(document.querySelectorAll('#red-ui-palette-container-VM_backup .red-ui-palette-icon')).map((e) => e.style.backgroundImage)`,
    );
    assert.equal(icons.length, 12);
    for (const icon of icons) assert.match(icon, new RegExp(`icons/${MODULE.replace('/', '\\/')}/vmbackup-[a-z-]+\\.svg`));
    // the icons really load
    const loaded = await page.evaluate<boolean[]>(
      `Promise.all(Array.from(document.querySelectorAll('#red-ui-palette-container-VM_backup .red-ui-palette-icon')).map((e) => new Promise((res) => { const img = new Image(); img.onload = () => res(img.width > 0); img.onerror = () => res(false); img.src = e.style.backgroundImage.replace(/^url\\("?|"?\\)$/g, ''); })))`,
    );
    assert.deepEqual(loaded, new Array(12).fill(true));
  });

  it('edits an imported classify node: double-click, change the fallback, Done, Deploy', async function () {
    const flow = readExample('Report only - enumerate and classify');
    const host = flow.find((n) => n.type === 'vmbackup-host')!;
    Object.assign(host, { socketDir: path.join(scratch, 'run'), repository: path.join(scratch, 'repository') });
    await importByPaste(flow);
    const z = await showTab(flow.find((n) => n.type === 'tab')!.label as string);
    const classifyId = await nodeIdOf('vmbackup-classify', z);
    const onCanvas = page.locator(`[id="${classifyId}"] .red-ui-flow-node-label`);
    assert.match((await onCanvas.textContent()) ?? '', /classify \(fallback: checkpoint\)/);

    await page.locator(`[id="${classifyId}"] .red-ui-flow-node`).dblclick();
    const fallback = page.locator('#node-input-fallback');
    await fallback.waitFor();
    // the dialog is translated from the node's catalogue, not raw keys
    const dialogText = (await page.locator('.red-ui-tray').first().textContent()) ?? '';
    assert.match(dialogText, /Fallback/);
    assert.doesNotMatch(dialogText, /classify\.field\./);
    assert.equal(await fallback.inputValue(), 'checkpoint');
    await fallback.selectOption('saved-state');

    // the host's config dialog, from the pencil next to the host: Hyper-V rows only for Hyper-V
    await page.locator('#node-input-btn-host-edit').click();
    const provider = page.locator('#node-config-input-provider');
    await provider.waitFor();
    assert.equal(await page.locator('#node-config-input-socketDir').isVisible(), true);
    assert.equal(await page.locator('#node-config-input-hvMode').isVisible(), false);
    await provider.selectOption('hyperv');
    assert.equal(await page.locator('#node-config-input-socketDir').isVisible(), false);
    assert.equal(await page.locator('#node-config-input-hvMode').isVisible(), true);
    assert.equal(await page.locator('#node-config-input-sshHost').isVisible(), false);
    await page.locator('#node-config-input-hvMode').selectOption('ssh');
    assert.equal(await page.locator('#node-config-input-sshHost').isVisible(), true);
    assert.equal(await page.locator('#node-config-input-privateKey').isVisible(), true);
    await page.locator('#node-config-input-hvMode').selectOption('local');
    // libvirt: its URI only, no socket dir, no Hyper-V rows
    await provider.selectOption('libvirt');
    assert.equal(await page.locator('#node-config-input-libvirtUri').isVisible(), true);
    // an imported host has no URI set: the field shows the default the runtime then uses
    assert.equal(await page.locator('#node-config-input-libvirtUri').getAttribute('placeholder'), 'qemu:///system');
    // and its scratch dir, whose placeholder says where scratch files go when it is empty
    assert.equal(await page.locator('#node-config-input-scratchDir').isVisible(), true);
    assert.match((await page.locator('#node-config-input-scratchDir').getAttribute('placeholder')) ?? '', /\/var\/lib\/libvirt\/qemu/);
    assert.equal(await page.locator('#node-config-input-socketDir').isVisible(), false);
    assert.equal(await page.locator('#node-config-input-hvMode').isVisible(), false);
    await provider.selectOption('qemu');
    assert.equal(await page.locator('#node-config-input-libvirtUri').isVisible(), false);
    assert.equal(await page.locator('#node-config-input-scratchDir').isVisible(), false);
    assert.equal(await page.locator('#node-config-input-socketDir').isVisible(), true);
    // a relative repository is refused in the dialog
    const repository = page.locator('#node-config-input-repository');
    await repository.fill('relative/path');
    await repository.press('End'); // the dialog validates on keyup/change
    await page.waitForFunction(`$('#node-config-input-repository').hasClass('input-error')`);
    await repository.fill(path.join(scratch, 'repository'));
    await repository.press('End');
    await page.waitForFunction(`!$('#node-config-input-repository').hasClass('input-error')`);
    await page.locator('#node-config-dialog-ok').click();
    await provider.waitFor({ state: 'detached' });

    await page.locator('#node-dialog-ok').click();
    await fallback.waitFor({ state: 'detached' });
    assert.match((await onCanvas.textContent()) ?? '', /classify \(fallback: saved-state\)/);

    await deploy();
    const { flows } = await nr!.json<{ flows: FlowNode[] }>('/flows', { 'Node-RED-API-Version': 'v2' });
    const deployed = flows.find((n) => n.id === classifyId);
    assert.equal(deployed?.fallback, 'saved-state');
  });

  it('imports the nightly example from Menu > Import > Examples and deploys it', async function () {
    await page.locator('#red-ui-header-button-sidemenu').click();
    await page.locator('#menu-item-import').click();
    await page.locator('#red-ui-clipboard-dialog-import-tabs a', { hasText: 'Examples' }).first().click();
    const tab = page.locator('#red-ui-clipboard-dialog-import-tab-examples');
    await tab.waitFor();
    await tab.locator('.red-ui-treeList-label', { hasText: MODULE }).first().click();
    const item = tab.locator('.red-ui-treeList-label', { hasText: 'Nightly backup of every VM' }).first();
    await item.waitFor();
    assert.equal(await tab.locator('.red-ui-treeList-label', { hasText: 'Report only - enumerate and classify' }).count(), 1);
    assert.equal(await tab.locator('.red-ui-treeList-label', { hasText: 'Alert on failure' }).count(), 1);
    assert.equal(await tab.locator('.red-ui-treeList-label', { hasText: 'Legacy saved-state backup' }).count(), 1);
    await item.click();
    await page.waitForFunction(`!$('#red-ui-clipboard-dialog-ok').button('option', 'disabled')`);
    await page.locator('#red-ui-clipboard-dialog-ok').click();
    await tab.waitFor({ state: 'hidden' });
    const tabId = await showTab('VM backup: nightly');

    // The example names the shared lab (/tmp/vm-backup-lab) and runs at 01:30: point this test's
    // copy at a scratch dir before deploying, so a schedule firing mid-test touches no VM.
    await page.evaluate(
      `RED.nodes.eachConfig((n) => { if (n.type === 'vmbackup-host' && n.socketDir === '/tmp/vm-backup-lab/run') { n.socketDir = ${JSON.stringify(path.join(scratch, 'run'))}; n.repository = ${JSON.stringify(path.join(scratch, 'repository'))}; n.changed = true; n.dirty = true; } }); RED.nodes.dirty(true); RED.view.redraw(true);`,
    );
    const labels = await page.evaluate<string[]>(
      `(() => { const out = []; RED.nodes.eachNode((n) => { if (n.z === ${JSON.stringify(tabId)} && /^vmbackup-/.test(n.type)) out.push(RED.utils.getNodeLabel(n)); }); return out; })()`,
    );
    assert.deepEqual(labels.sort(), [
      'classify (fallback: checkpoint)',
      'copy (2 at a time)',
      'enumerate VMs (lab)',
      'post-snapshot',
      'prepare',
      'snapshot',
    ]);
    await deploy();
    const { flows } = await nr!.json<{ flows: FlowNode[] }>('/flows', { 'Node-RED-API-Version': 'v2' });
    const nightly = flows.filter((n) => n.z === tabId);
    assert.equal(nightly.filter((n) => /^vmbackup-/.test(n.type)).length, 6);
    assert.ok(nightly.some((n) => n.type === 'inject' && n.crontab === '30 01 * * *'));
    const hosts = flows.filter((n) => n.type === 'vmbackup-host');
    assert.ok(
      hosts.every((h) => h.socketDir !== '/tmp/vm-backup-lab/run'),
      'no deployed host reaches the shared lab',
    );
  });

  it('shows the node help in the Help sidebar and writes the screenshot', async function () {
    const tabId = await page.evaluate<string>(`RED.workspaces.active()`);
    const classifyId = await nodeIdOf('vmbackup-classify', tabId);
    await page.locator(`[id="${classifyId}"] .red-ui-flow-node`).click();
    await page.evaluate(`RED.sidebar.show('help')`);
    const help = page.locator('.red-ui-sidebar-help-stack .red-ui-help');
    await page.waitForFunction(`/Chooses the backup method/.test($('.red-ui-sidebar-help-stack .red-ui-help').text())`, undefined, {
      timeout: 30_000,
    });
    const text = (await help.first().textContent()) ?? '';
    for (const h of ['Inputs', 'Outputs', 'Details', 'References']) assert.match(text, new RegExp(h));
    assert.match(text, /integration-service/);
    // the help of copy documents both outputs
    await page.evaluate(`RED.sidebar.help.show('vmbackup-copy')`);
    await page.waitForFunction(
      `/Progress/.test($('.red-ui-sidebar-help-stack .red-ui-help').text()) && $('.red-ui-sidebar-help-stack .red-ui-help ol.node-ports').length > 0`,
    );
    await page.evaluate(`RED.sidebar.help.show('vmbackup-classify')`);
    await page.waitForFunction(`/Chooses the backup method/.test($('.red-ui-sidebar-help-stack .red-ui-help').text())`);
    // the palette filter finds our nodes by type
    const search = page.locator('#red-ui-palette-search input');
    await search.fill('vmbackup');
    await search.press('End');
    await page.waitForFunction(`$('#red-ui-palette-container .red-ui-palette-node:visible').length === 12`);
    if (SCREENSHOT !== '0') {
      await page.locator('#red-ui-view-zoom-out').click();
      await page.locator('#red-ui-view-zoom-out').click();
      await page.evaluate(`$('#red-ui-workspace-chart').scrollLeft(0).scrollTop(0)`);
      await page.locator('#red-ui-workspace-chart').hover({ position: { x: 700, y: 500 } });
      await page.waitForFunction(`$('.red-ui-notification:visible').length === 0`, undefined, { timeout: 15_000 }).catch(() => undefined);
      fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
      await page.screenshot({ path: SCREENSHOT });
      assert.ok(fs.statSync(SCREENSHOT).size > 10_000, 'a real screenshot');
    }
    assert.deepEqual(pageErrors, [], 'no page errors from the editor');
  });
});
