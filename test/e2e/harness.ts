// A Node-RED installed the way a user installs this package: `npm pack` of a clean clone of the
// repo (its prepare script builds it), `npm install <tarball>` into a fresh user directory, then the `node-red` command on a free
// port with editor auth off. Shared by the e2e (admin API) and browser (editor) tests.
// Programs run with argument vectors only; no shell is spawned.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const MODULE = '@vm-backup/node-red-vm-backup';
export const TYPES = [
  'vmbackup-host',
  'vmbackup-enumerate',
  'vmbackup-classify',
  'vmbackup-prepare',
  'vmbackup-snapshot',
  'vmbackup-post-snapshot',
  'vmbackup-copy',
  'vmbackup-prune',
  'vmbackup-verify',
  'vmbackup-history',
  'vmbackup-restore',
  'vmbackup-boot-test',
  'vmbackup-file-restore',
] as const;
/** the backup pipeline's six stage nodes, in order */
export const PIPELINE_TYPES = TYPES.slice(1, 7);
export const EXAMPLES = [
  'Alert on failure',
  'Dashboard of the backups',
  'Legacy saved-state backup',
  'Monthly boot test with alert',
  'Nightly backup of every VM',
  'Nightly backup, then prune (keep 7 daily, 4 weekly, 6 monthly)',
  'Report only - enumerate and classify',
  'Restore a VM to a directory',
  'Restore one file',
  'Weekly verify and alerts',
] as const;
/** examples that need another package installed (Dashboard 2's ui-* nodes): checked, not deployed */
export const THIRD_PARTY_EXAMPLES: readonly string[] = ['Dashboard of the backups'];
/** node types of @flowfuse/node-red-dashboard (Dashboard 2), which the dashboard example uses */
export const DASHBOARD_TYPE = /^ui-/;

/** Headless Chromium as the browser tests run it: the Debian build, nothing fetched, nothing phoning home. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** dist/test/e2e -> repository root */
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface FlowNode {
  id: string;
  type: string;
  z?: string;
  wires?: string[][];
  [key: string]: unknown;
}

