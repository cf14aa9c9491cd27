// The thin adapter every pipeline node shares: read config, check input, call the domain,
// set status, check output, send, done. A refusal goes to done(err), so Catch nodes see it.
import type { Node, NodeAPI, NodeDef, NodeMessage } from 'node-red';
import { assertStage } from '../../src/contract/validate';
import type { StageName } from '../../src/contract/schemas';
import type { BackupHost } from '../../src/pipeline/backup-host';
import { summarize } from '../../src/summary';
import type { HostConfigNode } from '../host/host';
import { raiseEnding, takeHandedOn } from './endings';

export interface StageNodeDef extends NodeDef {
  host: string;
}

export interface StageContext<C> {
  node: Node;
  config: C;
  host: BackupHost;
  msg: NodeMessage;
  /** send on an extra output (progress) without ending the message */
  sendExtra: (outputs: (NodeMessage | null)[]) => void;
  status: (text: string, fill?: 'blue' | 'green' | 'yellow' | 'red' | 'grey') => void;
}

export interface StageSpec<C> {
  type: string;
  /** stage the input must be at; undefined for the first node (any input triggers it) */
  input?: StageName;
  output: StageName;
  /** validate node settings once at deploy; return an error text naming the field */
  checkConfig?: (config: C) => string | undefined;
  // any: each node's run and done take their own stage's set type (checked by its schema before the
  // call), which one spec type cannot name for every stage
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  run: (ctx: StageContext<C>, payload: any) => Promise<unknown>;
  /** status text when finished */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  done: (result: any) => string;
  outputs?: number;
}

export function registerStageNode<C extends StageNodeDef>(RED: NodeAPI, spec: StageSpec<C>): void {
  function StageNode(this: Node, config: C) {
    RED.nodes.createNode(this, config);
    const node = this;
    const hostNode = RED.nodes.getNode(config.host) as HostConfigNode | null;
    const configError = !hostNode ? 'host: no host configuration node selected' : spec.checkConfig?.(config);
    if (configError) node.status({ fill: 'red', shape: 'ring', text: configError.slice(0, 60) });
    else node.status({});
    // the host raises its recovery report (after a crash or a redeploy mid-backup) through its
    // enumerate nodes, so that the flow's Catch and Status nodes see it
    hostNode?.addReporter?.(node, spec.type);
    node.on('close', () => hostNode?.removeReporter?.(node));
    if (!hostNode && config.host) {
      // the host node was removed by this deploy: the sets it ended on closing are reported here
      const events = (RED as unknown as { events?: { once(e: string, f: () => void): void } }).events;
      events?.once('flows:started', () => takeHandedOn(config.host).forEach((e) => raiseEnding(node, e)));
    }

    // the step a failure is named by in the summary: this node's own, not its input's stage
    const step = spec.type.replace(/^vmbackup-/, '');
    let opened: BackupHost | undefined;
    node.on('input', (msg: NodeMessage, send, done) => {
      const status: StageContext<C>['status'] = (text, fill = 'blue') =>
        node.status({ fill, shape: fill === 'blue' ? 'ring' : 'dot', text });
      const fail = (err: Error) => {
        status(err.message.slice(0, 60), 'red');
        let summary: unknown;
        try {
          const backupId = (msg.payload as { backupId?: unknown } | undefined)?.backupId;
          const left = opened?.leftovers(backupId);
          summary = summarize(msg.payload, err, {
            failedAt: step,
            ...(left ? { left } : {}),
            ...(hostNode ? { hostName: hostNode.hostName } : {}),
          });
        } catch {
          // a payload too broken to summarize: the refusal itself (naming the field) must still go out
          summary = summarize(undefined, err, { failedAt: step, ...(hostNode ? { hostName: hostNode.hostName } : {}) });
        }
        (msg as NodeMessage & { summary?: unknown; error?: unknown }).summary = summary;
        done(err);
      };
      if (configError || !hostNode) return fail(new Error(configError ?? 'host: not configured'));
      let payload: unknown;
      try {
        payload = spec.input ? assertStage(spec.input, msg.payload) : undefined;
      } catch (err) {
        return fail(err as Error);
      }
      const sendExtra = (outputs: (NodeMessage | null)[]) => send(outputs as NodeMessage[]);
      hostNode
        .backupHost()
        .then((host) => {
          opened = host;
          return spec.run({ node, config, host, msg, sendExtra, status }, payload);
        })
        .then((result) => {
          const checked = assertStage(spec.output, result, `${spec.type} output`);
          msg.payload = checked;
          if (spec.output === 'copied') (msg as NodeMessage & { summary?: unknown }).summary = summarize(checked);
          status(spec.done(checked), 'green');
          const outputs: (NodeMessage | null)[] = [msg];
          for (let i = 1; i < (spec.outputs ?? 1); i++) outputs.push(null);
          send(outputs.length === 1 ? msg : (outputs as NodeMessage[]));
          done();
        })
        .catch((err: Error) => fail(err));
    });
  }
  RED.nodes.registerType(spec.type, StageNode as unknown as Parameters<NodeAPI['nodes']['registerType']>[1]);
}

export function countBy<T>(items: readonly T[], key: (t: T) => string): string {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts].map(([k, n]) => `${n} ${k}`).join(', ');
}
