/**
 * Make sure the Debian packages the lab host needs are installed.
 *
 * Checks each package with `dpkg-query -W -f='${Status}' <pkg>` and, if any is
 * missing, runs `apt-get update` followed by
 * `apt-get install -y --no-install-recommends <missing...>` with
 * DEBIAN_FRONTEND=noninteractive.
 */
import { run, runOk } from './util';

/** Packages required by the lab (xz-utils: decompress .ko.xz kernel modules). */
export const LAB_PACKAGES: readonly string[] = [
  'qemu-system-x86',
  'qemu-utils',
  'qemu-guest-agent',
  'busybox-static',
  'linux-image-amd64',
  'e2fsprogs',
  'cpio',
  'xz-utils',
];

export interface InstallResult {
  checked: string[];
  missing: string[];
  installed: string[];
  /** true when apt-get was run */
  ranApt: boolean;
}

export interface InstallOptions {
  packages?: readonly string[];
  /** Only report what is missing; do not run apt-get. */
  dryRun?: boolean;
  log?: (msg: string) => void;
}

/** True when dpkg reports the package as "install ok installed". */
export async function isPackageInstalled(pkg: string): Promise<boolean> {
  const r = await run('dpkg-query', ['-W', '-f=${Status}', pkg]);
  if (r.code !== 0) return false;
  return / installed$/.test(r.stdout.trim()) && !/not-installed$/.test(r.stdout.trim());
}

export async function missingPackages(packages: readonly string[] = LAB_PACKAGES): Promise<string[]> {
  const missing: string[] = [];
  for (const p of packages) {
    if (!(await isPackageInstalled(p))) missing.push(p);
  }
  return missing;
}

export async function installPackages(opts: InstallOptions = {}): Promise<InstallResult> {
  const log = opts.log ?? ((m: string) => console.log(m));
  const packages = [...(opts.packages ?? LAB_PACKAGES)];
  const missing = await missingPackages(packages);
  const result: InstallResult = { checked: packages, missing, installed: [], ranApt: false };
  if (missing.length === 0) {
    log(`lab: all packages present (${packages.join(' ')})`);
    return result;
  }
  log(`lab: missing packages: ${missing.join(' ')}`);
  if (opts.dryRun) return result;
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  log('lab: apt-get update');
  await runOk('apt-get', ['update'], { env, inherit: true });
  log(`lab: apt-get install -y --no-install-recommends ${missing.join(' ')}`);
  await runOk('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { env, inherit: true });
  const still = await missingPackages(missing);
  if (still.length > 0) throw new Error(`lab: packages still missing after apt-get: ${still.join(' ')}`);
  result.installed = missing;
  result.ranApt = true;
  log(`lab: installed ${missing.join(' ')}`);
  return result;
}
