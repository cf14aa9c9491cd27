// The thin adapter of the nodes that act on backups rather than carry a backup set through the
// pipeline (restore, file restore, boot test): read config, merge msg.payload over it, call the
// domain, progress on output 2, status, summary, done. A refusal goes to done(err), so Catch
// nodes see it with msg.summary. At deploy, once the host is open, `recover` runs (a restore or a
// boot test that a crash interrupted is finished or rolled back) and says what it did.
import type { Node, NodeAPI, NodeDef, NodeMessage } from 'node-red';
import type { BackupHost } from '../../src/pipeline/backup-host';
import { checkRoots } from '../../src/restore';
import type { HostConfigNode } from '../host/host';

export interface ActionNodeDef extends NodeDef {
  host: string;
}

export interface ActionContext<C> {
  node: Node;
  config: C;
  host: BackupHost;
  msg: NodeMessage;
  /** a progress message on output 2 (its payload; the topic is set here) */
  progress: (payload: Record<string, unknown>) => void;
  status: (text: string, fill?: 'blue' | 'green' | 'yellow' | 'red' | 'grey') => void;
}

export interface ActionSpec<C, R> {
  type: string;
  /** the progress topic's last part: vm-backup/<host>/<topic> */
  topic: string;
  checkConfig?: (config: C) => string | undefined;
  run: (ctx: ActionContext<C>) => Promise<R>;
  /** msg.summary of a result, and of a failure (with what the message asked) */
  summary: (result: R | undefined, err?: Error, msg?: NodeMessage) => { ok: boolean; text: string };
  done: (result: R) => string;
  /** at deploy, with the host open: recovery of what a crash left; returns lines to report */
  recover?: (host: BackupHost) => Promise<{ ok: boolean; detail: string }[]>;
}

export function registerActionNode<C extends ActionNodeDef, R>(RED: NodeAPI, spec: ActionSpec<C, R>): void {
  function ActionNode(this: Node, config: C) {
    RED.nodes.createNode(this, config);
    const node = this;
    const hostNode = RED.nodes.getNode(config.host) as HostConfigNode | null;
    const configError = !hostNode ? 'host: no host configuration node selected' : spec.checkConfig?.(config);
    const status: ActionContext<C>['status'] = (text, fill = 'blue') =>
      node.status({ fill, shape: fill === 'blue' ? 'ring' : 'dot', text: text.slice(0, 60) });
    if (configError) status(configError, 'red');
    else node.status({});
    if (hostNode && !configError && spec.recover) {
      hostNode
        .backupHost()
        .then((host) => spec.recover!(host))
        .then((lines) => {
          if (!lines.length) return;
          const text = `recovered ${lines.length} interrupted ${spec.topic}(s): ${lines.map((l) => l.detail).join('; ')}`;
          status(
            `recovered: ${lines.length}${lines.every((l) => l.ok) ? '' : ', some FAILED'}`,
            lines.every((l) => l.ok) ? 'yellow' : 'red',
          );
          if (lines.every((l) => l.ok)) node.warn(text);
          else node.error(text);
        })
        .catch((err: Error) => node.error(`recovery: ${err.message}`));
    }
    node.on('input', (msg: NodeMessage, send, done) => {
      const fail = (err: Error) => {
        status(err.message, 'red');
        (msg as NodeMessage & { summary?: unknown }).summary = spec.summary(undefined, err, msg);
        done(err);
      };
      if (configError || !hostNode) return fail(new Error(configError ?? 'host: not configured'));
      const progress = (payload: Record<string, unknown>) =>
        send([
          null,
          { _msgid: msg._msgid, topic: `vm-backup/${hostNode.hostName}/${spec.topic}`, payload } as NodeMessage,
        ] as unknown as NodeMessage[]);
      hostNode
        .backupHost()
        .then((host) => spec.run({ node, config, host, msg, progress, status }))
        .then((result) => {
          msg.payload = result;
          const summary = spec.summary(result, undefined, msg);
          (msg as NodeMessage & { summary?: unknown }).summary = summary;
          status(spec.done(result), summary.ok ? 'green' : 'yellow');
          send([msg, null] as unknown as NodeMessage[]);
          done();
        })
        .catch((err: Error) => fail(err));
    });
  }
  RED.nodes.registerType(spec.type, ActionNode as unknown as Parameters<NodeAPI['nodes']['registerType']>[1]);
}

/** The node's settings with msg.payload's fields over them (a payload that is not an object adds nothing). */
export function requestOf(defaults: Record<string, unknown>, payload: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(defaults)) if (v !== undefined && v !== '') out[k] = v;
  if (payload && typeof payload === 'object' && !Array.isArray(payload)) Object.assign(out, payload);
  return out;
}

/** The "Restore root" setting (absolute paths separated by commas), or the error naming it. */
export function rootsSetting(value: unknown): string[] | string {
  try {
    return checkRoots(String(value ?? '').split(','), 'root');
  } catch (err) {
    return (err as Error).message;
  }
}
