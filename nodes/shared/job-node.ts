// The thin adapter the repository nodes share (prune, verify, history): they work on the host's
// repository, not on a live backup set. Read config (checked at deploy, naming the field), find
// the host's repository, run the job with status and progress, send msg.payload and msg.summary;
// a second output carries the message again when the job found something wrong (for alerts). A
// refusal or failure goes to done(err) with msg.summary, so Catch nodes see it.
import type { Node, NodeAPI, NodeDef, NodeMessage } from 'node-red';
import type { HostConfigNode } from '../host/host';

export interface JobNodeDef extends NodeDef {
  host: string;
}

export interface JobContext<C> {
  node: Node;
  config: C;
  msg: NodeMessage;
  root: string;
  hostName: string;
  /** the VMs the input names (a backup set's VMs, or msg.vms), or undefined: every VM of the host */
  vms?: string[];
  status: (text: string, fill?: 'blue' | 'green' | 'yellow' | 'red' | 'grey') => void;
}

export interface JobSpec<C> {
  type: string;
  checkConfig?: (config: C) => string | undefined;
  run: (ctx: JobContext<C>) => Promise<{ payload: unknown; summary: { ok: boolean; text: string } }>;
  /** status text when done */
  done: (summary: { ok: boolean; text: string }) => string;
  /** 2: a second output gets the message when summary.ok is false */
  outputs?: 1 | 2;
}

/** VM ids from a backup set's payload ({vms: [{id}]}) or msg.vms (["a", "b"]). */
export function vmsOf(msg: NodeMessage): string[] | undefined {
  const listed = (msg as { vms?: unknown }).vms;
  if (Array.isArray(listed) && listed.every((v) => typeof v === 'string')) return listed as string[];
  const vms = (msg.payload as { vms?: unknown } | undefined)?.vms;
  if (Array.isArray(vms) && vms.length && vms.every((v) => typeof (v as { id?: unknown })?.id === 'string'))
    return vms.map((v) => (v as { id: string }).id);
  return undefined;
}

export function registerJobNode<C extends JobNodeDef>(RED: NodeAPI, spec: JobSpec<C>): void {
  function JobNode(this: Node, config: C) {
    RED.nodes.createNode(this, config);
    const node = this;
    const hostNode = RED.nodes.getNode(config.host) as HostConfigNode | null;
    const configError = !hostNode ? 'host: no host configuration node selected' : spec.checkConfig?.(config);
    node.status(configError ? { fill: 'red', shape: 'ring', text: configError.slice(0, 60) } : {});
    let busy = false;
    node.on('input', (msg: NodeMessage, send, done) => {
      const status: JobContext<C>['status'] = (text, fill = 'blue') =>
        node.status({ fill, shape: fill === 'blue' ? 'ring' : 'dot', text: text.slice(0, 60) });
      const fail = (err: Error) => {
        status(err.message, 'red');
        (msg as NodeMessage & { summary?: unknown }).summary = { ok: false, error: err.message, text: err.message };
        done(err);
      };
      if (configError || !hostNode) return fail(new Error(configError ?? 'host: not configured'));
      if (busy) return fail(new Error(`${spec.type.replace(/^vmbackup-/, '')} is still running; this message was not acted on`));
      busy = true;
      const vms = vmsOf(msg);
      hostNode
        .backupHost()
        .then((host) =>
          spec.run({ node, config, msg, root: host.repository.root, hostName: hostNode.hostName, ...(vms ? { vms } : {}), status }),
        )
        .then(({ payload, summary }) => {
          msg.payload = payload;
          (msg as NodeMessage & { summary?: unknown }).summary = summary;
          status(spec.done(summary), summary.ok ? 'green' : 'yellow');
          send(spec.outputs === 2 ? [msg, summary.ok ? null : RED.util.cloneMessage(msg)] : msg);
          done();
        })
        .catch((err: Error) => fail(err))
        .finally(() => (busy = false));
    });
  }
  RED.nodes.registerType(spec.type, JobNode as unknown as Parameters<NodeAPI['nodes']['registerType']>[1]);
}
