// A real Node-RED (the repository's devDependency node-red 4.x, started with its own red.js) with
// this package installed in its user directory the way npm links a package, flows deployed
// through the admin API, and each backup started by an HTTP request that is answered when the
// backup set reaches the end of the flow (http in -> six stage nodes -> http response).
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import type { ProbeCall } from './probe';
import { log, nowMs, sleep } from './util';

/** dist/bench -> repository root */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
const MODULE = ['@vm-backup', 'node-red-vm-backup'];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface HttpResult {
  status: number;
  body: any;
  ms: number;
  bytes: number;
}

export function request(
  port: number,
  method: string,
  p: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<HttpResult> {
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const t0 = nowMs();
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: p,
        headers: { ...(data ? { 'Content-Type': 'application/json', 'Content-Length': String(data.length) } : {}), ...headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, ms: nowMs() - t0, bytes: text.length });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(0);
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

export class NodeRedProcess {
  private logText = '';
  private exited: Promise<number | null>;
  private stopping = false;

  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
    readonly userDir: string,
    readonly probeOut: string,
  ) {
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        if (!this.stopping)
          log(`node-red exited unexpectedly (code ${code}, signal ${signal}); its log ends with:\n${this.logText.slice(-4000)}`);
        resolve(code);
      }),
    );
    const keep = (c: Buffer) => {
      this.logText = (this.logText + c.toString('utf8')).slice(-200_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  get pid(): number {
    return this.child.pid!;
  }

  get log(): string {
    return this.logText;
  }

  /** Start node-red with the package at `root` linked into a fresh user dir; the probe (probe.ts) is preloaded. */
  static async start(userDir: string, root = REPO_ROOT, extraEnv: Record<string, string> = {}): Promise<NodeRedProcess> {
    await fs.rm(userDir, { recursive: true, force: true });
    await fs.mkdir(path.join(userDir, 'node_modules', MODULE[0]), { recursive: true });
    await fs.symlink(root, path.join(userDir, 'node_modules', ...MODULE));
    await fs.writeFile(
      path.join(userDir, 'package.json'),
      JSON.stringify(
        { name: 'bench-node-red', version: '0.0.1', private: true, dependencies: { [MODULE.join('/')]: `file:${root}` } },
        null,
        2,
      ),
    );
    const port = await freePort();
    const settings = path.join(userDir, 'bench-settings.js');
    await fs.writeFile(
      settings,
      `module.exports = {
  uiHost: '127.0.0.1',
  flowFile: 'flows.json',
  credentialSecret: false,
  telemetry: { enabled: false, updateNotification: false },
  editorTheme: { tours: false, projects: { enabled: false } },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
  logging: { console: { level: 'warn', metrics: false, audit: false } },
};
`,
    );
    const redJs = path.join(REPO_ROOT, 'node_modules', 'node-red', 'red.js');
    if (!existsSync(redJs)) throw new Error(`${redJs} is missing: npm install first`);
    const probeOut = path.join(userDir, 'probe-calls.json');
    // BENCH_NODE_ARGS: extra node options for the Node-RED process (e.g. --cpu-prof --cpu-prof-dir=DIR)
    const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const child = spawn(
      process.execPath,
      [...nodeArgs, '-r', path.join(__dirname, 'probe.js'), redJs, '-u', userDir, '-p', String(port), '-s', settings],
      {
        cwd: userDir,
        env: { ...process.env, BENCH_PROBE_OUT: probeOut, BENCH_DIST: path.join(root, 'dist'), ...extraEnv },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const nr = new NodeRedProcess(child, port, userDir, probeOut);
    let exitCode: number | null | undefined;
    void nr.exited.then((c) => (exitCode = c));
    const deadline = Date.now() + 90_000;
    for (;;) {
      if (exitCode !== undefined) throw new Error(`node-red exited with ${exitCode} before serving:\n${nr.log}`);
      try {
        const res = await request(port, 'GET', '/settings');
        if (res.status === 200) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await nr.stop();
        throw new Error(`node-red did not start within 90 s:\n${nr.log}`);
      }
      await sleep(200);
    }
    const nodes = await request(port, 'GET', '/nodes', undefined, { Accept: 'application/json' });
    const ours = (nodes.body as { module: string; types: string[] }[]).filter((n) => n.module === MODULE.join('/'));
    if (ours.length === 0) throw new Error(`node-red did not load ${MODULE.join('/')}:\n${nr.log}`);
    const version = await request(port, 'GET', '/settings');
    log(
      `node-red ${(version.body as { version: string }).version} pid ${nr.pid} on port ${port} with ${ours.flatMap((n) => n.types).length} vmbackup node types`,
    );
    return nr;
  }

  async deploy(flows: object[]): Promise<void> {
    const res = await request(this.port, 'POST', '/flows', { flows }, { 'Node-RED-API-Version': 'v2', 'Node-RED-Deployment-Type': 'full' });
    if (res.status !== 200) throw new Error(`deploy: ${res.status} ${JSON.stringify(res.body).slice(0, 500)}`);
    await sleep(300); // host nodes run their start-up recovery
  }

  /** Start one backup through the scenario's http-in node; resolves when the flow answers. */
  async backup(scenario: string): Promise<HttpResult> {
    const res = await request(this.port, 'POST', `/bench/${scenario}`, {});
    if (res.status !== 200)
      throw new Error(`backup ${scenario} failed (${res.status}): ${JSON.stringify(res.body).slice(0, 2000)}\n${this.log.slice(-2000)}`);
    return res;
  }

  /** What the probe (probe.ts) recorded in the Node-RED process since the last call (and reset). */
  async probeCalls(): Promise<ProbeCall[]> {
    await fs.rm(this.probeOut, { force: true });
    process.kill(this.pid, 'SIGWINCH');
    for (let i = 0; i < 100; i++) {
      await sleep(50);
      if (existsSync(this.probeOut)) {
        try {
          return JSON.parse(await fs.readFile(this.probeOut, 'utf8'));
        } catch {
          // being written
        }
      }
    }
    throw new Error('the probe in the Node-RED process did not answer');
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---- flows ----

export interface Scenario {
  name: string;
  socketDir: string;
  repository: string;
  journalDir: string;
  fallback: 'checkpoint' | 'saved-state' | 'fail';
  concurrency?: number;
  /** the copy node's Verify (qemu-img compare of every copy); default on, as the node */
  verify?: boolean;
}

/** One tab per scenario: POST /bench/<name> -> enumerate ... copy -> response; Catch -> 500. */
export function scenarioFlows(scenarios: Scenario[]): object[] {
  const flows: object[] = [];
  for (const s of scenarios) {
    const id = (x: string) => `${s.name}-${x}`.replace(/[^A-Za-z0-9-]/g, '-');
    const z = id('tab');
    flows.push(
      { id: z, type: 'tab', label: `bench ${s.name}` },
      {
        id: id('host'),
        type: 'vmbackup-host',
        name: s.name,
        provider: 'qemu',
        hostName: 'bench',
        socketDir: s.socketDir,
        overlayDir: '',
        repository: s.repository,
        journalDir: s.journalDir,
        freezeTimeout: 10,
        pauseTimeout: 300,
        sessionTimeout: 360,
        idleTimeout: 600,
        hvMode: 'local',
        sshHost: '',
        sshPort: 22,
        sshUser: '',
      },
      {
        id: id('in'),
        type: 'http in',
        z,
        name: '',
        url: `/bench/${s.name}`,
        method: 'post',
        upload: false,
        swaggerDoc: '',
        x: 100,
        y: 100,
        wires: [[id('enumerate')]],
      },
      { id: id('enumerate'), type: 'vmbackup-enumerate', z, host: id('host'), x: 200, y: 100, wires: [[id('classify')]] },
      {
        id: id('classify'),
        type: 'vmbackup-classify',
        z,
        host: id('host'),
        fallback: s.fallback,
        x: 300,
        y: 100,
        wires: [[id('prepare')]],
      },
      { id: id('prepare'), type: 'vmbackup-prepare', z, host: id('host'), x: 400, y: 100, wires: [[id('snapshot')]] },
      { id: id('snapshot'), type: 'vmbackup-snapshot', z, host: id('host'), x: 500, y: 100, wires: [[id('post')]] },
      { id: id('post'), type: 'vmbackup-post-snapshot', z, host: id('host'), x: 600, y: 100, wires: [[id('copy')]] },
      {
        id: id('copy'),
        type: 'vmbackup-copy',
        z,
        host: id('host'),
        compress: false,
        verify: s.verify ?? true,
        concurrency: s.concurrency ?? 2,
        progressInterval: 250,
        x: 700,
        y: 100,
        wires: [[id('response')], []],
      },
      { id: id('response'), type: 'http response', z, name: '', statusCode: '', headers: {}, x: 800, y: 100, wires: [] },
      { id: id('catch'), type: 'catch', z, name: '', scope: null, uncaught: false, x: 100, y: 200, wires: [[id('failed')]] },
      {
        id: id('failed'),
        type: 'function',
        z,
        name: 'failed',
        outputs: 1,
        noerr: 0,
        initialize: '',
        finalize: '',
        libs: [],
        func: 'msg.statusCode = 500;\nmsg.payload = { error: msg.error && msg.error.message, summary: msg.summary };\nreturn msg;',
        x: 300,
        y: 200,
        wires: [[id('response')]],
      },
    );
  }
  return flows;
}