function run(file: string, args: string[], cwd: string, timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { cwd, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env: npmEnv() }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} (in ${cwd}) failed: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** npm and node-red run with the same node as the tests. */
function npmEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}` };
}

export function readExample(name: string): FlowNode[] {
  return JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'examples', `${name}.json`), 'utf8')) as FlowNode[];
}

/** The built package must exist: the tests check what a user gets, not the sources. */
export function assertBuilt(): void {
  for (const type of TYPES) {
    const folder = type.replace(/^vmbackup-/, '');
    for (const ext of ['js', 'html']) {
      const f = path.join(REPO_ROOT, 'dist', 'nodes', folder, `${folder}.${ext}`);
      if (!fs.existsSync(f)) throw new Error(`${f} is missing: run "npm run build" first`);
    }
  }
}

export interface Installed {
  dir: string;
  userDir: string;
  tarball: string;
  moduleDir: string;
}

/**
 * What a user who packs or installs from git gets: a `git clone` of the repository (its committed
 * HEAD: no dist/, no node_modules, nothing built by hand), its dependencies (`npm ci`, scripts off),
 * then `npm pack`, whose `prepare` script builds dist/; the tarball is installed into a fresh user
 * dir. The dependency trees come from the npm cache when they can (--prefer-offline).
 */
export async function packAndInstall(): Promise<Installed> {
  assertBuilt();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmbackup-e2e-'));
  const cloneDir = path.join(dir, 'clone');
  const packDir = path.join(dir, 'pack');
  const userDir = path.join(dir, 'user');
  fs.mkdirSync(packDir);
  fs.mkdirSync(userDir);
  await run('git', ['clone', '--quiet', '--no-hardlinks', REPO_ROOT, cloneDir], dir, 120_000);
  await run('npm', ['ci', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], cloneDir, 600_000);
  await run('npm', ['pack', '--loglevel=error', '--pack-destination', packDir], cloneDir, 600_000);
  const tarballs = fs.readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
  if (tarballs.length !== 1) throw new Error(`npm pack wrote ${tarballs.length} tarballs in ${packDir}`);
  const tarball = path.join(packDir, tarballs[0]);
  fs.writeFileSync(
    path.join(userDir, 'package.json'),
    JSON.stringify({ name: 'node-red-project', description: 'e2e', version: '0.0.1', private: true }, null, 2),
  );
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], userDir, 300_000);
  // the clone's node_modules (the whole dev tree) is not needed any more
  fs.rmSync(cloneDir, { recursive: true, force: true });
  return { dir, userDir, tarball, moduleDir: path.join(userDir, 'node_modules', ...MODULE.split('/')) };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface NodeRedOptions {
  /** the node-red command; default the repository's devDependency node_modules/.bin/node-red */
  command?: string;
  /** extra lines for settings.js, inside module.exports */
  extraSettings?: string;
}

export class NodeRed {
  readonly base: string;
  private exited: Promise<number | null>;
  private logText = '';

  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
    readonly userDir: string,
  ) {
    this.base = `http://127.0.0.1:${port}`;
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    const keep = (chunk: Buffer) => {
      this.logText += chunk.toString('utf8');
      if (this.logText.length > 2_000_000) this.logText = this.logText.slice(-1_000_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  get log(): string {
    return this.logText;
  }

  /** Start `node-red -u <userDir> -p <port> -s <settings>` with editor auth off, and wait until it serves. */
  static async start(userDir: string, options: NodeRedOptions = {}): Promise<NodeRed> {
    const port = await freePort();
    const settingsFile = path.join(userDir, 'e2e-settings.js');
    // No adminAuth: the editor and admin API are open (the server listens on 127.0.0.1 only).
    fs.writeFileSync(
      settingsFile,
      `module.exports = {
  uiHost: '127.0.0.1',
  flowFile: 'flows.json',
  credentialSecret: 'vmbackup-e2e',
  telemetry: { enabled: false, updateNotification: false },
  editorTheme: { tours: false, projects: { enabled: false } },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
  logging: { console: { level: 'info', metrics: false, audit: false } },
  ${options.extraSettings ?? ''}
};
`,
    );
    const command = options.command ?? path.join(REPO_ROOT, 'node_modules', '.bin', 'node-red');
    const child = spawn(command, ['-u', userDir, '-p', String(port), '-s', settingsFile], {
      cwd: userDir,
      env: npmEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const nr = new NodeRed(child, port, userDir);
    const deadline = Date.now() + 60_000;
    let exitCode: number | null | undefined;
    void nr.exited.then((c) => (exitCode = c));
    for (;;) {
      if (exitCode !== undefined) throw new Error(`node-red exited with ${exitCode} before serving:\n${nr.log}`);
      try {
        const res = await fetch(`${nr.base}/settings`);
        if (res.ok && /Started flows/.test(nr.log)) return nr;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await nr.stop();
        throw new Error(`node-red did not start within 60 s:\n${nr.log}`);
      }
      await sleep(250);
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(timer);
  }

  async get(p: string, headers: Record<string, string> = {}): Promise<Response> {
    return fetch(this.base + p, { headers });
  }

  async json<T = unknown>(p: string, headers: Record<string, string> = {}): Promise<T> {
    const res = await this.get(p, { Accept: 'application/json', ...headers });
    if (!res.ok) throw new Error(`GET ${p}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  }

  /** Full deploy through the admin API, as the editor's Deploy button does. */
  async deploy(flows: FlowNode[]): Promise<string> {
    const res = await fetch(`${this.base}/flows`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Node-RED-API-Version': 'v2', 'Node-RED-Deployment-Type': 'full' },
      body: JSON.stringify({ flows }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`POST /flows: ${res.status} ${text}`);
    return (JSON.parse(text) as { rev: string }).rev;
  }

  /** Click an inject node's button. Right after a deploy the node may not be started yet: retry a 404 briefly. */
  async inject(id: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const res = await fetch(`${this.base}/inject/${encodeURIComponent(id)}`, { method: 'POST' });
      if (res.ok) return;
      if (res.status !== 404 || Date.now() > deadline) throw new Error(`POST /inject/${id}: ${res.status} ${await res.text()}`);
      await sleep(250);
    }
  }

  /** A global context value as the admin API returns it, decoded; undefined while unset. */
  async globalValue<T = unknown>(key: string): Promise<T | undefined> {
    const body = await this.json<{ msg?: string; format?: string } | Record<string, { msg: string; format: string }>>(
      `/context/global/${encodeURIComponent(key)}`,
    );
    const entry = (typeof (body as { msg?: unknown }).msg === 'string' ? body : Object.values(body)[0]) as
      { msg: string; format: string } | undefined;
    if (!entry || entry.msg === undefined || entry.format === 'undefined') return undefined;
    if (/^(string|number|boolean)/.test(entry.format)) return (entry.format.startsWith('string') ? entry.msg : JSON.parse(entry.msg)) as T;
    return JSON.parse(entry.msg) as T;
  }

  /** Forget a global context value (global context outlives redeploys). */
  async deleteGlobal(key: string): Promise<void> {
    const res = await fetch(`${this.base}/context/global/${encodeURIComponent(key)}`, { method: 'DELETE' });
    if (!res.ok && res.status !== 404) throw new Error(`DELETE /context/global/${key}: ${res.status} ${await res.text()}`);
  }

  async waitForGlobal<T = unknown>(keys: string[], timeoutMs: number): Promise<{ key: string; value: T }> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const key of keys) {
        const value = await this.globalValue<T>(key);
        if (value !== undefined) return { key, value };
      }
      await sleep(500);
    }
    throw new Error(
      `none of global.${keys.join(', global.')} was set within ${timeoutMs} ms; node-red log tail:\n${this.log.slice(-4000)}`,
    );
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The lab's run dir when VMBACKUP_LAB_DIR names a running lab (a .qmp socket in <lab>/run), else a reason. */
export function labRunDir(): { runDir: string; labDir: string } | { skip: string } {
  const labDir = process.env.VMBACKUP_LAB_DIR;
  if (!labDir) return { skip: 'VMBACKUP_LAB_DIR is not set (start a lab: VMBACKUP_LAB_DIR=/tmp/vmb-lab node dist/lab/cli.js start)' };
  const runDir = path.join(labDir, 'run');
  let sockets: string[] = [];
  try {
    sockets = fs.readdirSync(runDir).filter((f) => f.endsWith('.qmp') && fs.statSync(path.join(runDir, f)).isSocket());
  } catch {
    return { skip: `${runDir} does not exist: the lab in VMBACKUP_LAB_DIR=${labDir} is not started` };
  }
  if (sockets.length === 0) return { skip: `no QMP sockets in ${runDir}: the lab in VMBACKUP_LAB_DIR=${labDir} is not running` };
  return { runDir, labDir };
}

export function removeDir(dir: string | undefined): void {
  if (dir && dir.startsWith(os.tmpdir()) && process.env.VMBACKUP_E2E_KEEP !== '1') fs.rmSync(dir, { recursive: true, force: true });
}
