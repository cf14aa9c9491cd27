// ajv compiles every schema once, at first use; a failure names the JSON pointer and the rule.
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';
import { schemas, manifestSchema, type StageName } from './schemas';
import type { BackupSet, Manifest } from './types';
import { inventorySchema, type InventoryEntry } from './inventory';

export class ContractError extends Error {
  readonly pointer: string;
  readonly rule: string;
  constructor(what: string, error: ErrorObject) {
    const pointer = error.instancePath || '/';
    const rule = ruleOf(error);
    super(`${what}: ${pointer} ${error.message ?? 'is invalid'} (${rule})`);
    this.name = 'ContractError';
    this.pointer = pointer;
    this.rule = rule;
  }
}

function ruleOf(error: ErrorObject): string {
  const params = error.params as Record<string, unknown>;
  if (error.keyword === 'additionalProperties') return `additionalProperties: ${String(params.additionalProperty)}`;
  if (error.keyword === 'required') return `required: ${String(params.missingProperty)}`;
  if (error.keyword === 'const') return `const: ${JSON.stringify(params.allowedValue)}`;
  if (error.keyword === 'enum') return `enum: ${JSON.stringify(params.allowedValues)}`;
  return error.keyword;
}

let ajv: Ajv | undefined;
const compiled = new Map<string, ValidateFunction>();

function validatorFor(key: string, schema: object): ValidateFunction {
  let fn = compiled.get(key);
  if (!fn) {
    ajv ??= addFormats(new Ajv({ allErrors: false, strict: true }));
    fn = ajv.compile(schema);
    compiled.set(key, fn);
  }
  return fn;
}

/** Throws ContractError unless `doc` is a backup set at `stage`. */
export function assertStage<T extends BackupSet>(stage: StageName, doc: unknown, what = 'msg.payload'): T {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ContractError(what, {
      instancePath: '',
      keyword: 'type',
      message: 'must be a backup-set object',
      params: {},
      schemaPath: '#/type',
    });
  }
  const actual = (doc as { stage?: unknown }).stage;
  if (actual !== stage && typeof actual === 'string') {
    throw new ContractError(what, {
      instancePath: '/stage',
      keyword: 'const',
      params: { allowedValue: stage },
      message: `is "${actual.slice(0, 32)}" but this node takes a backup set at stage "${stage}" (stages run in order)`,
      schemaPath: '#/properties/stage/const',
    });
  }
  const fn = validatorFor(stage, schemas[stage]);
  if (!fn(doc)) throw new ContractError(what, fn.errors![0]);
  return doc as T;
}

export function assertManifest(doc: unknown): Manifest {
  const fn = validatorFor('manifest', manifestSchema);
  if (!fn(doc)) throw new ContractError('manifest.json', fn.errors![0]);
  return doc as Manifest;
}

/** Throws ContractError unless `doc` is a VM inventory entry; `what` names the file it came from. */
export function assertInventory(doc: unknown, what: string): InventoryEntry {
  const fn = validatorFor('inventory', inventorySchema);
  if (!fn(doc)) throw new ContractError(what, fn.errors![0]);
  const ids = (doc as InventoryEntry).disks.map((d) => d.id);
  const twice = ids.findIndex((id, i) => ids.indexOf(id) !== i);
  if (twice >= 0)
    throw new ContractError(what, {
      instancePath: `/disks/${twice}/id`,
      keyword: 'uniqueItems',
      message: `"${ids[twice]}" names two disks`,
      params: {},
      schemaPath: '',
    });
  return doc as InventoryEntry;
}

/** For users' own function nodes: `validate('classified', msg.payload)` returns null or the error text. */
export function validate(stage: StageName, doc: unknown): string | null {
  try {
    assertStage(stage, doc);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Null, or why one VM of a set at `stage` breaks the schema (its pointer relative to the VM):
 * so that one odd VM can be refused alone instead of failing the whole set.
 */
export function vmError(stage: StageName, vm: unknown): string | null {
  const fn = validatorFor(`vm:${stage}`, schemas[stage].properties.vms.items);
  if (fn(vm)) return null;
  const e = fn.errors![0];
  return `${e.instancePath || '/'} ${e.message ?? 'is invalid'} (${ruleOf(e)})`;
}

/** Throws ContractError unless `doc` matches `schema` (compiled once under `key`): the restore's requests. */
export function assertDocument<T>(key: string, schema: object, doc: unknown, what: string): T {
  const fn = validatorFor(key, schema);
  if (!fn(doc)) throw new ContractError(what, fn.errors![0]);
  return doc as T;
}
